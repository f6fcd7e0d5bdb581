"""The same windowing job in four stream-processing styles, against one broker and one input.

``python -m bench.peers`` preloads simulated readings (JSON, keyed by sensor) into one topic,
then runs each implementation in ``bench/peers_impl`` as its own process over the whole topic
and reports readings/s from the first message it saw to its exit (start-up excluded, final
flush included), CPU seconds, and the windows it wrote; then the ratios of Vigil's feature
stage to each peer. The job (``bench/peers_impl/__init__.py``): decode, 60 s event-time
tumbling window per sensor with mean/std/min/max per metric, one record per window.

* ``plain``: a confluent-kafka consume loop with orjson and a dict of open windows;
* ``plain-tuned``: the same loop with the one librdkafka setting Vigil's consumer changes,
  ``fetch.queue.backoff.ms`` (``VIGIL_FETCH_QUEUE_BACKOFF_MS``). librdkafka's default pauses
  fetching for a second whenever 100,000 messages wait unread, which caps any consumer that
  processes faster than that near 100k/s; this row compares the processing alone;
* ``quix``: Quix Streams (``tumbling_window().reduce().final()``), in its own virtualenv
  because it pins confluent-kafka < 2.13 (``--setup-quix`` creates ``.venv-peers``);
* ``bytewax``: Bytewax's KafkaSource, ``fold_window`` with an event clock, KafkaSink;
* ``vigil``: Vigil's Kafka source, batch decoder and ``FeatureStage`` (which computes more:
  last, slope and count too) in a Bytewax flow, as ``flows.detect`` runs them.

Implementations run one after another (repeats interleaved), so they never share the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.broker import read_all
from bench.throughput import (
    broker_config,
    git_commit,
    metric_names,
    open_broker,
    preload,
    versions,
)
from flows.cli import positive_int
from flows.settings import Settings, SettingsError, parse_duration
from flows.simulator import Fleet

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("plain", "plain-tuned", "quix", "bytewax", "vigil")
QUIX_VENV = ROOT / ".venv-peers"
QUIX_REQUIREMENT = "quixstreams==3.28.1"
_RETENTION_MS = str(7 * 24 * 3600 * 1000)  # Quix reads topic configs; the test broker needs it


@dataclass
class PeerRun:
    """One implementation's run."""

    peer: str
    run: int
    exit_code: int
    readings: int
    seconds: float  # first message seen -> process exit
    readings_per_s: float
    cpu_s: float
    windows: int
    wall_s: float


def quix_python(explicit: str | None) -> str | None:
    """The interpreter that has Quix Streams: the flag, else ``.venv-peers`` if set up."""
    if explicit:
        return explicit
    candidate = QUIX_VENV / "bin" / "python"
    return str(candidate) if candidate.exists() else None


def setup_quix() -> str:
    """Create ``.venv-peers`` with Quix Streams (from PyPI); return its python."""
    subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True)
    py = str(QUIX_VENV / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", QUIX_REQUIREMENT, "orjson"], check=True)
    return py


def command(peer: str, args: list[str], quix_py: str | None) -> tuple[list[str], dict[str, str]]:
    """argv and extra environment that run one implementation."""
    env = {"PYTHONUNBUFFERED": "1", "VIGIL_LOG_FORMAT": "text"}
    if peer == "plain":
        return [sys.executable, "-m", "bench.peers_impl.plain", *args], env
    if peer == "plain-tuned":
        backoff = Settings.from_env({}).fetch_queue_backoff_ms  # Vigil's default
        return [sys.executable, "-m", "bench.peers_impl.plain", *args, str(backoff)], env
    if peer == "quix":
        assert quix_py is not None
        return [quix_py, "-m", "bench.peers_impl.quix", *args], env  # cwd: the repository
    module = {"bytewax": "bench.peers_impl.bytewax_fold", "vigil": "bench.peers_impl.vigil_stage"}
    env["PEER_ARGS"] = " ".join(args)
    return [sys.executable, "-m", "bytewax.run", module[peer]], env


def _create_topic(admin: Any, name: str) -> None:
    from confluent_kafka.admin import NewTopic

    fut = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1,
                                        config={"retention.ms": _RETENTION_MS})])[name]
    fut.result(timeout=15)


def run_peer(peer: str, k: int, bootstrap: str, admin: Any, topic: str, readings: int,
             quix_py: str | None, log_dir: Path, timeout: float) -> PeerRun:
    """Run one implementation over the preloaded topic and measure it."""
    out = f"peers-{peer}-{k}-{os.urandom(3).hex()}"
    _create_topic(admin, out)
    stats = log_dir / f"{peer}-{k}.stats.json"
    stats.unlink(missing_ok=True)
    argv, extra = command(peer, [bootstrap, topic, out, str(readings), str(stats)], quix_py)
    env = {k_: v for k_, v in os.environ.items() if not k_.startswith("VIGIL_")} | extra
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    with open(log_dir / f"{peer}-{k}.log", "wb") as log:
        proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False)
    end = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    first = json.loads(stats.read_text())["first"] if stats.exists() else t0
    seconds = max(end - first, 1e-9)
    windows = len(read_all(bootstrap, out, timeout=30)) if proc.returncode == 0 else 0
    return PeerRun(peer, k, proc.returncode, readings, round(seconds, 3),
                   round(readings / seconds, 1), round(cpu, 2), windows, round(end - t0, 2))


