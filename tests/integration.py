"""Helpers for integration tests: run the real flow as a subprocess against a real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
from confluent_kafka import Producer

from bench.broker import read_all
from bench.throughput import topic_env

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"


def flow_env(bootstrap: str, topics: dict[str, str], **settings: str) -> dict[str, str]:
    """Environment for a flow subprocess: the parent's, minus VIGIL_*, plus these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(topic_env(bootstrap, topics))
    env["PYTHONUNBUFFERED"] = "1"
    env.update({f"VIGIL_{k.upper()}": v for k, v in settings.items()})
    return env


FLOW_TOPICS = {"readings": 2, "alerts": 1, "scores": 1, "dead": 1}

# 115 windows per file: too few for HST's ~280-window warm-up, so these pipeline tests score
# with the z-score detector (HST and the LSTM-AE on SKAB: bench.accuracy, docs/accuracy.md).
# Their incidents repeat at the same size, which per-sensor calibration rightly ranks as
# less and less unusual; a lower alert level keeps every repeat an alert here.
ONE_HZ = {
    "window_length": "30s", "window_hop": "10s", "allowed_lateness": "5s",
    "detectors": "zscore", "alert_likelihood": "0.9", "alert_open_after": "1",
}


def start_flow(
    env: dict[str, str], log: Path, recovery: Path | None = None, snapshot_s: int = 1
) -> subprocess.Popen:
    """``python -m bytewax.run flows.detect`` as operators run it."""
    cmd = [sys.executable, "-m", "bytewax.run", "flows.detect"]
    if recovery is not None:
        cmd += ["-r", str(recovery), "-s", str(snapshot_s), "-b", "0"]
    out = log.open("ab")
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def wait_exit(proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Wait for an exit-at-end flow to finish; fail with its log if it fails or hangs."""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        tail = log.read_text()[-3000:]
        raise AssertionError(f"flow did not finish in {timeout}s:\n{tail}") from None
    assert rc == 0, f"flow exited with {rc}:\n{log.read_text()[-3000:]}"


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL: no clean shutdown, no flush, as in a crash."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def produce(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]], rate: float = 0,
    quiet: bool = False,
) -> None:
    """Produce (key, value) records in order (at ``rate``/s if given) and wait for all acks;
    ``quiet`` keeps librdkafka's connection errors (an outage on purpose) off stderr."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                  **({"log_level": 0} if quiet else {})})
    t0 = time.monotonic()
    for n, (key, value) in enumerate(records):
        if rate and n % 100 == 0:
            ahead = t0 + n / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            p.poll(0)
        while True:
            try:
                p.produce(topic, value, key)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(30) == 0


def read_decoded(bootstrap: str, topic: str, struct: type, min_count: int | None = None,
                 timeout: float = 20) -> list:
    """Every record of ``topic`` decoded as ``struct``, with their Kafka keys checked later."""
    msgs = read_all(bootstrap, topic, timeout=timeout, min_count=min_count)
    return [(m.key(), msgspec.json.decode(m.value(), type=struct)) for m in msgs]


def wait_for(predicate, timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
