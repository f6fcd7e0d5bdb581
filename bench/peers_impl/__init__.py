"""The same job in four implementations, for ``python -m bench.peers`` (see its docstring).

Job: decode JSON readings ``{"sensor_id", "ts", "values": {metric: number}}``, keep a 60 s
event-time tumbling window per sensor, and emit one JSON record per (sensor, window) with
mean, std, min and max of every metric when a later reading of that sensor passes the window
end (or at end of input). Each implementation runs as its own process with the arguments
``BROKERS INPUT_TOPIC OUTPUT_TOPIC READINGS STATS_FILE``, reads from the start of the single
input partition, stops after ``READINGS`` readings and writes ``{"first": t}`` (wall time of
the first message it saw) to ``STATS_FILE`` as soon as it sees it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

WINDOW_MS = 60_000


def mark_first(stats: str) -> None:
    """Record when the first message arrived (start-up excluded from the rate)."""
    Path(stats).write_text(json.dumps({"first": time.time()}))


def finish(acc: dict[str, list[float]], sensor: str, start_ms: int) -> dict[str, object]:
    """A window's output record from per-metric [n, sum, sumsq, min, max] accumulators."""
    out: dict[str, object] = {"sensor_id": sensor, "window_start_ms": start_ms}
    for metric, (n, s, ss, lo, hi) in acc.items():
        mean = s / n
        out[metric] = {"mean": mean, "std": max(ss / n - mean * mean, 0.0) ** 0.5,
                       "min": lo, "max": hi}
    return out


def fold(acc: dict[str, list[float]], values: dict[str, float]) -> None:
    """Add one reading's values to a window's accumulators."""
    for metric, v in values.items():
        a = acc.get(metric)
        if a is None:
            acc[metric] = [1.0, v, v * v, v, v]
        else:
            a[0] += 1.0
            a[1] += v
            a[2] += v * v
            if v < a[3]:
                a[3] = v
            if v > a[4]:
                a[4] = v
