"""bench.pipeline: the flow's own CPU per reading, stage by stage, without broker or Bytewax."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from integration import ROOT

from bench.pipeline import STEPS, run_once, simulated_records
from flows.settings import Settings


def test_every_window_the_pipeline_closes_is_scored_and_every_step_is_timed() -> None:
    records = simulated_records(sensors=30, metrics=4, minutes=20)
    assert 0.8 * 30 * 20 * 6 < len(records) <= 30 * 20 * 6  # the simulator drops a few
    run = run_once(records, Settings(), batch=500)
    assert run["windows"] > 30 * 10 and run["scores"] == run["windows"]
    assert run["dead"] == 0
    assert all(run[step] > 0 for step in STEPS)


def test_the_cli_prints_a_row_and_writes_json_and_refuses_nonsense(tmp_path) -> None:
    out = tmp_path / "p.json"
    ok = subprocess.run(
        [sys.executable, "-m", "bench.pipeline", "--sensors", "20", "--minutes", "12",
         "--repeat", "1", "--detectors", "zscore,hst", "--no-progress", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    row = json.loads(out.read_text())
    assert row["readings"] <= 20 * 12 * 6 and row["scores"] == row["windows"] > 0
    assert row["total_us"] == pytest.approx(sum(row[f"{s}_us"] for s in STEPS), rel=0.05)
    assert "| decode µs |" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "bench.pipeline", "--repeat", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2 and "must be positive" in bad.stderr