def _median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def summary(runs: list[PeerRun]) -> dict[str, dict[str, float]]:
    """Median readings/s, CPU and windows per implementation (good runs only)."""
    out: dict[str, dict[str, float]] = {}
    for peer in PEERS:
        ok = [r for r in runs if r.peer == peer and r.exit_code == 0]
        if ok:
            out[peer] = {
                "readings_per_s": _median([r.readings_per_s for r in ok]),
                "cpu_s": _median([r.cpu_s for r in ok]),
                "windows": _median([float(r.windows) for r in ok]),
                "runs": len(ok),
            }
    vigil = out.get("vigil", {}).get("readings_per_s")
    for row in out.values():
        row["vigil_ratio"] = round(vigil / row["readings_per_s"], 2) if vigil else float("nan")
    return out


def table(med: dict[str, dict[str, float]], runs: list[PeerRun]) -> str:
    lines = ["| implementation | readings/s (runs) | median | CPU s | windows | Vigil ÷ this |",
             "|---|---|---|---|---|---|"]
    for peer, row in med.items():
        each = " / ".join(f"{r.readings_per_s / 1000:.1f}k" for r in runs
                          if r.peer == peer and r.exit_code == 0)
        lines.append(f"| {peer} | {each} | {row['readings_per_s']:,.0f} | {row['cpu_s']:.1f} | "
                     f"{row['windows']:,.0f} | {row['vigil_ratio']:.2f} |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description="Run the same JSON -> 60 s tumbling window -> one record per window job "
                    "as a plain confluent-kafka loop (with librdkafka's defaults, and tuned "
                    "like Vigil's consumer), with Quix Streams, with Bytewax's "
                    "fold_window and with Vigil's feature stage, against one broker and input, "
                    "and print readings/s and the ratios.",
    )
    p.add_argument("--readings", type=positive_int, default=300_000)
    p.add_argument("--sensors", type=positive_int, default=10_000)
    p.add_argument("--metrics", type=positive_int, default=4)
    p.add_argument("--interval", default="10s", metavar="DURATION",
                   help="event time between two readings of one sensor (default 10s)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--repeat", type=positive_int, default=1)
    p.add_argument("--only", nargs="+", choices=PEERS, metavar="PEER",
                   help=f"run only these ({', '.join(PEERS)})")
    p.add_argument("--quix-python", metavar="PATH",
                   help="python with quixstreams installed (default: .venv-peers/bin/python)")
    p.add_argument("--setup-quix", action="store_true",
                   help=f"create .venv-peers with {QUIX_REQUIREMENT} first")
    p.add_argument("--brokers", metavar="HOST:PORT", help="use this broker, not the test one")
    p.add_argument("--timeout", type=float, default=900.0, metavar="S",
                   help="give up on one implementation run after S seconds")
    p.add_argument("--json", type=Path, metavar="OUT.json")
    p.add_argument("--log-dir", type=Path, metavar="DIR", help="keep the runs' logs here")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        fleet = Fleet(args.sensors, metric_names(args.metrics), args.seed,
                      interval=parse_duration(args.interval))
        brokers, kafka = broker_config(args.brokers)
    except (ValueError, SettingsError) as exc:
        p.error(str(exc))
    peers = list(args.only or PEERS)
    quix_py = setup_quix() if args.setup_quix else quix_python(args.quix_python)
    if "quix" in peers and quix_py is None:
        print("quix skipped: no Quix Streams interpreter (run with --setup-quix once, or give "
              "--quix-python)", file=sys.stderr)
        peers.remove("quix")
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="vigil-peers-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    runs: list[PeerRun] = []
    with open_broker(brokers, kafka) as (broker, _pid):
        admin = broker.admin()
        topic = f"peers-readings-{os.urandom(3).hex()}"
        _create_topic(admin, topic)
        produced = preload(broker.bootstrap, kafka, topic, fleet, args.readings,
                           not args.no_progress)
        print(f"preloaded {produced.readings:,} readings ({args.sensors:,} sensors)",
              file=sys.stderr)
        for k in range(1, args.repeat + 1):
            for peer in peers:
                res = run_peer(peer, k, broker.bootstrap, admin, topic, produced.readings,
                               quix_py, log_dir, args.timeout)
                runs.append(res)
                print(f"run {k} {peer}: {res.readings_per_s:,.0f} readings/s, CPU "
                      f"{res.cpu_s:.1f} s, {res.windows:,} windows"
                      + (f"  ** exit {res.exit_code}, see {log_dir}/{peer}-{k}.log **"
                         if res.exit_code else ""), file=sys.stderr)
    med = summary(runs)
    print(table(med, runs))
    report = {
        "config": {"readings": args.readings, "sensors": args.sensors, "metrics": args.metrics,
                   "interval": args.interval, "repeat": args.repeat, "peers": peers,
                   "broker": "external" if brokers else "tansu", "cpus": os.cpu_count(),
                   "quix": QUIX_REQUIREMENT if quix_py else None},
        "runs": [asdict(r) for r in runs], "median": med, **git_commit(),
        "versions": versions(),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.log_dir is None and all(r.exit_code == 0 for r in runs):
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0 if all(r.exit_code == 0 for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
