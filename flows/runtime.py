"""Process-wide tuning a flow process applies once its dataflow is built.

Kept apart from ``flows.detect`` (whose import builds the flow) so benchmarks and other
entry points that run the stages can apply exactly the same tuning.
"""

from __future__ import annotations

import gc

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
