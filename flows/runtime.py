"""Process-wide tuning of a flow process: the garbage collector once its dataflow is built,
malloc from its first recovery snapshot on.

Kept apart from ``flows.detect`` (whose import builds the flow) so benchmarks and other
entry points that run the stages can apply exactly the same tuning.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import sys

# Tracked allocations between two young-generation collections (CPython's default: 700).
# The flow allocates ~6 tracked objects per reading (a `Reading`, its batch lists, window and
# score records), so at the default a batch of 1,000 readings set off ~9 young collections,
# each walking every young object still alive (the whole batch), promoting them to be walked
# again by the older generations: ~2.6 µs per reading, a fifth of the feature path's time.
# At 50,000 the batch's objects are mostly freed by reference counting before any
# collection looks at them; cyclic garbage waits for at most 50,000 allocations.
GC_YOUNG_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Freeze the start-up heap, then collect the young generation rarely.

    Why freeze: numpy, River, ONNX Runtime, Bytewax and the rest leave ~100,000 tracked
    objects, and every full collection walks them all: a ~55 ms pause on this machine, taken
    in the middle of whichever batch triggered it, so it lands on the p99 latency. Frozen
    objects are never collected, so start-up garbage is collected first and this runs once.
    Why a higher threshold: see ``GC_YOUNG_THRESHOLD``.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


# glibc mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Free memory at the top of the heap kept before any is given back (mallopt takes an int).
KEEP_FREED_BYTES = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next allocation instead of returning it.

    Why: by default glibc serves every block over 32 MiB with a fresh ``mmap`` and unmaps it
    when freed. A recovery snapshot is made of such blocks (each shard's state pickled into
    one buffer, ~100 MiB per shard at 100,000 sensors), so every snapshot wrote into new
    pages, and the kernel zeroed and mapped each 4 KiB page on first touch. Measured at
    100,000 sensors in steady state, a snapshot of the whole state took 0.85 s with glibc's
    defaults and 0.43 s with freed memory kept (one shard; 1.00 and 0.74 s with eight;
    docs/benchmarks.md). The price: the process's resident memory stays near its peak (a
    snapshot and Bytewax's copy of it, or what a restore needed) instead of shrinking.

    Returns whether the setting took effect: only with glibc on Linux; elsewhere (musl,
    macOS) nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only; musl has mallopt as a no-op
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES))


@functools.cache
def keep_freed_memory_from_now() -> bool:
    """``keep_freed_memory()``, once per process: the flow calls it before its first snapshot.

    Why not at start: a restore from a recovery store needs ~2.5× the state at its peak (the
    stored snapshot, the unpickled state, the tables built from it). With freed memory kept,
    the process would hold that peak for good, and restores measured 2-5× slower on this
    machine (docs/benchmarks.md). Restores happen before the first snapshot, so they run with
    glibc's defaults and their memory goes back; snapshots, every few seconds from then on,
    reuse theirs. A flow without a recovery store never snapshots and never changes malloc.
    """
    kept = keep_freed_memory()
    if not kept:
        logging.getLogger("vigil.flow").info(
            "VIGIL_KEEP_FREED_MEMORY has no effect here: the C library is not glibc"
        )
    return kept
