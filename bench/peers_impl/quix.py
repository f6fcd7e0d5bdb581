"""Peer (b): Quix Streams (its own venv: it pins confluent-kafka < 2.13, Vigil uses 2.16).

Idiomatic Quix: a JSON topic whose timestamps come from the readings' ``ts``, a
``tumbling_window(60 s).reduce(...).final()`` per message key (the sensor id), and
``to_topic``. Stops itself after READINGS readings. From Vigil it imports only
``bench.peers_impl`` (standard library only), so the accumulators are the other peers' own.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

from quixstreams import Application

from bench.peers_impl import WINDOW_MS, finish, fold, mark_first


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
            mark_first(stats)
        seen[0] += 1
        if seen[0] >= readings:
            app.stop()

    def reducer(acc: dict, value: dict) -> dict:
        fold(acc, value["values"])
        return acc

    def initializer(value: dict) -> dict:
        return reducer({}, value)

    def record(w: dict, key: bytes, _ts: int, _headers: object) -> dict:
        return finish(w["value"], key.decode(), w["start"])

    sdf = app.dataframe(inp)
    sdf = sdf.update(count)
    sdf = sdf.tumbling_window(duration_ms=WINDOW_MS).reduce(reducer, initializer).final()
    sdf = sdf.apply(record, metadata=True)
    sdf.to_topic(dst)
    app.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
