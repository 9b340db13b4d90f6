"""Bad input is refused at load time, with a message naming the field (or file) and the value.

Each test here failed before its fix: a bad method parameter value passed the configuration and
failed only when the method was built, after the pool was classified; duplicated stages doubled
every row; a huge search bound overflowed deep in the search; a huge seed or a binary YAML file
gave a message naming neither field nor file; ``$APEM_THREADS`` overrode a store's recorded
thread count. No image data and no model: every check runs before either is needed.
"""

from __future__ import annotations

import pytest
import torch

from apem import explain
from apem.config import MAX_SEED, Config, ConfigError, load_config, parse_overrides
from apem.explain.base import Method, check_params, positive_int
from apem.metric.spec import MAX_BOUND, SearchSpec
from apem.numerics import DEFAULT_THREADS, EnvironmentMismatch, NumericEnv, resolve_threads


def _cpu(threads):
    return NumericEnv(torch="2.0", device_type="cpu", device_name="cpu", threads=threads)


def _cli(argv, capsys):
    from apem.cli import main

    rc = main(argv)
    return rc, capsys.readouterr().err.strip().splitlines()


# --------------------------------------------------------------------------- 1. method parameter values


@pytest.mark.parametrize("method, params, key, value", [
    ("smoothgrad", {"n": "abc"}, "n", "'abc'"),
    ("smoothgrad", {"n": 0}, "n", "0"),
    ("smoothgrad", {"n": 2.5}, "n", "2.5"),
    ("smoothgrad", {"sigma": -0.2}, "sigma", "-0.2"),
    ("smoothgrad", {"sigma": float("nan")}, "sigma", "nan"),
    ("smoothgrad", {"sigma": 10**400}, "sigma", "1000"),  # too large for a float: refused, not a TypeError
    ("smoothgrad", {"seed": -1}, "seed", "-1"),
    ("smoothgrad", {"noise_target": "random"}, "noise_target", "'random'"),
    ("gradient", {"objective": "probability"}, "objective", "'probability'"),
    ("lrp_epsilon", {"epsilon": True}, "epsilon", "True"),
    ("lrp", {"rule": "gamma"}, "rule", "'gamma'"),
    ("integrated_gradients", {"n_steps": 0}, "n_steps", "0"),
    ("gradcam", {"layer": 3}, "layer", "3"),
])
def test_a_bad_method_parameter_value_fails_at_load_naming_method_parameter_and_value(method, params, key, value):
    with pytest.raises(ConfigError) as e:
        Config(methods={method: params})
    msg = str(e.value)
    assert f"'{method}'" in msg and f"'{key}'" in msg and value in msg, msg


