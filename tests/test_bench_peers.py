"""bench.peers: the peer implementations compute the same windows from the same input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from integration import ROOT

from bench.peers import PEERS, command


def test_each_peer_runs_as_its_own_process_with_the_same_arguments() -> None:
    args = ["b:1", "in", "out", "10", "stats.json"]
    assert command("plain", args, None)[0][-5:] == args
    # the tuned plain loop: the same job with Vigil's one consumer setting as a sixth argument
    tuned = command("plain-tuned", args, None)[0]
    assert tuned[-6:] == [*args, "10"] and "bench.peers_impl.plain" in tuned
    assert command("quix", args, "/q/python")[0][:3] == ["/q/python", "-m",
                                                         "bench.peers_impl.quix"]
    argv, env = command("vigil", args, None)
    assert argv[-2:] == ["bytewax.run", "bench.peers_impl.vigil_stage"]
    assert env["PEER_ARGS"] == " ".join(args)
    assert set(PEERS) == {"plain", "plain-tuned", "quix", "bytewax", "vigil"}


@pytest.mark.integration
def test_plain_tuned_plain_bytewax_and_vigil_write_the_same_number_of_windows(
    broker, tmp_path
) -> None:
    out = tmp_path / "peers.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.peers", "--readings", "6000", "--sensors", "200",
         "--only", "plain", "plain-tuned", "bytewax", "vigil", "--brokers", broker.bootstrap,
         "--json", str(out), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    med = report["median"]
    assert set(med) == {"plain", "plain-tuned", "bytewax", "vigil"}
    windows = {peer: row["windows"] for peer, row in med.items()}
    # 6000 readings of 200 sensors every 10 s: 300 s of event time, 5 or 6 windows each
    assert len(set(windows.values())) == 1 and 5 * 200 <= windows["vigil"] <= 6 * 200
    assert all(row["readings_per_s"] > 0 for row in med.values())
    assert med["vigil"]["vigil_ratio"] == 1.0
    assert "| vigil |" in run.stdout
