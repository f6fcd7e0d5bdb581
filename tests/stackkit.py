"""Running ``python -m bench.stack up`` from a test: start it, read its stack.json, stop it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from integration import ROOT, wait_for


def stack_env(**settings: str) -> dict[str, str]:
    """The test's environment minus VIGIL_*, plus ``settings`` as VIGIL_<NAME>."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update({f"VIGIL_{k.upper()}": v for k, v in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Stack:
    """A running stack: its process, what it wrote to stack.json, and (after) its output."""

    proc: subprocess.Popen[str]
    info: dict[str, Any] = field(default_factory=dict)
    output: str = ""


@contextmanager
def stack_up(state: Path, *flags: str, timeout: float = 60, **settings: str) -> Iterator[Stack]:
    """Start the stack on free ports with ``flags``; SIGTERM it on the way out.

    ``output`` holds everything it printed once the block is left.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.stack", "up", "--state-dir", str(state),
         "--broker-port", "0", "--api-port", "0", "--metrics-port", "0", *flags],
        cwd=ROOT, env=stack_env(**settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    stack = Stack(proc)
    info_file = state / "stack.json"
    try:
        assert wait_for(info_file.exists, timeout), proc.stdout.read() if proc.poll() else "slow"
        stack.info = json.loads(info_file.read_text())
        yield stack
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            stack.output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
