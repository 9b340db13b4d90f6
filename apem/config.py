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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from apem.thesis import THESIS_METHOD_PARAMS

REPO = Path(__file__).resolve().parent.parent
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
    n_correct: int = 50
    n_misclassified: int = 20
    # explanations
    methods: dict = field(default_factory=lambda: {k: dict(v) for k, v in THESIS_METHOD_PARAMS.items()})
    stages: tuple = (1, 2, 3)
    quantize: bool = True  # 256 levels, as the thesis's 8-bit PNGs
    # the metric
    search_mode: str = "bisect"  # thesis | linear | bisect
    search_bound: int = 10001
    clip: bool = False
    shuffles: int = 10
    shuffle_mode: str = "fixed"  # fixed | per_step
    # the explanation filter (thesis Algorithm 2) on the first `filter_images` correct images
    filter_images: int = 0
    filter_fast_k: int = 8
    # execution
    seed: int = 0
    device: str = "auto"
    batch_size: int = 32  # images per call of the explanation methods
    # perturbed images per forward pass of the epsilon search; None: 4 on the CPU (its cache-bound
    # forward is fastest per image in small batches), 256 on an accelerator (apem.metric.AUTO_BATCH)
    search_batch_size: int | None = None
    chunk_size: int = 4  # images per resumable chunk

    # ------------------------------------------------------------------ loading
    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(int(s) for s in self.stages))
        object.__setattr__(self, "methods", {str(k): dict(v or {}) for k, v in dict(self.methods).items()})
        self.validate()

    def validate(self) -> None:
        from apem.models import MODELS, PRESETS

        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; choose one of {sorted(MODELS)}")
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {PRESETS}")
        try:  # the search settings are checked where they are defined, by SearchSpec
            self.search()
        except (ValueError, TypeError) as e:
            raise ConfigError(f"search settings (search_mode, search_bound, clip, shuffles, shuffle_mode, search_batch_size): {e}") from None
        bad = [s for s in self.stages if s not in (1, 2, 3)]
        if bad or not self.stages:
            raise ConfigError(f"stages must be a non-empty subset of 1, 2, 3; got {list(self.stages)}")
        for k in ("n_correct", "n_misclassified", "shuffles", "filter_images"):
            if int(getattr(self, k)) < 0:
                raise ConfigError(f"{k} must be >= 0")
        for k in ("search_bound", "batch_size", "chunk_size"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"{k} must be >= 1")
        if self.search_batch_size is not None and int(self.search_batch_size) < 1:
            raise ConfigError("search_batch_size must be >= 1, or null for the device's default")
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
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Config":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"configuration file {path} does not exist")
        d = yaml.safe_load(path.read_text()) or {}
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping of fields")
        d.setdefault("name", path.stem)
        return cls.from_dict(d, str(path))

    def replace(self, **overrides) -> "Config":
        if not overrides:
            return self
        d = self.to_dict()
        d.update(overrides)
        return Config.from_dict(d, "overrides")

    def search(self):
        """The :class:`apem.metric.SearchSpec` of this configuration: every search it runs gets this one object."""
        from apem.metric.spec import SearchSpec

        return SearchSpec(mode=self.search_mode, bound=int(self.search_bound), clip=bool(self.clip),
                          batch_size=self.search_batch_size, shuffles=int(self.shuffles), shuffle_mode=self.shuffle_mode)

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["stages"] = list(self.stages)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        """12 hex digits of sha256 over the canonical JSON of every field."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def classification_key(self) -> dict:
        """The fields that decide the model's predictions on the pool (shared across configs)."""
        return {k: getattr(self, k) for k in ("model", "weights", "preset", "data", "ground_truth", "pool", "device")}


def _validate_methods(methods: dict) -> None:
    """Unknown method names or parameters fail here, at load, naming them."""
    from apem import explain

    for name, params in methods.items():
        if name not in explain.METHODS:
            raise ConfigError(f"unknown method {name!r}; known methods: {sorted(explain.METHODS)}")
        defaults = explain.method_params(name)
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise ConfigError(f"method {name!r}: unknown parameter(s) {unknown}; it takes {sorted(defaults)}")


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
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return cfg.replace(**overrides)


def parse_value(text: str) -> Any:
    """Command-line ``-p KEY VALUE``: VALUE is read as YAML (numbers, lists, mappings, null)."""
    return yaml.safe_load(text)
