"""`python -m bytewax.run flows.detect` with no broker: the simulated fleet, alerts on stdout."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from flows.schemas import Alert

ROOT = Path(__file__).resolve().parents[1]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def test_embedded_default_prints_alerts_from_the_simulated_fleet_within_30_seconds(tmp_path):
    err = (tmp_path / "stderr.log").open("wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "flows.detect"],
        cwd=ROOT, env=_clean_env(), stdout=subprocess.PIPE, stderr=err,
    )
    alerts: list[Alert] = []
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() - t0 < 30 and len(alerts) < 3:
            if sel.select(timeout=0.5):
                line = proc.stdout.readline()
                if not line:
                    break
                alerts.append(msgspec.json.decode(line, type=Alert))
        elapsed = time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    log = (tmp_path / "stderr.log").read_text()
    assert alerts, f"no alert within 30 s; stderr:\n{log[-2000:]}"
    assert elapsed < 30
    assert all(a.sensor_id.startswith("sim-") for a in alerts)
    assert "mode=embedded" in log and "VIGIL_BROKERS" in log


def test_embedded_run_with_a_reading_limit_ends_by_itself():
    out = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows.detect"],
        cwd=ROOT, env=_clean_env(VIGIL_SIM_LIMIT="20000", VIGIL_SIM_SPEED="1000000"),
        capture_output=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    for line in out.stdout.splitlines():
        msgspec.json.decode(line, type=Alert)


def test_invalid_settings_stop_the_flow_with_every_problem_named():
    out = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows.detect"],
        cwd=ROOT, env=_clean_env(VIGIL_WINDOW_LENGTH="-5m", VIGIL_BROKERS="nohost"),
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "VIGIL_WINDOW_LENGTH must be positive, got -5m" in out.stderr
    assert "VIGIL_BROKERS='nohost'" in out.stderr
    assert "Traceback" not in out.stderr


def test_piping_the_embedded_flow_into_head_stops_it_quietly():
    """`python -m bytewax.run flows.detect | head -n 1`: once head has its line and exits,
    the flow stops with status 0 and a one-line note, not a Bytewax panic and backtrace."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "flows.detect"],
        cwd=ROOT, env=_clean_env(VIGIL_SIM_SPEED="100000"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        first = proc.stdout.readline()
        proc.stdout.close()  # what head does after its line
        err = proc.stderr.read().decode()
        status = proc.wait(timeout=60)
    finally:
        proc.kill()
    msgspec.json.decode(first, type=Alert)
    assert status == 0, err[-2000:]
    assert "stdout was closed by its reader; stopping" in err
    assert "panicked" not in err and "Traceback" not in err
