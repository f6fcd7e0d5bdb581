"""How throughput, memory, state and snapshots change with the number of sensors.

``python -m bench.scale`` runs, for each sensor count (default 10, 1,000, 10,000 and 100,000):

* ``bench.throughput`` with recovery on (``-r``, a 10 s snapshot interval): readings/s, the
  flow's CPU and peak RSS, end to end through the broker. Each sensor gets
  ``--readings-per-sensor`` readings (default 60: ten minutes of event time at 10 s, enough to
  close windows and score them; the detectors are still warming up at that length, so the
  figure is for the window and scoring machinery, not for steady-state alerting);
* ``bench.state_size`` over ``--minutes`` of simulated time: bytes per sensor in the feature
  and score state, the size of a snapshot of every shard, and how long it takes to build and
  to restore.

Each step is the existing script as a subprocess, so the figures are exactly what those
commands print; this one collects them into one table (and a PNG with ``--plot``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from flows.cli import positive_int

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SENSORS = (10, 1000, 10_000, 100_000)


def _run(argv: list[str], timeout: float) -> None:
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, timeout=timeout,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n"
                           + (proc.stdout + proc.stderr)[-3000:])


def measure(sensors: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Throughput (recovery on) and state size for one sensor count."""
    readings = max(sensors * args.readings_per_sensor, args.min_readings)
    tp_json, ss_json = tmp / f"tp-{sensors}.json", tmp / f"ss-{sensors}.json"
    tp_argv = ["bench.throughput", "--readings", str(readings), "--sensors", str(sensors),
               "--metrics", str(args.metrics), "--recovery", "--snapshot-interval",
               str(args.snapshot_interval), "--repeat", str(args.repeat), "--no-progress",
               "--json", str(tp_json)]
    ss_argv = ["bench.state_size", "--sensors", str(sensors), "--metrics", str(args.metrics),
               "--minutes", str(args.minutes), "--no-progress", "--json", str(ss_json)]
    if args.detectors:
        tp_argv += ["--detectors", args.detectors]
        ss_argv += ["--detectors", args.detectors]
    if args.brokers:
        tp_argv += ["--brokers", args.brokers]
    print(f"{sensors:,} sensors: throughput over {readings:,} readings ...", file=sys.stderr,
          flush=True)
    _run(tp_argv, args.timeout)
    print(f"{sensors:,} sensors: state size ...", file=sys.stderr, flush=True)
    _run(ss_argv, args.timeout)
    tp = json.loads(tp_json.read_text())["median"]
    (ss,) = json.loads(ss_json.read_text())
    return {
        "sensors": sensors, "readings": readings,
        "readings_per_s": tp["readings_per_s"], "flow_cpu_s": tp["flow_cpu_s"],
        "peak_rss_mib": tp["flow_peak_rss_mib"], "scores": tp["scores"],
        "features_bytes_per_sensor": ss["features_bytes_per_sensor"],
        "scores_bytes_per_sensor": ss["scores_bytes_per_sensor"],
        "state_bytes_per_sensor": ss["features_bytes_per_sensor"]
        + ss["scores_bytes_per_sensor"],
        "snapshot_mib": ss["features_snapshot_mib"] + ss["scores_snapshot_mib"],
        "snapshot_s": ss["features_snapshot_s"] + ss["scores_snapshot_s"],
        "restore_s": ss["features_restore_s"] + ss["scores_restore_s"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| sensors | readings | readings/s (recovery on) | flow CPU s | peak RSS MiB | "
             "state B/sensor (features + scores) | snapshot MiB | snapshot s | restore s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['sensors']:,} | {r['readings']:,} | {r['readings_per_s']:,.0f} | "
            f"{r['flow_cpu_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['state_bytes_per_sensor']:,.0f}"
            f" ({r['features_bytes_per_sensor']:,.0f} + {r['scores_bytes_per_sensor']:,.0f}) | "
            f"{r['snapshot_mib']:.1f} | {r['snapshot_s']:.2f} | {r['restore_s']:.2f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Readings/s and per-sensor state against sensors (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["sensors"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [r["readings_per_s"] for r in rows], "o-", label="readings/s (recovery on)")
    ax.set_xscale("log")
    ax.set_xlabel("sensors")
    ax.set_ylabel("readings/s")
    ax2 = ax.twinx()
    ax2.plot(x, [r["state_bytes_per_sensor"] / 1024 for r in rows], "s--", color="tab:orange",
             label="state KiB/sensor")
    ax2.set_ylabel("state per sensor (KiB)")
    ax.set_title("bench.scale: throughput and state vs sensors")
    fig.legend(loc="center right", bbox_to_anchor=(0.88, 0.5), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description="Throughput (recovery on), peak RSS, per-sensor state, snapshot size and "
                    "snapshot/restore time for several sensor counts, from bench.throughput "
                    "and bench.state_size.",
    )
    p.add_argument("--sensors", type=positive_int, nargs="+", default=list(DEFAULT_SENSORS))
    p.add_argument("--metrics", type=positive_int, default=4)
    p.add_argument("--readings-per-sensor", type=positive_int, default=60, metavar="N")
    p.add_argument("--min-readings", type=positive_int, default=200_000, metavar="N",
                   help="at least this many readings per throughput run (default 200000)")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="simulated minutes for the state-size step (default 10)")
    p.add_argument("--snapshot-interval", type=float, default=10.0, metavar="S")
    p.add_argument("--repeat", type=positive_int, default=1)
    p.add_argument("--detectors", metavar="NAMES", help="VIGIL_DETECTORS (default: the flow's)")
    p.add_argument("--brokers", metavar="HOST:PORT")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S")
    p.add_argument("--json", type=Path, metavar="OUT.json")
    p.add_argument("--plot", type=Path, metavar="OUT.png")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vigil-scale-") as tmp:
        rows = [measure(n, args, Path(tmp)) for n in args.sensors]
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": vars(args) | {
            "json": str(args.json), "plot": str(args.plot) if args.plot else None,
        }, "rows": rows}, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
