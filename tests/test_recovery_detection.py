"""The flow builds recovery snapshots only when Bytewax has somewhere to keep them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from integration import ROOT

from flows.detect import recovery_configured


def _probe(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    out = tmp_path / "probe.txt"
    run = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "recovery_probe", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tests"), "PROBE_OUT": str(out),
             **(env or {})},
    )
    assert run.returncode == 0, run.stderr
    return out.read_text()


def test_bytewax_run_without_a_recovery_directory_turns_snapshots_off(tmp_path) -> None:
    assert _probe(tmp_path) == "False"
    assert _probe(tmp_path, "-w", "1", "-s", "5") == "False"


def test_a_recovery_directory_from_the_flag_or_the_environment_keeps_them_on(tmp_path) -> None:
    store = tmp_path / "recovery"
    store.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(store), "1"], check=True)
    assert _probe(tmp_path, "-r", str(store), "-s", "5", "-b", "0") == "True"
    env = {"BYTEWAX_RECOVERY_DIRECTORY": str(store), "BYTEWAX_SNAPSHOT_INTERVAL": "5",
           "BYTEWAX_RECOVERY_BACKUP_INTERVAL": "0"}
    assert _probe(tmp_path, env=env) == "True"


def test_any_other_runner_keeps_snapshots_on() -> None:
    assert recovery_configured() is True  # pytest is __main__ here, not bytewax.run
