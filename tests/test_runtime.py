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


@glibc
def test_the_flow_keeps_freed_memory_unless_told_not_to():
    """Importing flows.detect (what bytewax.run does) applies VIGIL_KEEP_FREED_MEMORY."""
    assert _second_round_faults("import flows.detect") < 16
    assert _second_round_faults("import flows.detect", VIGIL_KEEP_FREED_MEMORY="false") >= 100
