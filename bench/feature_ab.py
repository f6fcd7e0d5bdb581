"""A/B of the feature stage alone: this checkout's ``FeatureStage`` against another revision's.

Feeds the simulated fleet (the ``bench.state_size`` workload: readings grouped into
``--shards`` shards, one batch per shard per tick) to both implementations, tick by tick and
alternating which goes first, so machine load hits both alike. Reports ``process`` time per
reading for each and checks that both emit the same windows (features within 1e-9) and
accept the same readings.

    python -m bench.feature_ab --sensors 1000 10000 --against main

With ``--only old`` / ``--only new`` one implementation runs alone (run each in its own
process): in the same process each also pays garbage collection over the other's objects,
and the old stage keeps several Python containers per sensor.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from flows.settings import Settings, parse_duration
from flows.simulator import DEFAULT_METRICS, Fleet
from flows.stages import FeatureStage, group_by_shard


def load_revision(rev: str, into: Path) -> ModuleType:
    """``flows/stages.py`` of ``rev``, importing that revision's ``flows/windows.py``."""
    def show(path: str) -> str:
        return subprocess.run(
            ["git", "show", f"{rev}:{path}"], check=True, capture_output=True, text=True
        ).stdout

    (into / "_ab_windows.py").write_text(show("flows/windows.py"))
    (into / "_ab_stages.py").write_text(
        re.sub(r"^from flows\.windows import", "from _ab_windows import",
               show("flows/stages.py"), flags=re.M)
    )
    sys.path.insert(0, str(into))
    spec = importlib.util.spec_from_file_location("_ab_stages", into / "_ab_stages.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["_ab_stages"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _same(a: list, b: list) -> bool:
    if [(s, w.start_ms, w.end_ms, w.readings) for s, w in a] != [
        (s, w.start_ms, w.end_ms, w.readings) for s, w in b
    ]:
        return False
    for (_, x), (_, y) in zip(a, b, strict=True):
        if x.features.keys() != y.features.keys():
            return False
        for k, v in x.features.items():
            if abs(v - y.features[k]) > 1e-9 + 1e-9 * abs(v):
                return False
    return True


def run(
    sensors: int, minutes: float, shards: int, old: ModuleType, ticks_per_batch: int = 1,
    only: str = "",
) -> dict[str, float]:
    """Time both stages on the same batches (or ``only`` one); us per reading for each."""
    settings = Settings(sim_interval=parse_duration("10s"))
    fleet = Fleet(sensors=sensors, metrics=list(DEFAULT_METRICS[:4]), seed=1,
                  interval=settings.sim_interval)
    spec = settings.window_spec()
    new_st: dict[str, FeatureStage] = {}
    old_st: dict[str, object] = {}
    t_new = t_old = 0.0
    readings = windows = 0
    ticks = int(minutes * 6)
    for i in range(0, ticks, ticks_per_batch):
        batch = [r for j in range(i, min(i + ticks_per_batch, ticks)) for r in fleet.tick(j)]
        readings += len(batch)
        for shard, rs in group_by_shard(batch, shards):
            if only:
                stage = (new_st if only == "new" else old_st).setdefault(
                    shard, FeatureStage(spec) if only == "new" else old.FeatureStage(spec))
                t0 = time.perf_counter()
                out = stage.process([rs])  # type: ignore[attr-defined]
                spent = time.perf_counter() - t0
                windows += len(out.windows)
                if only == "new":
                    t_new += spent
                else:
                    t_old += spent
                continue
            a = new_st.setdefault(shard, FeatureStage(spec))
            b = old_st.setdefault(shard, old.FeatureStage(spec))
            if (i // ticks_per_batch) % 2:
                t0 = time.perf_counter()
                oa = a.process([rs])
                t1 = time.perf_counter()
                ob = b.process([rs])  # type: ignore[attr-defined]
                t2 = time.perf_counter()
                t_new += t1 - t0
                t_old += t2 - t1
            else:
                t0 = time.perf_counter()
                ob = b.process([rs])  # type: ignore[attr-defined]
                t1 = time.perf_counter()
                oa = a.process([rs])
                t2 = time.perf_counter()
                t_old += t1 - t0
                t_new += t2 - t1
            windows += len(oa.windows)
            if oa.accepted != ob.accepted or not _same(oa.windows, ob.windows):
                raise SystemExit(f"outputs differ at tick {i}, shard {shard}")
    return {
        "sensors": sensors, "readings": readings, "windows": windows,
        "old_us_per_reading": t_old / readings * 1e6,
        "new_us_per_reading": t_new / readings * 1e6,
        "speedup": t_old / t_new if t_new and t_old else math.nan,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m bench.feature_ab",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--sensors", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--minutes", type=float, default=20.0, help="simulated minutes (10 s ticks)")
    p.add_argument("--shards", type=int, default=Settings().state_shards)
    p.add_argument("--against", default="main", help="git revision to compare with")
    p.add_argument("--ticks-per-batch", type=int, default=1,
                   help="ticks per batch (>1: each sensor several times per batch, as in a "
                        "large Kafka poll)")
    p.add_argument("--only", choices=["old", "new"], default="",
                   help="time one implementation alone, without the other's objects in the "
                        "same process (whose garbage collection would also be timed)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        old = load_revision(args.against, Path(tmp))
        print("| sensors | readings | windows | old us/reading | new us/reading | speed-up |")
        print("|---|---|---|---|---|---|")
        for n in args.sensors:
            r = run(n, args.minutes, args.shards, old, args.ticks_per_batch, args.only)
            print(f"| {n} | {r['readings']:.0f} | {r['windows']:.0f} | "
                  f"{r['old_us_per_reading']:.2f} | {r['new_us_per_reading']:.2f} | "
                  f"{r['speedup']:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
