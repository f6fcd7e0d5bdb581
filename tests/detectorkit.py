"""Helpers for detector tests: closed windows at NAB's 5-minute hop."""

from __future__ import annotations

from flows.windows import ClosedWindow

HOP_MS = 300_000  # 5 min, as most NAB files
DAY = 288  # hops per day


def window(i: int, values: dict[str, float]) -> ClosedWindow:
    """The 10-hop window ending with hop ``i``, whose newest value and mean per metric are
    ``values``."""
    end = (i + 1) * HOP_MS
    feats = {f"{m}.last": v for m, v in values.items()}
    feats |= {f"{m}.mean": v for m, v in values.items()}
    return ClosedWindow(end - 10 * HOP_MS, end, feats, 10)
