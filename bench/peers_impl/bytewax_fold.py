"""Peer (c): Bytewax's own KafkaSource, ``fold_window`` (event clock, tumbling) and KafkaSink.

Run as ``python -m bytewax.run "bench.peers_impl.bytewax_fold:build(...)"``; the harness
passes the arguments through ``--dataflow-args``-free environment variables instead, since
``bytewax.run`` imports a module attribute: PEER_ARGS="BROKERS IN OUT READINGS STATS".
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import bytewax.operators.windowing as win
import orjson
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Dataflow

from bench.peers_impl import WINDOW_MS, finish, fold, mark_first

_ALIGN = datetime(2024, 1, 1, tzinfo=UTC)


def build(brokers: str, topic: str, out: str, readings: int, stats: str) -> Dataflow:
    seen = [0]

    def decode(msg: object) -> tuple[str, tuple[datetime, dict[str, float]]]:
        if seen[0] == 0:
            mark_first(stats)
        seen[0] += 1
        r = orjson.loads(msg.value)  # type: ignore[attr-defined]
        return r["sensor_id"], (datetime.fromisoformat(r["ts"]), r["values"])

    def folder(acc: dict[str, list[float]], v: tuple[datetime, dict[str, float]]) -> dict:
        fold(acc, v[1])
        return acc

    def merger(a: dict[str, list[float]], b: dict[str, list[float]]) -> dict:
        for metric, (n, s, ss, lo, hi) in b.items():
            x = a.setdefault(metric, [0.0, 0.0, 0.0, lo, hi])
            x[0] += n
            x[1] += s
            x[2] += ss
            x[3] = min(x[3], lo)
            x[4] = max(x[4], hi)
        return a

    def encode(kv: tuple[str, tuple[int, dict[str, list[float]]]]) -> KafkaSinkMessage:
        sensor, (window_id, acc) = kv
        start_ms = round(_ALIGN.timestamp() * 1000) + window_id * WINDOW_MS
        return KafkaSinkMessage(sensor.encode(), orjson.dumps(finish(acc, sensor, start_ms)))

    flow = Dataflow("peer_bytewax_fold")
    msgs = op.input("read", flow, KafkaSource([brokers], [topic], tail=False, batch_size=5000,
                                               add_config={"fetch.wait.max.ms": "10"}))
    keyed = op.map("decode", msgs, decode)
    clock = win.EventClock(lambda v: v[0], wait_for_system_duration=timedelta(0))
    windower = win.TumblingWindower(length=timedelta(milliseconds=WINDOW_MS), align_to=_ALIGN)
    windows = win.fold_window("window", keyed, clock, windower, dict, folder, merger)
    op.output("write", op.map("encode", windows.down, encode),
              KafkaSink([brokers], out, add_config={"linger.ms": "5"}))
    return flow


def _from_env() -> Dataflow:
    brokers, topic, out, readings, stats = os.environ["PEER_ARGS"].split()
    return build(brokers, topic, out, int(readings), stats)


flow = _from_env() if "PEER_ARGS" in os.environ else None
