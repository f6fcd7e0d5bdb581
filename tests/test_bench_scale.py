"""bench.scale: one row per sensor count, from the throughput and state-size scripts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from integration import ROOT


@pytest.mark.integration
def test_scale_reports_throughput_state_and_snapshots_per_sensor_count(broker, tmp_path) -> None:
    out, png = tmp_path / "scale.json", tmp_path / "scale.png"
    run = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--sensors", "10", "1000",
         "--min-readings", "30000", "--minutes", "10", "--detectors", "zscore",
         "--brokers", broker.bootstrap, "--json", str(out), "--plot", str(png)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["sensors"] for r in rows] == [10, 1000]
    # enough readings that no run ends inside one metrics poll (0.1 s) of the bench
    assert rows[1]["readings"] == 1000 * 60 and rows[0]["readings"] == 30000
    for r in rows:
        assert r["readings_per_s"] > 0 and r["peak_rss_mib"] > 0 and r["scores"] > 0
        assert r["state_bytes_per_sensor"] > 0 and r["snapshot_mib"] > 0
    # more sensors, more snapshot
    assert rows[1]["snapshot_mib"] > rows[0]["snapshot_mib"]
    assert png.stat().st_size > 10_000
    assert "| 1,000 |" in run.stdout
