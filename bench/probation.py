"""Train an LSTM-AE per file on its probationary rows only, for NAB-style evaluation.

NAB lets a detector learn from the first rows of each file (the probationary period, never
scored). ``bench.accuracy --train-lstm-on-probation`` uses them as an operator would use a
stream's own normal history: for every file, ``detectors.train`` (in this process, its own
window code) fits an LSTM-AE on exactly those rows into a temporary model registry, and the
file is then scored through the real flow with that model active beside the other detectors.

Why it is causal: the training file holds the first ``probation_length(n)`` rows and nothing
after them, and the window hop is that head's own median sampling interval (so the geometry
is known before the scored part begins); the flow gets the same hop and window length, which
is what makes it accept the model (``detectors.factory``). One recipe for every file.

Needs the ``train`` extra (torch); ``detectors.train`` is imported only when training runs.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

from bench.metrics import probation_length
from bench.score import ScoreOptions
from flows.replay import detect_format, load_frame
from flows.settings import Settings


@dataclass(frozen=True)
class ProbationTraining:
    """The one training recipe used for every file (``detectors.train`` options)."""

    epochs: int = 10
    hidden: int = 32
    seq_len: int = 30
    seed: int = 0
    holdout: float = 0.2
    threads: int = 1


@dataclass
class ProbationModel:
    """What training on one file's probationary rows produced, for the report."""

    registry: Path
    version: str
    hop: timedelta
    rows: int  # probationary rows trained on
    train_sequences: int
    holdout_sequences: int
    final_loss: float
    final_val_loss: float
    seconds: float


def head_csv(path: Path, rows: int, dest: Path) -> Path:
    """The header and first ``rows`` data lines of ``path`` as ``dest`` (same format, bytes)."""
    with path.open("rb") as src, dest.open("wb") as dst:
        for i, line in enumerate(src):
            if i > rows:
                break
            dst.write(line)
    return dest


def sampling_interval_ms(path: Path, tz: str = "UTC") -> int:
    """Median positive gap between successive timestamps (the rule ``bench.score`` applies)."""
    frame = load_frame(path, detect_format(path), tz)
    t = frame["ts"].drop_nulls().dt.epoch("ms").to_numpy()
    gaps = np.diff(t)
    gaps = gaps[gaps > 0]
    if gaps.size == 0:
        raise ValueError(f"{path}: fewer than two distinct timestamps in the probationary rows")
    return max(1, round(float(np.median(gaps))))


def train_on_probation(
    path: Path, n_rows: int, workdir: Path, recipe: ProbationTraining, window_rows: int,
    hop: timedelta | None = None, tz: str = "UTC",
) -> ProbationModel:
    """Fit and activate an LSTM-AE on the first ``probation_length(n_rows)`` rows of ``path``.

    ``hop`` defaults to the probationary rows' own sampling interval.
    """
    from detectors.train import TrainConfig, train

    started = time.perf_counter()
    prob = probation_length(n_rows)
    head = head_csv(path, prob, workdir / path.name)
    hop_ms = (round(hop.total_seconds() * 1000) if hop is not None
              else sampling_interval_ms(head, tz))
    registry = workdir / "registry"
    result = train(TrainConfig(
        inputs=[head], registry=registry, window_ms=hop_ms * window_rows, hop_ms=hop_ms,
        lateness_ms=0, seq_len=recipe.seq_len, hidden=recipe.hidden, epochs=recipe.epochs,
        seed=recipe.seed, holdout=recipe.holdout, threads=recipe.threads, tz=tz,
        activate=True, progress=False,
    ))
    return ProbationModel(
        registry=registry, version=result.info.version, hop=timedelta(milliseconds=hop_ms),
        rows=prob, train_sequences=len(result.train_x),
        holdout_sequences=len(result.holdout_x), final_loss=result.fit.loss_curve[-1],
        final_val_loss=result.fit.val_loss_curve[-1],
        seconds=time.perf_counter() - started,
    )


def check_detectors(options: ScoreOptions, settings: Settings) -> None:
    """A model trained per file is wasted unless the flow runs lstm_ae."""
    names = [n.strip() for n in (options.detector or settings.detectors).split(",")]
    if "lstm_ae" not in names:
        raise ValueError("--train-lstm-on-probation needs lstm_ae among the detectors")


def with_model(
    options: ScoreOptions, settings: Settings, model: ProbationModel
) -> tuple[ScoreOptions, Settings]:
    """Score options and settings that make the flow use ``model`` (same hop, its registry)."""
    return (dataclasses.replace(options, hop=model.hop),
            dataclasses.replace(settings, model_registry=str(model.registry)))
