"""CPU per reading of the whole detection pipeline in one process, with no broker and no Bytewax.

Simulated readings are encoded to JSON first (not timed), then cut into batches as the Kafka
source delivers them and run through the flow's own code, stage by stage: decode and
validate (``BatchDecoder``), split by state shard (``group_by_shard``), windowed features
(``FeatureStage`` per shard), scoring and alerts (``ScoreStage`` per shard, the configured
detectors), and JSON encoding of every score record and alert. The garbage collector is
tuned as the flow process tunes it (``flows.runtime``).

By default every run starts from a warm state: the same fleet's first 6 simulated hours are
run once, untimed, and each timed run restores every shard's state from their snapshots
(``--warmup-minutes``). A fresh fleet is not what a running flow sees: for its first ~30
windows a sensor's LSTM-AE and calibrators only learn, and the calibrators rank against a
full 300-score history only after 5 hours; from fresh state, CPU per reading over the
first hour is about half the steady state's (``--warmup-minutes 0`` measures that).

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
from collections.abc import Iterator
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


def _encoded_ticks(
    sensors: int, metrics: int, ticks: int, seed: int, progress: bool
) -> Iterator[list[bytes]]:
    """Each tick's JSON readings of one simulated fleet (a reading every 10 s), with
    anomalies injected, in the order a producer would send them."""
    names = [*DEFAULT_METRICS[:metrics], *(f"m{i}" for i in range(len(DEFAULT_METRICS), metrics))]
    fleet = Fleet(sensors=sensors, metrics=names, seed=seed, interval=timedelta(seconds=10),
                  anomaly_rate=24.0)
    for i in tqdm(range(ticks), desc="simulating", unit="tick", disable=not progress):
        yield [encoder.encode(r) for r in fleet.tick(i)]


def simulated_records(
    sensors: int, metrics: int, minutes: float, seed: int = 1, progress: bool = False
) -> list[bytes]:
    """JSON readings of ``sensors`` simulated sensors over ``minutes`` (a reading every 10 s),
    with anomalies injected, in the order a producer would send them."""
    return [r for tick in _encoded_ticks(sensors, metrics, int(minutes * 6), seed, progress)
            for r in tick]


def simulated_split(
    sensors: int, metrics: int, first_minutes: float, minutes: float, seed: int = 1,
    progress: bool = False,
) -> tuple[list[bytes], list[bytes]]:
    """:func:`simulated_records` over ``first_minutes + minutes``, simulated once and cut
    after the first ``first_minutes`` (a warm-up) into two lists."""
    first = int(first_minutes * 6)
    early: list[bytes] = []
    later: list[bytes] = []
    ticks = _encoded_ticks(sensors, metrics, first + int(minutes * 6), seed, progress)
    for i, tick in enumerate(ticks):
        (early if i < first else later).extend(tick)
    return early, later


Warm = dict[str, tuple[bytes, bytes]]  # shard key -> (FeatureStage, ScoreStage) snapshots


def _stages(
    settings: Settings, warm: Warm | None = None
) -> tuple[dict[str, FeatureStage], dict[str, ScoreStage]]:
    """Every shard's stages, built first as the flow builds them when it starts, with the
    state of ``warm`` restored into them."""
    spec = settings.window_spec()
    keys = [shard_key(i) for i in range(settings.state_shards)]
    feats = {key: FeatureStage(spec) for key in keys}
    scorers = {key: build_score_stage(settings) for key in keys}
    for key, (feature_state, score_state) in (warm or {}).items():
        feats[key] = FeatureStage.restore(spec, feature_state)
        scorers[key].restore(score_state)
    return feats, scorers


def _raw_batches(records: list[bytes], batch: int) -> list[RawBatch]:
    """``records`` cut into batches as the Kafka source delivers them."""
    return [
        RawBatch("readings", 0, list(range(i, i + len(records[i : i + batch]))),
                 records[i : i + batch])
        for i in range(0, len(records), batch)
    ]


def _decoder(settings: Settings) -> BatchDecoder:
    """The flow's decoder, with no future-time bound: simulated time is in the past."""
    return BatchDecoder(settings.max_record_bytes, 10**13)


