"""Load figures for the alerts API: ``python -m bench.api_load``.

Starts a real ``python -m api`` process on a temporary SQLite file (or targets ``--url``),
then drives it from this process with asyncio + httpx at a fixed concurrency for a fixed
time, per scenario:

* ``ingest``: ``POST /v1/alerts`` batches of ``--batch`` new alerts (unique ids);
* ``get``: ``GET /v1/alerts?limit=50`` pages, half of them filtered by sensor, over the
  alerts stored by a prefill.

Prints requests/s and p50/p99 latency per scenario (one line each, and ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec

from flows.cli import non_negative_int, positive_float, positive_int
from flows.schemas import Alert, Contributor

TOKEN = "bench-token"
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _alerts(start: int, n: int, sensors: int = 200) -> list[Alert]:
    out = []
    for i in range(start, start + n):
        t = T0 + timedelta(seconds=10 * i)
        out.append(Alert(
            alert_id=f"bench{i:09d}", sensor_id=f"sensor-{i % sensors}", status="open",
            start=t, end=t + timedelta(minutes=1), score=2.0 + (i % 7),
            severity="critical" if i % 5 == 0 else "warning", detectors=["zscore"],
            contributors=[Contributor("pressure", 2.0)], model_version="zscore-1",
        ))
    return out


def start_api(port: int, db: Path, workers: int) -> subprocess.Popen:
    """``python -m api`` on ``port``; returns once /health answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update({"VIGIL_API_DB": str(db), "VIGIL_API_PORT": str(port),
                "VIGIL_API_TOKEN": TOKEN, "VIGIL_API_WORKERS": str(workers),
                "VIGIL_LOG_LEVEL": "WARNING"})
    proc = subprocess.Popen([sys.executable, "-m", "api"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the API did not start within 30 s")


async def _drive(name: str, url: str, concurrency: int, seconds: float, batch: int) -> dict:
    ids = itertools.count(10_000_000)
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        deadline = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            nonlocal errors
            n = 0
            while time.perf_counter() < deadline:
                if name == "ingest":
                    body = msgspec.json.encode(_alerts(next(ids) * batch, batch))
                    req = client.post("/v1/alerts", content=body, headers=headers)
                else:
                    params = {"limit": 50}
                    if n % 2:
                        params["sensor_id"] = f"sensor-{(w * 31 + n) % 200}"
                    req = client.get("/v1/alerts", params=params)
                t0 = time.perf_counter()
                r = await req
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1
                n += 1

        t_start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - t_start
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {
        "scenario": name, "concurrency": concurrency, "seconds": round(elapsed, 2),
        "requests": len(latencies), "errors": errors,
        "rps": round(len(latencies) / elapsed, 1),
        "alerts_per_s": round(len(latencies) * batch / elapsed, 1) if name == "ingest" else None,
        "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(
        prog="python -m bench.api_load",
        description="Measure requests/s and p50/p99 latency of GET /v1/alerts and POST "
        "/v1/alerts against a real `python -m api` process.",
    )
    p.add_argument("--url", help="an API that already runs (token must be 'bench-token'); "
                   "default: start one on a temporary SQLite file")
    p.add_argument("--concurrency", type=positive_int, default=16, help="requests in flight (16)")
    p.add_argument("--seconds", type=positive_float, default=10.0,
                   help="duration per scenario (10)")
    p.add_argument("--batch", type=positive_int, default=50, help="alerts per ingest request (50)")
    p.add_argument("--prefill", type=non_negative_int, default=20_000,
                   help="alerts stored before `get`")
    p.add_argument("--workers", type=positive_int, default=1, help="API worker processes (1)")
    p.add_argument("--scenarios", default="ingest,get", help="comma-separated: ingest,get")
    p.add_argument("--json", action="store_true", help="print results as JSON lines")
    args = p.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not scenarios or set(scenarios) - {"ingest", "get"}:
        p.error("--scenarios takes ingest and/or get")

    with tempfile.TemporaryDirectory() as tmp:
        proc = None
        url = args.url
        if not url:
            from bench.broker import free_port

            port = free_port()
            proc = start_api(port, Path(tmp) / "api.sqlite3", args.workers)
            url = f"http://127.0.0.1:{port}"
        try:
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            for i in range(0, args.prefill, 500):
                httpx.post(f"{url}/v1/alerts", headers=headers, timeout=30,
                           content=msgspec.json.encode(_alerts(i, 500))).raise_for_status()
            for name in scenarios:
                res = asyncio.run(_drive(name, url, args.concurrency, args.seconds, args.batch))
                if args.json:
                    print(json.dumps(res))
                else:
                    extra = f" ({res['alerts_per_s']} alerts/s)" if res["alerts_per_s"] else ""
                    print(f"{name:7s} c={res['concurrency']:<3d} {res['rps']:8.1f} req/s{extra}  "
                          f"p50 {res['p50_ms']:.1f} ms  p99 {res['p99_ms']:.1f} ms  "
                          f"errors {res['errors']}")
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
