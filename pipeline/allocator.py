"""Keep freed memory in the process (glibc's malloc) instead of handing it back to the kernel.

glibc serves every block above its mmap threshold (at most 32 MB) with a fresh mmap and unmaps
it when freed, so a CPU net whose activations are that large faults its memory back in, page by
zeroed page, on every pass: on 2 cores make_cam spent 31 of its 50 s in the kernel (32 s in all
with this; the CLIP's and train_cam's steps gain about 6 %: benchmarks/allocator.py). Serving
those blocks from the heap, and never trimming it, keeps a process at its peak memory for its
lifetime (make_cam's peak grows 14-24 %) and changes no number: the same kernels run on the same
values.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int)


def tunes_malloc(name: str) -> bool:
    """Whether an environment variable sets glibc's malloc (GLIBC_TUNABLES or a MALLOC_*_ variable)."""
    return name == "GLIBC_TUNABLES" or (name.startswith("MALLOC_") and name.endswith("_"))


def user_tuned() -> bool:
    """Whether the environment already sets glibc's malloc: then it is left as the user set it."""
    return any(tunes_malloc(name) for name in os.environ)


def untuned_environment() -> dict[str, str]:
    """This environment without glibc's malloc settings: a child started with it shows glibc's
    default, or this module's setting (glibc reads its tunables once, at start-up)."""
    return {name: value for name, value in os.environ.items() if not tunes_malloc(name)}


def keep_freed_memory() -> bool:
    """Large blocks from the heap, and a heap that is never trimmed, for this process and those it
    forks (DataLoader workers). Returns whether it was applied: not on other C libraries or
    systems, nor where the environment tunes malloc itself."""
    if not sys.platform.startswith("linux") or user_tuned():
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries: nothing to tune
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
