"""bench.pipeline: the flow's own CPU per reading, stage by stage, without broker or Bytewax."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from integration import ROOT

from bench.pipeline import STEPS, run_once, simulated_records, simulated_split, warm_state
from flows.settings import Settings


def test_every_window_the_pipeline_closes_is_scored_and_every_step_is_timed() -> None:
    records = simulated_records(sensors=30, metrics=4, minutes=20)
    assert 0.8 * 30 * 20 * 6 < len(records) <= 30 * 20 * 6  # the simulator drops a few
    run = run_once(records, Settings(), batch=500)
    assert run["windows"] > 30 * 10 and run["scores"] == run["windows"]
    assert run["dead"] == 0
    assert all(run[step] > 0 for step in STEPS)


def test_a_warm_start_judges_the_windows_a_fresh_one_only_learns_from_and_repeats_exactly(
) -> None:
    settings = Settings()
    early, later = simulated_split(sensors=12, metrics=4, first_minutes=60, minutes=15)
    assert early + later == simulated_records(12, 4, 75)  # one fleet, cut after an hour
    assert len(early) > 3 * len(later)
    warm = warm_state(early, settings, 500)
    fresh = run_once(later, settings, batch=500)
    first = run_once(later, settings, batch=500, warm=warm)
    again = run_once(later, settings, batch=500, warm=warm)  # the warm state is not consumed
    assert fresh["judged"] == 0 < first["judged"] == again["judged"]
    assert first["windows"] == again["windows"] == first["scores"] > 12 * 10
    assert first["alerts"] == again["alerts"]


def test_the_cli_prints_a_row_and_writes_json_and_refuses_nonsense(tmp_path) -> None:
    out = tmp_path / "p.json"
    ok = subprocess.run(
        [sys.executable, "-m", "bench.pipeline", "--sensors", "20", "--minutes", "12",
         "--warmup-minutes", "40", "--repeat", "1", "--detectors", "zscore,hst",
         "--no-progress", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    row = json.loads(out.read_text())
    assert row["readings"] <= 20 * 12 * 6 and row["scores"] == row["windows"] > 0
    assert row["total_us"] == pytest.approx(sum(row[f"{s}_us"] for s in STEPS), rel=0.05)
    assert "| decode µs |" in ok.stdout and "after a 40-minute warm-up" in ok.stdout
    assert row["warmup_minutes"] == 40 and 0 < row["judged"] <= row["windows"]
    bad = subprocess.run(
        [sys.executable, "-m", "bench.pipeline", "--repeat", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2 and "must be positive" in bad.stderr
    early = subprocess.run(
        [sys.executable, "-m", "bench.pipeline", "--warmup-minutes", "-1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert early.returncode == 2 and "--warmup-minutes must be 0 or more" in early.stderr