def warm_state(records: list[bytes], settings: Settings, batch: int,
               progress: bool = False) -> Warm:
    """Every shard's state after ``records`` (untimed), for :func:`run_once` to start from.

    Why: a fresh detector is cheap. Until a sensor has ~30 windows the LSTM-AE and the
    calibrators only learn, and a calibrator ranks against a full 300-score history only
    after 5 hours of windows; over a first simulated hour three windows in four have no
    opinion yet, and CPU per reading is about half the steady state's.
    """
    decoder = _decoder(settings)
    feats, scorers = _stages(settings)
    for raw in tqdm(_raw_batches(records, batch), desc="warming up", unit="batch",
                    disable=not progress):
        for key, readings in group_by_shard(decoder(raw).readings, settings.state_shards):
            out = feats[key].process([readings])
            if out.windows:
                scorers[key].process(out.windows)
    return {key: (feats[key].snapshot(), scorers[key].snapshot()) for key in feats}


def run_once(
    records: list[bytes], settings: Settings, batch: int, warm: Warm | None = None
) -> dict[str, float]:
    """Every record through the pipeline once, from fresh state or from ``warm``'s (restored
    untimed); CPU seconds per step."""
    decoder = _decoder(settings)
    shards = settings.state_shards
    feats, scorers = _stages(settings, warm)
    batches = _raw_batches(records, batch)
    spent = dict.fromkeys(STEPS, 0.0)
    counts = {"windows": 0, "scores": 0, "judged": 0, "alerts": 0, "dead": 0}
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
        # windows some detector had an opinion on (the others only taught the detectors)
        counts["judged"] += sum(1 for r in results for x in r.scores if x.likelihoods)
        counts["alerts"] += sum(len(r.alerts) for r in results)
        counts["dead"] += len(decoded.dead)
    return {**spent, **counts}


def measure(
    sensors: int, metrics: int, minutes: float, batch: int, repeat: int, settings: Settings,
    progress: bool = True, warmup_minutes: float = 0.0,
) -> dict[str, float]:
    """Median over ``repeat`` runs of µs per reading, per step and in all; each run starts
    from the state ``warmup_minutes`` of the same fleet left (none: fresh state)."""
    early, records = simulated_split(sensors, metrics, warmup_minutes, minutes,
                                     progress=progress)
    warm = warm_state(early, settings, batch, progress) if early else None
    del early
    runs = [
        run_once(records, settings, batch, warm)
        for _ in tqdm(range(repeat), desc="runs", disable=not progress)
    ]
    n = len(records)
    out: dict[str, float] = {"sensors": sensors, "metrics": metrics, "readings": n,
                             "warmup_minutes": warmup_minutes}
    for step in STEPS:
        out[f"{step}_us"] = statistics.median(r[step] for r in runs) / n * 1e6
    out["total_us"] = statistics.median(sum(r[s] for s in STEPS) for r in runs) / n * 1e6
    out["readings_per_cpu_s"] = 1e6 / out["total_us"]
    for key in ("windows", "scores", "judged", "alerts", "dead"):
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
    p.add_argument("--warmup-minutes", type=float, default=360.0, metavar="M",
                   help="simulated minutes run first, untimed, so the detectors and calibrators "
                        "are warm (default 360: full 300-window histories); 0 = fresh state")
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
    if args.warmup_minutes < 0:
        p.error("--warmup-minutes must be 0 or more")
    settings = Settings(state_shards=args.shards)
    if args.detectors:
        settings = dataclasses.replace(settings, detectors=args.detectors)
        settings.validate()
    row = measure(args.sensors, args.metrics, args.minutes, args.batch, args.repeat, settings,
                  not args.no_progress, args.warmup_minutes)
    after = (f"after a {args.warmup_minutes:g}-minute warm-up" if args.warmup_minutes
             else "from fresh state")
    print(f"{row['readings']:,} readings ({args.sensors:,} sensors × {args.metrics} metrics) "
          f"{after}, batches of {args.batch:,}, median of {args.repeat} runs:")
    print("| " + " | ".join(f"{s} µs" for s in STEPS) + " | total µs/reading | readings per "
          "CPU-second | windows | judged | alerts |")
    print("|" + "---|" * (len(STEPS) + 5))
    print("| " + " | ".join(f"{row[f'{s}_us']:.2f}" for s in STEPS)
          + f" | **{row['total_us']:.2f}** | {row['readings_per_cpu_s']:,.0f} | "
          f"{row['windows']:,} | {row['judged']:,} | {row['alerts']:,} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(row, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