def test_method_parameter_values_are_checked_in_yaml_and_in_overrides(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("methods:\n  smoothgrad: {n: abc}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: method 'smoothgrad', parameter 'n'.*'abc'"):
        Config.from_yaml(f)
    with pytest.raises(ConfigError, match=r"method 'smoothgrad', parameter 'sigma'.*-1"):
        load_config("smoke", **parse_overrides([("methods", "{smoothgrad: {sigma: -1}}")]))


def test_cross_parameter_checks_of_a_method_run_at_load():
    with pytest.raises(ConfigError, match=r"'lrp'.*alpha - beta = 1.*alpha=3"):
        Config(methods={"lrp": {"rule": "alpha_beta", "alpha": 3, "beta": 1}})
    Config(methods={"lrp": {"rule": "alpha_beta", "alpha": 2, "beta": 1}})


def test_good_method_parameters_still_load_unchanged():
    methods = {"smoothgrad": {"n": 8, "sigma": 0, "seed": None, "noise_target": "fixed"},
               "gradient": {"objective": "logit"}, "lrp_epsilon": {"epsilon": 0.25}, "gradcam": {"layer": None}}
    cfg = Config(methods=methods)
    assert cfg.methods == methods  # validated, not rewritten: the values (and the digest) are as given
    Config()  # the thesis's defaults
    assert check_params("smoothgrad", {"sigma": 1}) == {**explain.method_params("smoothgrad"), "sigma": 1.0}


def test_the_configuration_uses_the_methods_own_checkers(monkeypatch):
    class Probe(Method):
        name = "probe"
        spec = {"k": (1, positive_int)}

    monkeypatch.setitem(explain.METHODS, "probe", Probe)
    Config(methods={"probe": {"k": 3}})
    with pytest.raises(ConfigError, match=r"method 'probe', parameter 'k': expected a positive integer, got -3"):
        Config(methods={"probe": {"k": -3}})


def test_a_bad_method_parameter_stops_apem_run_before_the_store_is_made(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("methods:\n  smoothgrad: {n: 0}\n")
    results = tmp_path / "results"
    rc, err = _cli(["run", str(f), "--results", str(results), "--no-progress"], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("apem: error:"), err
    assert "'smoothgrad'" in err[0] and "'n'" in err[0] and "got 0" in err[0]
    assert not results.exists()


# --------------------------------------------------------------------------- 2. stages


@pytest.mark.parametrize("stages", [[3, 3], [1, 2, 1], [2, 2, 2]])
def test_duplicated_stages_are_refused(stages):
    with pytest.raises(ConfigError, match=r"stages lists stage\(s\) \[\d\] more than once"):
        Config(stages=stages)


def test_duplicated_stages_are_refused_in_yaml_and_on_the_command_line(tmp_path, capsys):
    f = tmp_path / "dup.yaml"
    f.write_text("stages: [1, 3, 3]\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: stages lists stage\(s\) \[3\] more than once"):
        Config.from_yaml(f)
    rc, err = _cli(["run", "smoke", "-p", "stages", "[3, 3]", "--results", str(tmp_path / "r")], capsys)
    assert rc == 2 and len(err) == 1 and "stages" in err[0] and "[3, 3]" in err[0], err
    assert Config(stages=[3, 1]).stages == (3, 1)  # any order of distinct stages is still fine


# --------------------------------------------------------------------------- 3. search bound


def test_the_search_bound_limit_is_what_float32_steps_hold_exactly():
    steps = torch.arange(1, MAX_BOUND + 1, dtype=torch.long)[-3:]  # the last tested steps and the bound
    assert torch.equal(steps.to(torch.float32).long(), steps)
    beyond = torch.tensor([MAX_BOUND + 1])
    assert not torch.equal(beyond.to(torch.float32).long(), beyond)  # 2**24 + 1 would test 2**24 again


@pytest.mark.parametrize("bound", [MAX_BOUND + 1, 2**31 - 1, 2**63, 10**30])
def test_a_search_bound_beyond_the_limit_is_refused_by_every_search_spec(bound):
    with pytest.raises(ValueError, match=rf"bound must be <= {MAX_BOUND}.*got {bound}"):
        SearchSpec(bound=bound)
    with pytest.raises(ValueError, match=rf"bound must be <= {MAX_BOUND}"):
        SearchSpec().replace(bound=bound)
    with pytest.raises(ConfigError, match=rf"search_bound must be <= {MAX_BOUND}.*got {bound}"):
        Config(search_bound=bound)


def test_the_largest_search_bound_is_accepted():
    assert SearchSpec(bound=MAX_BOUND).bound == MAX_BOUND
    assert Config(search_bound=MAX_BOUND).search().bound == MAX_BOUND


def test_a_huge_search_bound_on_the_command_line_is_one_line(tmp_path, capsys):
    rc, err = _cli(["run", "smoke", "-p", "search_bound", str(10**30), "--results", str(tmp_path / "r")], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("apem: error:"), err
    assert "search_bound" in err[0] and str(MAX_BOUND) in err[0]


# --------------------------------------------------------------------------- 4. seed, binary YAML


@pytest.mark.parametrize("seed", [2**63, 2**64, 2**70])
def test_a_seed_beyond_int64_is_refused_naming_seed(seed):
    with pytest.raises(ConfigError, match=rf"^seed must be <= 2\*\*63 - 1 \({MAX_SEED}\), got {seed}$"):
        Config(seed=seed)


def test_the_largest_seed_is_accepted():
    assert Config(seed=2**63 - 1).seed == MAX_SEED == 2**63 - 1


def test_a_binary_yaml_file_is_refused_naming_the_file(tmp_path, capsys):
    f = tmp_path / "image.yaml"
    f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(ConfigError, match=r"image\.yaml: not a text YAML file"):
        Config.from_yaml(f)
    rc, err = _cli(["run", str(f), "--results", str(tmp_path / "r")], capsys)
    assert rc == 2 and err == [f"apem: error: {f}: not a text YAML file (byte 0 is not UTF-8)"], err


def test_control_characters_in_a_utf8_file_are_refused_naming_the_file(tmp_path):
    f = tmp_path / "nul.yaml"
    f.write_bytes(b"seed: 1\n\x00\x01\n")
    with pytest.raises(ConfigError, match=r"nul\.yaml: not valid YAML"):
        Config.from_yaml(f)


def test_a_huge_seed_in_yaml_is_one_line_on_the_command_line(tmp_path, capsys):
    f = tmp_path / "seed.yaml"
    f.write_text(f"seed: {2**70}\n")
    rc, err = _cli(["run", str(f), "--results", str(tmp_path / "r")], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"apem: error: {f}: seed must be <="), err


# --------------------------------------------------------------------------- 5. thread count


def test_threads_explicit_then_recorded_then_environment_then_default(monkeypatch):
    monkeypatch.setenv("APEM_THREADS", "3")
    assert resolve_threads(4, _cpu(1)) == 4  # explicit wins
    assert resolve_threads(None, _cpu(1)) == 1  # then the store's recorded count, over $APEM_THREADS
    assert resolve_threads(None, None) == 3  # then $APEM_THREADS
    gpu = NumericEnv(torch="2.0", device_type="cuda", device_name="GPU", threads=7)
    assert resolve_threads(None, gpu) == 3  # a CUDA store records no CPU thread count that matters
    monkeypatch.delenv("APEM_THREADS")
    assert resolve_threads(None, None) == DEFAULT_THREADS
    assert resolve_threads(None, _cpu(5)) == 5


def test_a_malformed_apem_threads_matters_only_when_it_is_read(monkeypatch):
    monkeypatch.setenv("APEM_THREADS", "many")
    assert resolve_threads(None, _cpu(1)) == 1
    assert resolve_threads(2, None) == 2
    with pytest.raises(EnvironmentMismatch, match="APEM_THREADS='many'"):
        resolve_threads(None, None)
