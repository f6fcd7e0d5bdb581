"""Peer (d): Vigil's own feature stage in a Bytewax flow: our Kafka source and batch decoder,
``FeatureStage`` (pane-based windows, here 60 s tumbling with no lateness) per shard, and our
topic sink. It computes more per window than the job asks (also last, slope and count).

Run as ``python -m bytewax.run bench.peers_impl.vigil_stage`` with PEER_ARGS set.
"""

from __future__ import annotations

import os

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from bench.peers_impl import mark_first
from flows.decode import BatchDecoder, RawBatch
from flows.detect import _by_shard, _WindowedFeatures
from flows.kafka import ReadingsSource, TopicSink
from flows.runtime import tune_garbage_collector
from flows.schemas import encoder
from flows.settings import Settings
from flows.stages import FeatureStage
from flows.windows import WindowSpec


def build(brokers: str, topic: str, out: str, readings: int, stats: str) -> Dataflow:
    settings = Settings.from_env({
        "VIGIL_BROKERS": brokers, "VIGIL_READINGS_TOPIC": topic, "VIGIL_EXIT_AT_END": "true",
        "VIGIL_WINDOW_LENGTH": "60s", "VIGIL_WINDOW_HOP": "60s", "VIGIL_ALLOWED_LATENESS": "0s",
    })
    spec = WindowSpec(60_000, 60_000, 0)
    decoder = BatchDecoder(settings.max_record_bytes,
                           round(settings.max_future.total_seconds() * 1000))
    seen = [False]

    def decode(batch: RawBatch) -> object:
        if not seen[0]:
            seen[0] = True
            mark_first(stats)
        return decoder(batch)

    flow = Dataflow("peer_vigil_stage")
    raw = op.input("read", flow, ReadingsSource(settings))
    decoded = op.map("decode", raw, decode)
    shards = op.flat_map("key_by_shard", decoded,
                         lambda b: _by_shard(b, settings.state_shards))  # type: ignore[arg-type]
    features = op.stateful_batch(
        "windowed_features", shards,
        lambda state: _WindowedFeatures(FeatureStage(spec, topic)),
    )
    windows = op.flat_map("windows", features, lambda kv: kv[1].out.windows)
    records = op.map(
        "encode", windows,
        lambda sw: (out, (sw[0].encode(), encoder.encode({
            "sensor_id": sw[0], "window_start_ms": sw[1].start_ms, **sw[1].features,
        }))),
    )
    op.output("write", records, TopicSink(settings, out))
    return flow


def _from_env() -> Dataflow:
    brokers, topic, out, readings, stats = os.environ["PEER_ARGS"].split()
    built = build(brokers, topic, out, int(readings), stats)
    tune_garbage_collector()  # as flows.detect does once its flow is built
    return built


flow = _from_env() if "PEER_ARGS" in os.environ else None
