"""Helpers for flow tests: synthetic readings, RawBatches and a flow run that collects outputs."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.decode import RawBatch
from flows.detect import FlowStreams, build_flow
from flows.schemas import Reading, encoder
from flows.settings import Settings

T0 = 1_700_000_000_000
FAST = Settings(
    window_length=timedelta(seconds=60),
    window_hop=timedelta(seconds=10),
    allowed_lateness=timedelta(seconds=5),
    max_future=timedelta(days=36500),
    state_shards=4,
    # HST needs ~280 windows before it judges; these runs are 120 windows per sensor
    detectors="zscore",
    zscore_warmup=5,
)


def synthetic_readings(
    sensors: int = 5, seconds: int = 1200, seed: int = 1, spike_at: int = 900
) -> list[Reading]:
    """1 Hz readings of a few sensors; sensor s0 has a big level shift from ``spike_at``."""
    rng = random.Random(seed)
    out = []
    for i in range(seconds):
        for s in range(sensors):
            shift = 25.0 if s == 0 and spike_at <= i < spike_at + 60 else 0.0
            out.append(Reading(
                f"s{s}", T0 + i * 1000,
                {"temp": 20 + s + rng.gauss(0, 0.5) + shift, "flow": 3 + rng.gauss(0, 0.1)},
            ))
    return out


def to_batches(records: list[bytes], size: int = 500, topic: str = "readings") -> list[RawBatch]:
    """Cut encoded records into RawBatches as a Kafka partition would deliver them."""
    return [
        RawBatch(topic, 0, list(range(i, min(i + size, len(records)))), records[i : i + size])
        for i in range(0, len(records), size)
    ]


def encode_all(readings: list[Reading]) -> list[bytes]:
    """JSON bytes of each reading, as producers send them."""
    return [encoder.encode(r) for r in readings]


@dataclass
class Collected:
    """Everything a flow run emitted."""

    alerts: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    dead: list = field(default_factory=list)
    windows: list = field(default_factory=list)


def run_flow(
    items: list, settings: Settings = FAST, recovery_dir: Path | None = None,
    into: Collected | None = None,
) -> Collected:
    """Run the real dataflow on ``items`` (RawBatches, or TestingSource signals)."""
    got = into or Collected()

    def outputs(s: FlowStreams) -> None:
        op.output("collect_alerts", s.alerts, TestingSink(got.alerts))
        op.output("collect_scores", s.scores, TestingSink(got.scores))
        op.output("collect_dead", s.dead_letters, TestingSink(got.dead))
        op.output("collect_windows", s.windows, TestingSink(got.windows))

    flow = build_flow(settings, TestingSource(items), outputs)
    recovery = RecoveryConfig(str(recovery_dir)) if recovery_dir else None
    run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)
    return got


def init_recovery(path: Path) -> Path:
    """A fresh one-partition Bytewax recovery store."""
    path.mkdir(parents=True, exist_ok=True)
    init_db_dir(path, 1)
    return path
