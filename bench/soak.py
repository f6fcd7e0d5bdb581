"""Sustained-load soak: broker + API + flow + simulator as processes at a steady rate, with the
memory of the flow and the API and the flow's consumer lag sampled every 10 s.

    python -m bench.soak --minutes 10 --rate 500

The test broker (tansu, in memory) is part of the load: its CPU share is sampled too (cores
used, ``broker_cpu``). It slows down as its in-memory log grows (around 150 000 records on the
development machine fetches stall and lag climbs), so the defaults stay below that; against
Redpanda, higher rates are possible (this command always starts its own tansu).

Passes (exit 0) when, after the warm-up, neither process's resident memory grows by more than
``--max-growth-mb`` (first vs. last post-warm-up minute, medians) and the consumer lag of the
last minute is no higher than the warm-up's highest lag plus one second of input (lag
bounded, not growing). Writes the samples and the verdict as JSON (``--out``); the figures of
the latest run are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.broker import TestBroker, free_port
from flows.cli import positive_int

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children (uvicorn workers, Bytewax threads), MiB."""
    total = 0
    pids = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(k) for k in kids]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (for the broker's share of the machine)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric_sum(port: int, name: str) -> float | None:
    """Sum of every sample of ``name`` on the flow's /metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            text = r.read().decode()
    except OSError:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith((name + " ", name + "{"))]
    return sum(values) if values else None


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update({f"VIGIL_{k.upper()}": v for k, v in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print/write its verdict."""
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=positive_int, default=10, help="duration (default 10)")
    p.add_argument("--rate", type=positive_int, default=150, help="readings/s (default 150)")
    p.add_argument("--sensors", type=positive_int, default=50, help="sensors (default 50)")
    p.add_argument("--interval", default="60s",
                   help="event time between two readings of a sensor (default 60s: per-sensor "
                   "state fills within the warm-up)")
    p.add_argument("--warmup", type=positive_int, default=3,
                   help="minutes excluded from the memory verdict (default 3)")
    p.add_argument("--max-growth-mb", type=float, default=25.0,
                   help="allowed RSS growth per process after warm-up (default 25 MiB)")
    p.add_argument("--detectors", default="hst,zscore",
                   help="VIGIL_DETECTORS of the flow (default hst,zscore)")
    p.add_argument("--fetch-wait-ms", type=positive_int, default=10,
                   help="VIGIL_FETCH_WAIT_MAX_MS of the flow (default 10, the flow's default; "
                   "higher means fewer fetches for the in-memory test broker to serve)")
    p.add_argument("--out", type=Path, default=Path("soak.json"), help="JSON report")
    args = p.parse_args(argv)

    state = Path(tempfile.mkdtemp(prefix="vigil-soak-"))
    procs: list[subprocess.Popen] = []
    with TestBroker() as broker:
        topics = {"readings": "readings", "alerts": "alerts", "scores": "scores",
                  "dead": "readings-dead-letter"}
        broker.create_topics({"readings": 4, "alerts": 1, "scores": 1,
                              "readings-dead-letter": 1})
        api_port, metrics_port = free_port(), free_port()
        token = "soak-token"
        common = {"brokers": broker.bootstrap, "api_token": token}
        api = subprocess.Popen(
            [sys.executable, "-m", "api"], cwd=ROOT,
            env=_env(**common, api_db=str(state / "api.sqlite3"), api_port=str(api_port)),
            stdout=(state / "api.log").open("wb"), stderr=subprocess.STDOUT)
        procs.append(api)
        recovery = state / "recovery"
        recovery.mkdir()
        subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"],
                       check=True)
        flow = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "flows.detect", "-r", str(recovery),
             "-s", "10", "-b", "0"], cwd=ROOT,
            env=_env(**common, api_url=f"http://127.0.0.1:{api_port}",
                     metrics_port=str(metrics_port), detectors=args.detectors,
                     window_length="5m", window_hop="1m", readings_topic=topics["readings"],
                     fetch_wait_max_ms=str(args.fetch_wait_ms)),
            stdout=(state / "flow.log").open("wb"), stderr=subprocess.STDOUT)
        procs.append(flow)
        sim = subprocess.Popen(
            [sys.executable, "-m", "flows.simulator", "--produce", "--brokers",
             broker.bootstrap, "--topic", topics["readings"], "--sensors", str(args.sensors),
             "--rate", str(args.rate), "--interval", args.interval, "--start",
             "2024-01-01T00:00:00Z", "--duration", "3650d", "--quiet"], cwd=ROOT,
            env=_env(), stdout=(state / "sim.log").open("wb"), stderr=subprocess.STDOUT)
        procs.append(sim)
        samples: list[dict[str, float | None]] = []
        t0 = time.monotonic()
        assert broker.process is not None
        broker_cpu = cpu_seconds(broker.process.pid)
        try:
            while time.monotonic() - t0 < args.minutes * 60:
                time.sleep(10)
                for proc in procs:
                    if proc.poll() is not None:
                        raise SystemExit(f"a process exited early; logs in {state}")
                s = {"t": round(time.monotonic() - t0, 1), "flow_mb": rss_mb(flow.pid),
                     "api_mb": rss_mb(api.pid),
                     "lag": metric_sum(metrics_port, "vigil_consumer_lag_messages"),
                     "read": metric_sum(metrics_port, "vigil_readings_total"),
                     "broker_cpu": round((cpu_seconds(broker.process.pid) - broker_cpu) / 10, 2)}
                broker_cpu = cpu_seconds(broker.process.pid)
                samples.append(s)
                print(json.dumps(s), flush=True)
        finally:
            for proc in reversed(procs):
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    verdict = judge(samples, args)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "verdict": verdict, "samples": samples}, indent=1))
    print(json.dumps(verdict, indent=1))
    if verdict["pass"]:
        shutil.rmtree(state, ignore_errors=True)
    else:
        print(f"logs kept in {state}", file=sys.stderr)
    return 0 if verdict["pass"] else 1


def judge(samples: list[dict[str, float | None]], args: argparse.Namespace) -> dict:
    """Memory flat and lag bounded after warm-up?"""
    after = [s for s in samples if (s["t"] or 0) >= args.warmup * 60]
    if len(after) < 12:
        return {"pass": False, "why": "too few samples after warm-up (run longer)"}
    first, last = after[:6], after[-6:]

    def med(rows: list, key: str) -> float:
        return statistics.median(float(r[key] or 0) for r in rows)

    growth = {k: round(med(last, k) - med(first, k), 1) for k in ("flow_mb", "api_mb")}
    warm_lag = max(float(s["lag"] or 0) for s in samples if (s["t"] or 0) < args.warmup * 60)
    last_lag = max(float(s["lag"] or 0) for s in last)
    read = [float(s["read"] or 0) for s in after]
    rate = (read[-1] - read[0]) / max(1.0, float(after[-1]["t"] or 0) - float(after[0]["t"] or 0))
    ok = all(g <= args.max_growth_mb for g in growth.values()) and (
        last_lag <= warm_lag + args.rate)
    return {"pass": ok, "growth_mb": growth, "max_growth_mb": args.max_growth_mb,
            "flow_mb_end": med(last, "flow_mb"), "api_mb_end": med(last, "api_mb"),
            "lag_warmup_max": warm_lag, "lag_last_minute_max": last_lag,
            "read_per_s_after_warmup": round(rate, 1), "samples": len(samples)}


if __name__ == "__main__":
    raise SystemExit(main())
