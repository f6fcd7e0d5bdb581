"""How big is per-sensor state, and what does a recovery snapshot of it cost?

Runs the flow's real stateful stages (``FeatureStage`` and ``ScoreStage``, split into
``--shards`` shards exactly as the dataflow splits them) over the simulated fleet until
windows and detector history are in steady state, then measures, per stage: snapshot bytes
per sensor, the time to snapshot every shard (what Bytewax does at each epoch when all
sensors were active) and the time to restore. Bytewax adds its own framing and a SQLite
write on top; this isolates what Vigil controls.
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
from flows.runtime import keep_freed_memory_from_now
from flows.settings import Settings, parse_duration
from flows.simulator import DEFAULT_METRICS, Fleet
from flows.stages import FeatureStage, ScoreStage, group_by_shard


def measure(
    sensors: int, metrics: int, minutes: float, shards: int, settings: Settings,
    progress: bool = True,
) -> dict[str, float]:
    """Feed ``minutes`` of simulated time for ``sensors`` sensors; return the figures."""
    extra = [f"m{i}" for i in range(len(DEFAULT_METRICS), metrics)]
    names = list(DEFAULT_METRICS[:metrics]) + extra
    fleet = Fleet(sensors=sensors, metrics=names, seed=1, interval=settings.sim_interval)
    spec = settings.window_spec()
    feats: dict[str, FeatureStage] = {}
    scorers: dict[str, ScoreStage] = {}

    def scorer() -> ScoreStage:
        return build_score_stage(settings)

    ticks = int(minutes * 60 / settings.sim_interval.total_seconds())
    readings = 0
    busy = 0.0
    for i in tqdm(range(ticks), desc="simulated ticks", disable=not progress, unit="tick"):
        batch = fleet.tick(i)
        readings += len(batch)
        t0 = time.perf_counter()
        for shard, rs in group_by_shard(batch, shards):
            out = feats.setdefault(shard, FeatureStage(spec)).process([rs])
            if out.windows:
                if shard not in scorers:  # not setdefault: that would build one per call
                    scorers[shard] = scorer()
                scorers[shard].process(out.windows)
        busy += time.perf_counter() - t0

    result: dict[str, float] = {
        "sensors": sensors, "metrics": metrics, "shards": shards, "readings": readings,
        "stage_us_per_reading": busy / readings * 1e6,
    }
    if settings.keep_freed_memory:
        keep_freed_memory_from_now()  # what the flow calls before its first snapshot
    for name, stages in (("features", feats), ("scores", scorers)):
        times: list[float] = []
        blobs: list[bytes] = []
        for _ in range(3):
            blobs = []  # freed first, as the flow's previous snapshot is gone by the next epoch
            t0 = time.perf_counter()
            blobs = [s.snapshot() for s in stages.values()]
            times.append(time.perf_counter() - t0)
        size = sum(len(b) for b in blobs)
        t0 = time.perf_counter()
        if name == "features":
            for b in blobs:
                FeatureStage.restore(spec, b)
        else:
            for b in blobs:
                scorer().restore(b)
        restore = time.perf_counter() - t0
        result[f"{name}_bytes_per_sensor"] = size / sensors
        result[f"{name}_snapshot_mib"] = size / 2**20
        result[f"{name}_snapshot_s"] = statistics.median(times)
        result[f"{name}_restore_s"] = restore
    if not scorers:
        raise ValueError(
            f"no window closed in {minutes:g} simulated minutes; give more --minutes (a window "
            f"of {spec.length_ms / 60000:g} min closes after it ends plus the allowed lateness)"
        )
    # what each detector adds to the score snapshot, and the two calibrators (one score
    # column per detector each)
    for det in next(iter(scorers.values())).ensemble.detectors:
        d_bytes = sum(
            len(d.snapshot())
            for st in scorers.values() for d in st.ensemble.detectors if d.name == det.name
        )
        result[f"{det.name}_bytes_per_sensor"] = d_bytes / sensors
    for kind in ("held", "unheld"):
        c_bytes = sum(len(getattr(st.ensemble, kind).snapshot()) for st in scorers.values())
        result[f"calibration_{kind}_bytes_per_sensor"] = c_bytes / sensors
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(
        prog="python -m bench.state_size", description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--sensors", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--metrics", type=int, default=4, help="metrics per sensor (default 4)")
    p.add_argument("--minutes", type=float, default=70.0,
                   help="simulated minutes fed (default 70: fills 5m windows and 60 windows "
                        "of z-score history at a 1m hop)")
    p.add_argument("--interval", default="10s", help="simulated reading interval (default 10s)")
    p.add_argument("--shards", type=int, default=Settings().state_shards,
                   help="state shards (default: VIGIL_STATE_SHARDS's default)")
    p.add_argument("--detectors", default=None,
                   help="comma-separated detectors (default: VIGIL_DETECTORS)")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="keep freed memory from the first snapshot on, as the flow does with "
                        "VIGIL_KEEP_FREED_MEMORY (default: on; --no-keep-freed-memory "
                        "measures glibc's defaults); restores are then timed with it on")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    settings = Settings(sim_interval=parse_duration(args.interval),
                        keep_freed_memory=args.keep_freed_memory)
    if args.detectors:
        settings = dataclasses.replace(settings, detectors=args.detectors)
        settings.validate()
    assert settings.window_hop == timedelta(minutes=1)
    try:
        rows = [
            measure(n, args.metrics, args.minutes, args.shards, settings, not args.no_progress)
            for n in args.sensors
        ]
    except ValueError as exc:
        p.error(str(exc))
    cols = [
        ("sensors", "{:.0f}"), ("readings", "{:.0f}"), ("stage_us_per_reading", "{:.2f}"),
        ("features_bytes_per_sensor", "{:.0f}"), ("scores_bytes_per_sensor", "{:.0f}"),
        ("features_snapshot_mib", "{:.2f}"), ("scores_snapshot_mib", "{:.2f}"),
        ("features_snapshot_s", "{:.3f}"), ("scores_snapshot_s", "{:.3f}"),
        ("features_restore_s", "{:.3f}"), ("scores_restore_s", "{:.3f}"),
    ]
    print("| " + " | ".join(c for c, _ in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f.format(r[c]) for c, f in cols) + " |")
    for r in rows:
        parts = [f"{k.removesuffix('_bytes_per_sensor')} {v:.0f} B"
                 for k, v in r.items() if k.endswith("_bytes_per_sensor")]
        print(f"{r['sensors']:.0f} sensors, per sensor: " + ", ".join(parts))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
