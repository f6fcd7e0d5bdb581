"""The model that ships with Vigil, and the exact recipe that made it.

``DEFAULT_REGISTRY`` is a model registry folder inside the package holding one LSTM-AE version
trained on the simulator's anomaly-free data with the flow's default windows (5 m / 1 m,
lateness 1 m, 4 metrics), so the embedded default scores with a real model and no training
step. ``python -m detectors.defaults --rebuild DIR`` re-creates it (needs the ``train`` extra):
the simulator and training are seeded, so the same commands give the same model on the same
torch version and thread count.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_REGISTRY = Path(__file__).resolve().parent / "default_model"

SIMULATE = [
    "-m", "flows.simulator", "--sensors", "20", "--anomaly-rate", "0", "--seed", "7",
    "--interval", "10s", "--duration", "2d", "--quiet",
]
TRAIN = [
    "-m", "detectors.train", "--format", "vigil", "--window", "5m", "--hop", "1m",
    "--lateness", "1m", "--seq-len", "10", "--hidden", "16", "--epochs", "8", "--seed", "0",
    "--activate", "--no-progress",
]


def rebuild(registry: Path) -> None:
    """Simulate normal data and train the default model into ``registry``."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "sim_normal.parquet"
        subprocess.run([sys.executable, *SIMULATE, "--out", str(data)], check=True)
        subprocess.run(
            [sys.executable, *TRAIN, "--input", str(data), "--registry", str(registry)],
            check=True,
        )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(
        prog="python -m detectors.defaults",
        description="Show where the bundled default model lives, or rebuild it.",
    )
    p.add_argument("--rebuild", metavar="DIR", type=Path,
                   help="train the default model again into registry DIR (needs torch)")
    args = p.parse_args(argv)
    if args.rebuild:
        rebuild(args.rebuild)
    else:
        print(DEFAULT_REGISTRY)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
