"""One SearchSpec reaches every place a search runs: the runner, the filter, the studies."""

import dataclasses

import pytest

from apem import studies
from apem.config import Config
from apem.metric import SearchSpec
from apem.metric import forward as fw
from apem.run import Results, run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_spec_validates_and_config_builds_it():
    cfg = Config(search_mode="linear", search_bound=501, clip=True, shuffles=3, shuffle_mode="per_step",
                 search_batch_size=3)
    assert cfg.search() == SearchSpec(mode="linear", bound=501, clip=True, batch_size=3, shuffles=3,
                                      shuffle_mode="per_step")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.search().mode = "bisect"
    for bad in ({"mode": "binary"}, {"bound": 1}, {"batch_size": 0}, {"shuffle_mode": "sometimes"},
                {"shuffles": 2, "shuffle_mode": "per_step"}, {"slope": "steep"}):
        with pytest.raises(ValueError):
            SearchSpec(**bad)
    assert SearchSpec.build(None, mode="thesis").mode == "thesis"


def test_every_call_site_gets_clip_and_the_search_batch_size(tmp_path, sample_dir, monkeypatch):
    """clip=True and search_batch_size=3 must reach every Forward that any call site builds."""
    seen = []
    init = fw.Forward.__init__

    def spy(self, *a, **kw):
        init(self, *a, **kw)
        seen.append((self.clip, self.batch_size))

    monkeypatch.setattr(fw.Forward, "__init__", spy)
    cfg = Config(name="spec-sites", pool=24, n_correct=2, n_misclassified=0, methods={"gradient": {}}, stages=(2,),
                 shuffles=1, chunk_size=2, filter_images=1, filter_fast_k=8, batch_size=16, clip=True,
                 search_batch_size=3, search_bound=2001)

    def check(site):
        assert seen, f"{site}: no search ran"
        assert set(seen) == {(True, 3)}, f"{site}: the search ran with (clip, batch size) {sorted(set(seen))}"
        seen.clear()

    store = run(cfg, progress=False, root=tmp_path)  # the runner, then the filter
    check("runner and filter")
    res = Results(cfg, store)
    studies.compare_modes(res, n_images=1, horizon=4, linear_cap=50)
    check("search-mode comparison")
    studies.faithfulness_scores(res, n_images=1, stage=2, metrics=("PixelFlipping",),
                          metric_params={"PixelFlipping": {"features_in_step": 224 * 224 // 2}})
    check("faithfulness")
    studies.sanity_check(res, n_images=1, stage=2, every=50, methods=["gradient"])
    check("sanity")
