"""The numeric environment: what, besides the configuration, moves the numbers.

The same configuration gives bit-identical epsilons only under the same numeric
environment. On the CPU the thread count decides how reductions are split (1 vs 2
threads moved 6 of 54 epsilons by 1-2 steps: a borderline logit changes sign); on
CUDA, TF32 matrix products change logits by about 1e-3 and the GPU model picks the
convolution kernels. The runner pins this environment (:func:`pinned`), every
chunk records it (:meth:`NumericEnv.record`), and resuming a store under another
one is refused (:func:`check_compatible`) rather than silently mixing chunks.

What counts (:meth:`NumericEnv.key`): torch's version, the device type, the dtype;
on the CPU the thread count; on CUDA the GPU's name and the TF32 switches, which
the runner turns off.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass

import torch

DEFAULT_THREADS = 2  # the 2-core reference machine; any machine can reproduce it (slower or faster)


class EnvironmentMismatch(RuntimeError):
    """A store's numbers were computed under another numeric environment."""


@dataclass(frozen=True)
class NumericEnv:
    torch: str
    device_type: str
    device_name: str
    threads: int
    dtype: str = "float32"
    tf32_matmul: bool = False
    tf32_cudnn: bool = False

    @classmethod
    def current(cls, device: torch.device | str = "cpu") -> "NumericEnv":
        dev = torch.device(device)
        name = "cpu"
        tf32 = (False, False)
        if dev.type == "cuda":
            name = torch.cuda.get_device_name(dev)
            tf32 = (bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32))
        return cls(torch=torch.__version__.split("+")[0], device_type=dev.type, device_name=name,
                   threads=torch.get_num_threads(), tf32_matmul=tf32[0], tf32_cudnn=tf32[1])

    def key(self) -> dict:
        """The fields that can change a number on this device type."""
        k = {"torch": self.torch, "device_type": self.device_type, "dtype": self.dtype}
        if self.device_type == "cpu":
            k["threads"] = self.threads
        else:
            k.update(device_name=self.device_name, tf32_matmul=self.tf32_matmul, tf32_cudnn=self.tf32_cudnn)
        return k

    def record(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        k = self.key()
        where = f"{k['threads']} CPU thread(s)" if self.device_type == "cpu" else f"{self.device_name}, TF32 {'on' if self.tf32_matmul or self.tf32_cudnn else 'off'}"
        return f"torch {self.torch} on {self.device_type} ({where}), {self.dtype}"

    @classmethod
    def from_record(cls, d: dict) -> "NumericEnv":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def resolve_threads(threads: int | None, recorded: "NumericEnv | None" = None) -> int:
    """The thread count to pin, the first of:

    1. ``threads``, the explicit count (``--threads N``, ``run(threads=N)``);
    2. the store's recorded count (``recorded``, when it was computed on the CPU), so that
       resuming a store keeps its numeric environment whatever the shell exports;
    3. ``$APEM_THREADS``;
    4. :data:`DEFAULT_THREADS`.

    The order ``apem run --help`` and the book's page *Running experiments* give. A non-integer ``$APEM_THREADS`` or a
    count below 1 raises :class:`EnvironmentMismatch` (``$APEM_THREADS`` is read, and
    checked, only when neither of the first two decides).
    """
    if threads is None and recorded is not None and recorded.device_type == "cpu":
        threads = recorded.threads
    if threads is None and os.environ.get("APEM_THREADS"):
        try:
            threads = int(os.environ["APEM_THREADS"])
        except ValueError:
            raise EnvironmentMismatch(f"APEM_THREADS={os.environ['APEM_THREADS']!r} is not a whole number") from None
    if threads is None:
        threads = DEFAULT_THREADS
    if threads < 1:
        raise EnvironmentMismatch(f"thread count must be >= 1, got {threads}")
    return int(threads)


def apply(threads: int) -> None:
    """Put this process in the pinned environment for good: ``threads`` CPU threads, TF32 off."""
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def tf32_flags() -> tuple[bool, bool]:
    """``(torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)`` now."""
    return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)


@contextlib.contextmanager
def no_tf32():
    """TF32 off (CUDA matrix products and cuDNN convolutions) for the block; the caller's flags come back after.

    Every public entry point that searches epsilons or computes maps runs under it
    (:func:`apem.metric.evaluate_maps`, :func:`apem.metric.search`, the explanation
    filter, :func:`apem.quantus_adapter.quantus_evaluate`, the studies, ``apem classify``;
    the runner through :func:`pinned`), so a number
    computed outside the runner is computed as the runner computes it: TF32 moves
    logits by about 1e-3 and with them borderline epsilons. Also a decorator
    (``@no_tf32()``); nesting is fine. On a CPU build the flags are plain switches.
    """
    old = tf32_flags()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def pinned(threads: int):
    """Pin torch's CPU thread count and switch TF32 off for the block (:func:`no_tf32`); restore afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with no_tf32():
            yield
    finally:
        torch.set_num_threads(old)


def check_compatible(stored: NumericEnv, now: NumericEnv, where: str) -> None:
    """Refuse to add chunks computed under ``now`` to a store computed under ``stored``."""
    if stored.key() == now.key():
        return
    diff = ", ".join(f"{k}: {stored.key().get(k)!r} there, {now.key().get(k)!r} now"
                     for k in sorted(set(stored.key()) | set(now.key())) if stored.key().get(k) != now.key().get(k))
    how = []
    if stored.device_type == now.device_type == "cpu" and stored.threads != now.threads:
        # without --threads the store's recorded count is used (resolve_threads), whatever $APEM_THREADS says
        how.append(f"resume with {stored.threads} thread(s) (--threads {stored.threads}, or no --threads: "
                   f"a store's recorded count comes first)")
    elif stored.device_type != now.device_type:
        how.append(f"resume on a machine with {stored.device_type}")
    how.append("or start a new store (--results DIR, or another `name:`)")
    raise EnvironmentMismatch(
        f"{where} was computed under {stored.describe()}, and this run is {now.describe()} ({diff}); "
        f"mixing them would mix numbers: {' '.join(how)}"
    )
