"""One configuration object names every result on disk.

A :class:`Config` says everything that determines an experiment's numbers:
model, preprocessing preset, image set and how images are drawn, methods and
their parameters, stages, search mode and bound, shuffles, seed, device and
batch size. It loads from YAML (``params/*.yaml``) and from papermill
parameters (a parameter-set name plus flat overrides), validates itself at
load time (a typo'd field or an unknown method fails with a message naming
it), and hashes to a short hex digest that names its results store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from apem.thesis import THESIS_METHOD_PARAMS

REPO = Path(__file__).resolve().parent.parent
#: the two groups of selected images: classified as labelled, and not
GROUPS = ("correct", "misclassified")
PARAMS_DIR = REPO / "params"


class ConfigError(ValueError):
    """A configuration cannot be loaded: unknown field, unknown method, bad value."""


@dataclass(frozen=True)
class Config:
    """Everything that determines an experiment's numbers (every field is hashed)."""

    name: str = "default"
    # model and input
    model: str = "efficientnet_lite0"
    weights: str = "default"  # "default" (offline file), a path, or "none" (random)
    preset: str = "standard"  # "standard" or "thesis"
    # images
    data: str | None = None  # folder; None = $APEM_DATA / the shared sample set
    ground_truth: str | None = None
    pool: int | None = None  # consider only the first `pool` images of the set (None = all)
    # images drawn per group: a count, or "all" (every image of the group in the pool, known once it is classified)
    n_correct: int | str = 50
    n_misclassified: int | str = 20
    # explanations
    methods: dict = field(default_factory=lambda: {k: dict(v) for k, v in THESIS_METHOD_PARAMS.items()})
    stages: tuple = (1, 2, 3)
    quantize: bool = True  # 256 levels, as the thesis's 8-bit PNGs
    # "round": exact min-max, rounded to 256 levels; "save_image": the thesis's files, written by
    # torchvision 0.2's save_image(normalize=True): / (max - min + 1e-5), truncated to uint8 (apem.maps)
    map_encoding: str = "round"
    # the metric
    search_mode: str = "bisect"  # thesis | linear | bisect
    search_bound: int = 10001  # steps 1 .. bound - 1 are tested; at most 2**24 (apem.metric.spec.MAX_BOUND)
    clip: bool = False
    shuffles: int = 10
    shuffle_mode: str = "fixed"  # fixed | per_step
    # the groups whose images get the shuffled baseline (a subset of correct, misclassified): the
    # thesis's normalised APEM (Table 5.1) is on correctly classified images, and the baseline costs
    # about 40% of an image's time; the other group's rows have NaN shuffled epsilons
    shuffle_groups: tuple = GROUPS
    # the explanation filter (thesis Algorithm 2) on the first `filter_images` correct images
    filter_images: int = 0
    filter_fast_k: int = 8
    # execution
    seed: int = 0
    device: str = "auto"
    # images per call of the explanation methods and of the pool's classification; None: 16 on the
    # CPU, 128 on an accelerator (apem.metric.AUTO_METHOD_BATCH; see Config.method_batch)
    batch_size: int | None = None
    # perturbed images per forward pass of the epsilon search; None: 2 on the CPU (its cache-bound
    # forward is fastest per image in small batches), 256 on an accelerator (apem.metric.AUTO_BATCH)
    search_batch_size: int | None = None
    chunk_size: int = 4  # images per resumable chunk on the CPU (a GPU takes multiples: apem.runner.plan.chunk_images)

    # ------------------------------------------------------------------ loading
    def __post_init__(self):
        stages = self.stages
        if isinstance(stages, (list, tuple)) and all(_is_int(s) for s in stages):
            object.__setattr__(self, "stages", tuple(int(s) for s in stages))
        else:
            raise ConfigError(f"stages must be a list drawn from 1, 2, 3 (e.g. [2, 3]; on the command line "
                              f"-p stages '[3]'); got {stages!r}")
        groups = self.shuffle_groups
        if isinstance(groups, (list, tuple)) and all(isinstance(g, str) for g in groups):
            object.__setattr__(self, "shuffle_groups", tuple(groups))
        else:
            raise ConfigError(f"shuffle_groups must be a list drawn from {list(GROUPS)} (e.g. [correct]; on the "
                              f"command line -p shuffle_groups '[correct]'); got {groups!r}")
        if not isinstance(self.methods, dict) or not all(v is None or isinstance(v, dict) for v in self.methods.values()):
            raise ConfigError(f"methods must be a mapping of method name -> parameters (e.g. {{gradient: {{}}}}); "
                              f"got {self.methods!r}")
        object.__setattr__(self, "methods", {str(k): dict(v or {}) for k, v in dict(self.methods).items()})
        self.validate()

    def validate(self) -> None:
        from apem.models import PRESETS, check_model_name

        _check_types(self)

        try:
            check_model_name(self.model)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {PRESETS}")
        try:  # the search settings are checked where they are defined, by SearchSpec
            self.search()
        except (ValueError, TypeError) as e:
            msg = str(e)  # SearchSpec's names -> this configuration's fields
            for spec_name, field_name in (("batch_size", "search_batch_size"), ("bound", "search_bound"),
                                          ("unknown search mode", "unknown search_mode")):
                if msg.startswith(spec_name):
                    msg = field_name + msg[len(spec_name):]
            raise ConfigError(f"search settings: {msg}") from None
        from apem.maps import ENCODINGS

        if self.map_encoding not in ENCODINGS:
            raise ConfigError(f"unknown map_encoding {self.map_encoding!r}; choose one of {list(ENCODINGS)}")
        if self.map_encoding == "save_image" and not self.quantize:
            raise ConfigError("map_encoding save_image writes 8-bit maps, as the thesis's PNGs: it needs quantize: true")
        bad = [s for s in self.stages if s not in (1, 2, 3)]
        if bad or not self.stages:
            raise ConfigError(f"stages must be a non-empty subset of 1, 2, 3; got {list(self.stages)}")
        twice = sorted({s for s in self.stages if self.stages.count(s) > 1})
        if twice:  # each stage would be computed and tabled once per mention: every row twice
            raise ConfigError(f"stages lists stage(s) {twice} more than once: {list(self.stages)}; "
                              f"name each stage once (e.g. {sorted(set(self.stages))})")
        bad = [g for g in self.shuffle_groups if g not in GROUPS]
        if bad:
            raise ConfigError(f"shuffle_groups: unknown group(s) {bad}; choose from {list(GROUPS)}")
        twice = sorted({g for g in self.shuffle_groups if self.shuffle_groups.count(g) > 1})
        if twice:
            raise ConfigError(f"shuffle_groups lists {twice} more than once: {list(self.shuffle_groups)}")
        for k in ("n_correct", "n_misclassified"):
            if getattr(self, k) != ALL and getattr(self, k) < 0:
                raise ConfigError(f"{k} must be >= 0 or {ALL}, got {getattr(self, k)}")
        for k in ("shuffles", "filter_images", "filter_fast_k", "seed"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{k} must be >= 0, got {getattr(self, k)}")
        if self.seed > MAX_SEED:
            raise ConfigError(f"seed must be <= 2**63 - 1 ({MAX_SEED}), got {self.seed}")
        for k in ("search_bound", "chunk_size"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1, or null for the device's default")
        if self.search_batch_size is not None and self.search_batch_size < 1:
            raise ConfigError("search_batch_size must be >= 1, or null for the device's default")
        if self.pool is not None and self.pool < 1:
            raise ConfigError(f"pool must be >= 1 (the first `pool` images of the set), or null for all; got {self.pool}")
        # with "all" the counts are known after the pool's classification: apem.run.select_images checks them there
        if ALL not in (self.n_correct, self.n_misclassified) and self.n_correct + self.n_misclassified < 1:
            raise ConfigError("n_correct + n_misclassified is 0: ask for at least one image")
        if self.n_correct != ALL and self.filter_images > self.n_correct:
            raise ConfigError(f"filter_images ({self.filter_images}) cannot exceed n_correct ({self.n_correct}): "
                              "the filter runs on the first correctly classified images")
        if not _NAME.match(self.name):
            raise ConfigError(f"name {self.name!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
        check_device(self.device)
        if not self.methods:
            raise ConfigError("methods is empty: name at least one explanation method")
        _validate_methods(self.methods)

    @classmethod
    def from_dict(cls, d: dict, source: str = "configuration") -> "Config":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            hints = []
            import difflib

            for u in unknown:
                close = difflib.get_close_matches(u, known, n=1)
                hints.append(f"{u!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"{source}: unknown field(s) {', '.join(hints)}")
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Config":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"configuration file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not a text YAML file (byte {e.start} is not UTF-8)") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from None
        try:
            d = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(e)})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping of fields")
        d.setdefault("name", path.stem)
        return cls.from_dict(d, str(path))

    def replace(self, **overrides) -> "Config":
        if not overrides:
            return self
        d = self.to_dict()
        d.update(overrides)
        return Config.from_dict(d, "parameter override")

    def wanted(self, group: str, available: int) -> int:
        """Images drawn from ``group`` ("correct" or "misclassified") when the pool holds ``available`` of them.

        ``all`` resolves to ``available``; a count is returned as it is (the draw checks it fits).
        """
        v = {"correct": self.n_correct, "misclassified": self.n_misclassified}[group]
        return int(available) if v == ALL else int(v)

    def method_batch(self, device, model=None) -> int:
        """``batch_size`` resolved for ``device`` (None: :data:`apem.metric.forward.AUTO_METHOD_BATCH`,
        capped on CUDA by the memory ``model`` needs for a forward + backward pass)."""
        from apem.metric.forward import resolve_method_batch

        return resolve_method_batch(self.batch_size, device, model=model)

    def search(self):
        """The :class:`apem.metric.SearchSpec` of this configuration: every search it runs gets this one object."""
        from apem.metric.spec import SearchSpec

        return SearchSpec(mode=self.search_mode, bound=int(self.search_bound), clip=bool(self.clip),
                          batch_size=self.search_batch_size, shuffles=int(self.shuffles), shuffle_mode=self.shuffle_mode)

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["stages"] = list(self.stages)
        d["shuffle_groups"] = list(self.shuffle_groups)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def data_identity(self) -> dict:
        """The image folder this configuration reads, resolved, with a fingerprint of its file list.

        ``data: null`` means ``$APEM_DATA`` or the shared sample set *at the time of the
        call*; the identity pins which folder that was and what it held (see
        :func:`apem.data.image_set_identity`), so a result computed on other files can never
        be taken for this one. Computed once per Config object (a directory listing).
        """
        cached = self.__dict__.get("_data_identity")
        if cached is None:
            from apem.data import image_set_identity

            cached = image_set_identity(self.data, self.ground_truth)
            object.__setattr__(self, "_data_identity", cached)
        return cached

    def identity(self) -> dict:
        """Every field plus the resolved data: what the digest hashes and the store records."""
        d = self.to_dict()
        d["resolved_data"] = self.data_identity()
        return d

    def identity_yaml(self) -> str:
        return yaml.safe_dump(self.identity(), sort_keys=False)

    def digest(self) -> str:
        """12 hex digits of sha256 over the canonical JSON of every field and the resolved data."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def classification_key(self) -> dict:
        """What decides the model's predictions on the pool (shared across configs that agree on it)."""
        d = {k: getattr(self, k) for k in ("model", "weights", "preset", "pool", "device")}
        d["data"] = self.data_identity()
        return d


#: the value of ``n_correct`` / ``n_misclassified`` that draws every image of the group
ALL = "all"
#: the largest ``seed``: a signed 64-bit integer, like every seed apem derives from it (63 bits,
#: :func:`apem.seeds.seed_of`); the run also seeds torch with it, and ``torch.manual_seed`` fails
#: beyond 2**64 - 1 with a message that names no field
MAX_SEED = 2**63 - 1

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# the type every field must have after loading (YAML and -p values are checked, never coerced:
# `-p n_correct 2.5` or `-p n_correct true` is an error, not 2 or 1)
_INT, _OPT_INT, _BOOL, _STR, _OPT_STR = "int", "int or null", "true or false", "text", "text or null"
_COUNT = f"an integer or {ALL}"  # n_correct / n_misclassified
FIELD_TYPES = {
    "name": _STR, "model": _STR, "weights": _STR, "preset": _STR, "data": _OPT_STR, "ground_truth": _OPT_STR,
    "pool": _OPT_INT, "n_correct": _COUNT, "n_misclassified": _COUNT, "quantize": _BOOL, "map_encoding": _STR,
    "search_mode": _STR,
    "search_bound": _INT, "clip": _BOOL, "shuffles": _INT, "shuffle_mode": _STR, "filter_images": _INT,
    "filter_fast_k": _INT, "seed": _INT, "device": _STR, "batch_size": _OPT_INT, "search_batch_size": _OPT_INT,
    "chunk_size": _INT,
}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_types(cfg: "Config") -> None:
    """Each field has its declared type; the message names the field, the value and what is expected."""
    for name, kind in FIELD_TYPES.items():
        v = getattr(cfg, name)
        if v is None and kind in (_OPT_INT, _OPT_STR):
            continue
        ok = {_INT: _is_int, _OPT_INT: _is_int, _COUNT: lambda x: _is_int(x) or x == ALL,
              _BOOL: lambda x: isinstance(x, bool),
              _STR: lambda x: isinstance(x, str) and x != "", _OPT_STR: lambda x: isinstance(x, str) and x != ""}[kind](v)
        if not ok:
            raise ConfigError(f"{name} must be {'an integer' if kind == _INT else kind}"
                              f"{', not null' if v is None else ''}; got {v!r}")


def check_device(device: str) -> None:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and present on this machine."""
    import torch

    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: CUDA is not available on this machine; use device auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"device {device!r}: MPS is not available on this machine; use device auto or cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"device {device!r} is not supported: use auto, cpu, cuda, cuda:N or mps")


def _validate_methods(methods: dict) -> None:
    """Unknown method names or parameters and bad parameter values fail here, at load, naming them.

    The values go through the checkers the method classes declare
    (:func:`apem.explain.base.check_params`), so ``smoothgrad: {n: 0}`` fails
    before the pool is classified, with the message building the method would give.
    """
    from apem import explain
    from apem.explain.base import check_params

    for name, params in methods.items():
        try:
            defaults = explain.method_params(name)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise ConfigError(f"method {name!r}: unknown parameter(s) {unknown}; it takes {sorted(defaults)}")
        try:
            check_params(name, params)
        except ValueError as e:  # "method 'smoothgrad', parameter 'n': expected a positive integer, got 0"
            raise ConfigError(str(e)) from None


def load_config(params: str | Path | Config = "default", **overrides) -> Config:
    """A parameter set by name (``params/<name>.yaml``) or path, with flat overrides.

    This is the call notebooks make with their papermill parameters:
    ``load_config(params, **overrides)``.
    """
    if isinstance(params, Config):
        cfg = params
    else:
        p = Path(params)
        if p.suffix not in (".yaml", ".yml"):
            p = PARAMS_DIR / f"{params}.yaml"
            if not p.is_file():
                names = sorted(q.stem for q in PARAMS_DIR.glob("*.yaml"))
                raise ConfigError(f"unknown parameter set {params!r}; choose one of {names} or give a YAML path")
        cfg = Config.from_yaml(p)
    return cfg.replace(**overrides)


def parse_value(text: str, key: str = "value") -> Any:
    """Command-line ``-p KEY VALUE``: VALUE is read as YAML (numbers, lists, mappings, null).

    ``null`` sets a field to None (allowed only where the field may be null: data,
    ground_truth, pool, search_batch_size); malformed YAML fails naming the key.
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"-p {key} {text!r}: not a valid YAML value ({_yaml_problem(e)})") from None


def parse_overrides(pairs) -> dict:
    """``[(KEY, VALUE), ...]`` from the command line -> overrides (each VALUE read as YAML)."""
    return {k: parse_value(v, k) for k, v in pairs}


def _yaml_problem(e: Exception) -> str:
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem
