"""Peer (b): Quix Streams (its own venv: it pins confluent-kafka < 2.13, Vigil uses 2.16).

Idiomatic Quix: a JSON topic whose timestamps come from the readings' ``ts``, a
``tumbling_window(60 s).reduce(...).final()`` per message key (the sensor id), and
``to_topic``. Stops itself after READINGS readings. Imports nothing from Vigil.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

from quixstreams import Application

WINDOW_MS = 60_000


def main(brokers: str, topic: str, out: str, readings: int, stats: str) -> None:
    # a fresh group per run: a reused one would resume from its committed (end) offset
    app = Application(broker_address=brokers, consumer_group=f"peer-quix-{Path(stats).stem}-"
                      f"{time.time_ns()}",
                      auto_offset_reset="earliest", use_changelog_topics=False,
                      state_dir=str(Path(stats).parent / "quix-state"),
                      consumer_extra_config={"fetch.wait.max.ms": 10},
                      producer_extra_config={"linger.ms": 5})
    inp = app.topic(topic, value_deserializer="json", timestamp_extractor=(
        lambda value, headers, ts, ts_type: int(
            datetime.fromisoformat(value["ts"]).timestamp() * 1000)
    ))
    dst = app.topic(out, value_serializer="json")
    seen = [0]

    def count(_value: dict) -> None:
        if seen[0] == 0:
            Path(stats).write_text(json.dumps({"first": time.time()}))
        seen[0] += 1
        if seen[0] >= readings:
            app.stop()

    def reducer(acc: dict, value: dict) -> dict:
        for metric, v in value["values"].items():
            a = acc.get(metric)
            if a is None:
                acc[metric] = [1.0, v, v * v, v, v]
            else:
                a[0] += 1.0
                a[1] += v
                a[2] += v * v
                a[3] = min(a[3], v)
                a[4] = max(a[4], v)
        return acc

    def initializer(value: dict) -> dict:
        return reducer({}, value)

    def finish(w: dict) -> dict:
        out_rec: dict[str, object] = {"window_start_ms": w["start"]}
        for metric, (n, s, ss, lo, hi) in w["value"].items():
            mean = s / n
            out_rec[metric] = {"mean": mean, "std": max(ss / n - mean * mean, 0.0) ** 0.5,
                               "min": lo, "max": hi}
        return out_rec

    sdf = app.dataframe(inp)
    sdf = sdf.update(count)
    sdf = sdf.tumbling_window(duration_ms=WINDOW_MS).reduce(reducer, initializer).final()
    sdf = sdf.apply(finish)
    sdf.to_topic(dst)
    app.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
