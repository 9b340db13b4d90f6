"""Keep PyTorch's large CPU buffers on the heap: glibc ``mallopt`` tuning.

glibc's ``malloc`` serves every allocation above ``M_MMAP_THRESHOLD`` with a
fresh ``mmap`` that goes back to the kernel when freed. The threshold starts
at 128 KiB and only rises to the size of the largest such block freed so far.
A CNN's activations are megabytes (EfficientNet-Lite0 in a batch of 4: up to
19 MiB per tensor), so every forward pass can page-fault and zero its buffers
anew, and the speed then depends on what ran before: measured on 2 cores,
batches of 4 forwarded about 110 images/s in a fresh process and about 195
once a larger batch had been freed (or with this tuning), batches of 1 about
120 either way.

jemalloc or tcmalloc (``LD_PRELOAD``) cure the same thing, but they must be
set before the process starts, which a notebook kernel started by papermill
cannot do; ``mallopt`` is glibc's own switch for it. Setting the two
thresholds fixes them (no dynamic adjustment): blocks up to 32 MiB come from
the heap, and the heap is trimmed only when 256 MiB lie free at its top.
Elsewhere (not Linux, not glibc) nothing is changed. ``APEM_MALLOC_TUNING=0``
turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_state: dict = {}


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Apply the thresholds once per process; True when glibc accepted them."""
    if "ok" in _state:
        return _state["ok"]
    ok = False
    if os.environ.get("APEM_MALLOC_TUNING", "1") != "0" and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = bool(libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
                      and libc.mallopt(M_TRIM_THRESHOLD, int(trim_threshold)) == 1)
        except (OSError, AttributeError):  # no glibc (e.g. musl): leave the allocator alone
            ok = False
    _state["ok"] = ok
    return ok
