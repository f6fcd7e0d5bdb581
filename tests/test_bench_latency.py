"""bench.latency: outputs are matched to the reading that closed their window, end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from integration import ROOT

from bench.latency import latencies


def test_latency_counts_from_the_first_reading_past_window_end_plus_lateness() -> None:
    tick_ms = np.array([0, 10_000, 20_000, 30_000, 40_000], dtype=np.int64)
    sent = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, np.nan], [4.0, 4.0], [5.0, 5.0]])
    kind = np.array([0, 0, 1], dtype=np.int8)
    sensor = np.array([0, 1, 1])
    end_ms = np.array([10_000, 10_000, 0], dtype=np.int64)
    recv = np.array([3.05, 4.2, 2.5])
    lat, trig = latencies(kind, sensor, end_ms, recv, tick_ms, sent, lateness_ms=10_000)
    # sensor 0: e + L = 20 s -> tick 2 (sent 3.0); sensor 1 dropped out at tick 2 -> tick 3
    assert trig.tolist() == [2, 3, 1]
    assert lat == pytest.approx([50.0, 200.0, 500.0])


def test_an_output_of_an_unknown_sensor_or_past_the_last_tick_has_no_latency() -> None:
    tick_ms = np.array([0, 10_000], dtype=np.int64)
    sent = np.array([[1.0], [2.0]])
    lat, trig = latencies(np.array([0, 0], np.int8), np.array([-1, 0]),
                          np.array([0, 60_000], np.int64), np.array([5.0, 5.0]),
                          tick_ms, sent, lateness_ms=0)
    assert trig.tolist() == [-1, -1] and np.isnan(lat).all()


@pytest.mark.integration
def test_a_short_latency_run_reports_percentiles_per_rate(broker, tmp_path) -> None:
    out, png = tmp_path / "lat.json", tmp_path / "lat.png"
    run = subprocess.run(
        [sys.executable, "-m", "bench.latency", "--rates", "500", "2000", "--seconds", "3",
         "--sensors", "50", "--warmup-ticks", "60", "--detectors", "zscore", "--hop-seconds", "1",
         "--brokers", broker.bootstrap, "--json", str(out), "--plot", str(png)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert [s["rate"] for s in report["steps"]] == [500, 2000]
    for step in report["steps"]:
        assert step["scores"] > 0 and step["readings"] > 0
        for p in (step["score_ms"], step["hop_ms"]):  # the flow's, and one bare broker hop
            assert 0 < p["p50"] <= p["p95"] <= p["p99"] <= p["max"] < 10_000
    assert report["config"]["detectors"] == "zscore"
    assert png.stat().st_size > 10_000
    assert "| 500 |" in run.stdout and "highest rate that holds" in run.stdout


@pytest.mark.integration
def test_latency_can_be_measured_with_two_independent_instances(broker, tmp_path) -> None:
    """--instances 2: the readings topic gets two partitions keyed by sensor and two flows
    each score their share; both steps must see scores with sane percentiles."""
    out = tmp_path / "lat.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.latency", "--rates", "500", "--seconds", "3",
         "--sensors", "40", "--warmup-ticks", "60", "--detectors", "zscore", "--hop-seconds", "0",
         "--instances", "2", "--stagger", "10s", "--brokers", broker.bootstrap,
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert report["config"]["instances"] == 2
    assert report["config"]["window_stagger"] == "0:00:10"
    (step,) = report["steps"]
    assert step["scores"] > 0
    p = step["score_ms"]
    assert 0 < p["p50"] <= p["p99"] < 10_000
