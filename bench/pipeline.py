"""CPU per reading of the whole detection pipeline in one process, with no broker and no Bytewax.

Simulated readings are encoded to JSON first (not timed), then cut into batches as the Kafka
source delivers them and run through the flow's own code, stage by stage: decode and
validate (``BatchDecoder``), split by state shard (``group_by_shard``), windowed features
(``FeatureStage`` per shard), scoring and alerts (``ScoreStage`` per shard, the configured
detectors), and JSON encoding of every score record and alert. The garbage collector is
tuned as the flow process tunes it (``flows.runtime``).

Why: end-to-end runs through a broker share two cores with the broker and the producer and
vary by ±15 % on a noisy machine; this figure is the flow's own CPU work, steady to a few
per cent, so an A/B of two versions of the code can be read from a handful of alternating
runs. ``bench.throughput`` remains the figure users see.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from datetime import timedelta

from tqdm import tqdm

from detectors.factory import build_score_stage
from flows.decode import BatchDecoder, RawBatch
from flows.runtime import tune_garbage_collector
from flows.schemas import encoder
from flows.settings import Settings
from flows.simulator import DEFAULT_METRICS, Fleet
from flows.stages import FeatureStage, ScoreStage, group_by_shard, shard_key

STEPS = ("decode", "shard", "features", "scoring", "encode")


def simulated_records(
    sensors: int, metrics: int, minutes: float, seed: int = 1, progress: bool = False
) -> list[bytes]:
    """JSON readings of ``sensors`` simulated sensors over ``minutes`` (a reading every 10 s),
    with anomalies injected, in the order a producer would send them."""
    names = [*DEFAULT_METRICS[:metrics], *(f"m{i}" for i in range(len(DEFAULT_METRICS), metrics))]
    fleet = Fleet(sensors=sensors, metrics=names, seed=seed, interval=timedelta(seconds=10),
                  anomaly_rate=24.0)
    ticks = int(minutes * 6)
    return [
        encoder.encode(r)
        for i in tqdm(range(ticks), desc="simulating", unit="tick", disable=not progress)
        for r in fleet.tick(i)
    ]


def run_once(records: list[bytes], settings: Settings, batch: int) -> dict[str, float]:
    """Every record through the pipeline once, with fresh state; CPU seconds per step."""
    spec = settings.window_spec()
    decoder = BatchDecoder(settings.max_record_bytes, 10**13)  # simulated time is in the past
    shards = settings.state_shards
    # every shard's stages built first, as the flow builds them when it starts
    keys = [shard_key(i) for i in range(shards)]
    feats = {key: FeatureStage(spec) for key in keys}
    scorers: dict[str, ScoreStage] = {key: build_score_stage(settings) for key in keys}
    batches = [
        RawBatch("readings", 0, list(range(i, i + len(records[i : i + batch]))),
                 records[i : i + batch])
        for i in range(0, len(records), batch)
    ]
    spent = dict.fromkeys(STEPS, 0.0)
    counts = {"windows": 0, "scores": 0, "alerts": 0, "dead": 0}
    clock = time.process_time
    tune_garbage_collector()
    for raw in batches:
        t0 = clock()
        decoded = decoder(raw)
        t1 = clock()
        groups = group_by_shard(decoded.readings, shards)
        t2 = clock()
        closed = []
        for key, readings in groups:
            out = feats[key].process([readings])
            if out.windows:
                closed.append((key, out.windows))
        t3 = clock()
        results = []
        for key, windows in closed:
            results.append(scorers[key].process(windows))
        t4 = clock()
        for res in results:
            for record in res.scores:
                encoder.encode(record)
            for alert in res.alerts:
                encoder.encode(alert)
        t5 = clock()
        for step, dt in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            spent[step] += dt
        counts["windows"] += sum(len(w) for _, w in closed)
        counts["scores"] += sum(len(r.scores) for r in results)
        counts["alerts"] += sum(len(r.alerts) for r in results)
        counts["dead"] += len(decoded.dead)
    return {**spent, **counts}


def measure(
    sensors: int, metrics: int, minutes: float, batch: int, repeat: int, settings: Settings,
    progress: bool = True,
) -> dict[str, float]:
    """Median over ``repeat`` runs of µs per reading, per step and in all."""
    records = simulated_records(sensors, metrics, minutes, progress=progress)
    runs = [
        run_once(records, settings, batch)
        for _ in tqdm(range(repeat), desc="runs", disable=not progress)
    ]
    n = len(records)
    out: dict[str, float] = {"sensors": sensors, "metrics": metrics, "readings": n}
    for step in STEPS:
        out[f"{step}_us"] = statistics.median(r[step] for r in runs) / n * 1e6
    out["total_us"] = statistics.median(sum(r[s] for s in STEPS) for r in runs) / n * 1e6
    out["readings_per_cpu_s"] = 1e6 / out["total_us"]
    for key in ("windows", "scores", "alerts", "dead"):
        out[key] = runs[-1][key]
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(
        prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--sensors", type=int, default=1000)
    p.add_argument("--metrics", type=int, default=4, help="metrics per sensor (default 4)")
    p.add_argument("--minutes", type=float, default=60.0,
                   help="simulated minutes, a reading per sensor every 10 s (default 60)")
    p.add_argument("--batch", type=int, default=Settings().consumer_batch_size,
                   help="records per batch (default: VIGIL_CONSUMER_BATCH_SIZE's default)")
    p.add_argument("--repeat", type=int, default=3, help="runs; the median is shown")
    p.add_argument("--detectors", default=None,
                   help="comma-separated detectors (default: VIGIL_DETECTORS)")
    p.add_argument("--shards", type=int, default=Settings().state_shards,
                   help="state shards (default: VIGIL_STATE_SHARDS's default)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if min(args.sensors, args.metrics, args.batch, args.repeat, args.shards) < 1 \
            or args.minutes <= 0:
        p.error("--sensors, --metrics, --batch, --repeat, --shards and --minutes must be "
                "positive")
    settings = Settings(state_shards=args.shards)
    if args.detectors:
        settings = dataclasses.replace(settings, detectors=args.detectors)
        settings.validate()
    row = measure(args.sensors, args.metrics, args.minutes, args.batch, args.repeat, settings,
                  not args.no_progress)
    print(f"{row['readings']:,} readings ({args.sensors:,} sensors × {args.metrics} metrics), "
          f"batches of {args.batch:,}, median of {args.repeat} runs:")
    print("| " + " | ".join(f"{s} µs" for s in STEPS) + " | total µs/reading | readings per "
          "CPU-second | windows | scores | alerts |")
    print("|" + "---|" * (len(STEPS) + 5))
    print("| " + " | ".join(f"{row[f'{s}_us']:.2f}" for s in STEPS)
          + f" | **{row['total_us']:.2f}** | {row['readings_per_cpu_s']:,.0f} | "
          f"{row['windows']:,} | {row['scores']:,} | {row['alerts']:,} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(row, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
