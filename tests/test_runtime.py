"""Process tuning of the flow (``flows.runtime``): memory freed is kept for reuse."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Allocates, fills and frees a 256 MiB block twice; prints the page faults of the second
# round. Reused memory faults nothing; a fresh mapping faults once per page (65,536 pages of
# 4 KiB, or 128 huge pages where transparent huge pages are always on).
_FAULTS = """
import resource
{setup}
def cycle():
    x = b"\\1" * (256 << 20)
    del x
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _second_round_faults(setup: str, **env: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS.format(setup=setup)],
        env={"PATH": "/usr/bin:/bin", "VIGIL_METRICS_PORT": "0", "VIGIL_LOG_LEVEL": "WARNING",
             **env},
        capture_output=True, text=True, timeout=120, check=True, cwd=ROOT,
    ).stdout.split()
    return int(out[-1])


glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="keep_freed_memory tunes glibc's malloc",
)


@glibc
def test_keep_freed_memory_lets_a_large_block_reuse_pages_already_mapped():
    kept = _second_round_faults("from flows.runtime import keep_freed_memory\n"
                                "assert keep_freed_memory()")
    default = _second_round_faults("")
    assert kept < 16
    assert default >= 100  # glibc's default maps big blocks anew: what snapshots paid


# Runs the real flow on a few readings, with a recovery store (it snapshots) or without.
_RUN_FLOW = """
import dataclasses, pathlib, sys, tempfile
sys.path.insert(0, "tests")
from flowkit import FAST, encode_all, init_recovery, run_flow, synthetic_readings, to_batches
store = init_recovery(pathlib.Path(tempfile.mkdtemp()) / "store") if {recovery} else None
run_flow(to_batches(encode_all(synthetic_readings(sensors=2, seconds=60))),
         settings=dataclasses.replace(FAST, keep_freed_memory={keep}), recovery_dir=store)
"""


@glibc
@pytest.mark.parametrize(("recovery", "keep", "kept"), [
    (True, True, True),
    (True, False, False),   # VIGIL_KEEP_FREED_MEMORY=false
])
def test_the_flow_keeps_freed_memory_once_it_snapshots_unless_told_not_to(recovery, keep, kept):
    faults = _second_round_faults(_RUN_FLOW.format(recovery=recovery, keep=keep))
    assert (faults < 16) == kept, faults


@glibc
@pytest.mark.parametrize(("snapshots", "kept"), [(True, True), (False, False)])
def test_memory_is_kept_from_the_first_snapshot_on_not_from_start(snapshots, kept):
    """Restores (at start) run with glibc's defaults, so their ~2.5x-the-state peak goes back;
    a flow that never snapshots (no recovery store) never changes malloc."""
    setup = (
        "import flows.detect as d\n"
        "from flows.settings import Settings\n"
        "from flows.stages import FeatureStage\n"
        "stage = d._WindowedFeatures(FeatureStage(Settings().window_spec()),\n"
        f"                            snapshots={snapshots}, keep_memory=True)\n"
        "assert stage.snapshot() is not None\n"
    )
    assert (_second_round_faults("import flows.detect") < 16) is False  # not at start
    assert (_second_round_faults(setup) < 16) == kept
