"""Offline training of the LSTM autoencoder, exported to ONNX and registered for serving.

``python -m detectors.train --input FILE... --registry DIR [--activate]``; run with ``--help``.
Needs the ``train`` extra (torch, onnx). This is the only module that imports torch; serving
(``detectors.lstm_ae``) uses onnxruntime only.

Contract
--------
* Features come from ``flows.offline.compute_features``, the flow's own window code, with one
  ``WindowSpec`` (``--window/--hop/--lateness``). Windows that only the end-of-input flush
  would emit (their end is past the last watermark) are dropped: a live flow never scores
  them. Model columns are ``model_feature_names(metrics)`` (every flow feature except
  ``count``), in that order, recorded in the metadata.
* Each file's sensors are separate series. Per series the windows are split
  chronologically: the first ``1 - holdout`` go to training, the rest are held-out normal
  data, and no sequence crosses the split (so held-out windows are never trained on). A
  sequence is ``seq_len`` consecutive emitted windows, sliding by one; sequences touching a
  window with a missing feature are dropped.
* The z-score scaler (std floored at 1e-6) is fitted on the training windows only.
* Training is deterministic for a given seed, data and thread count: seeded init and
  shuffling, ``torch.use_deterministic_algorithms``, one intra-op thread by default.
* The exported ONNX model must reproduce torch within 1e-5 on held-out data or training
  fails (``OnnxMismatchError``). The threshold is the ``--threshold-quantile`` quantile of
  held-out scores computed by the serving code itself (onnxruntime, ``LstmAutoencoder``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

try:
    import torch
    from torch import nn
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
    raise ModuleNotFoundError(
        "detectors.train needs the 'train' extra (torch, onnx): pip install -e '.[train]'"
    ) from exc

from detectors.lstm_ae import LstmAutoencoder, build_sequences, model_feature_names, zscore
from detectors.registry import (
    METADATA_FILE,
    MODEL_FILE,
    ModelInfo,
    ModelMetadata,
    ModelRegistry,
    RegistryError,
    Scaler,
    TrainingFile,
    TrainingInfo,
    ValidationStats,
    encode_metadata,
    sha256_file,
)
from flows.cli import positive_int
from flows.offline import compute_features
from flows.replay import FORMATS, ReplayError, default_sensor_id, detect_format, load_frame
from flows.settings import parse_duration
from flows.windows import WindowSpec

INPUT_NAME = "windows"
OUTPUT_NAME = "reconstruction"
ONNX_OPSET = 17
ONNX_ATOL = 1e-5
STD_FLOOR = 1e-6


class TrainError(ValueError):
    """The inputs or options cannot produce a model; the message says what to change."""


class OnnxMismatchError(RuntimeError):
    """The exported ONNX model does not reproduce the torch model."""


# --- data -------------------------------------------------------------------------------------


@dataclass
class Series:
    """One sensor of one file: its emitted windows as raw model features, oldest first."""

    source: Path
    sensor_id: str
    windows: np.ndarray  # [n, F] float64, NaN where a window lacks a feature


@dataclass
class Dataset:
    """Raw (unscaled) sequences ready for training, and where they came from."""

    metrics: list[str]
    feature_names: list[str]
    spec: WindowSpec
    seq_len: int
    files: list[TrainingFile]
    series: list[Series]
    train_windows: np.ndarray  # [n, F] all training windows, for the scaler
    train_raw: np.ndarray  # [N, T, F]
    holdout_raw: np.ndarray  # [M, T, F]
    dropped_sequences: int = 0  # sequences left out because a window lacked a feature


def _metric_columns(frame: pl.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("ts", "sensor_id")]


def load_series(
    paths: Sequence[str | Path],
    spec: WindowSpec,
    fmt: str = "auto",
    metrics: Sequence[str] | None = None,
    tz: str = "UTC",
) -> tuple[list[str], list[TrainingFile], list[Series]]:
    """Read each file, compute the flow's window features, and return per-sensor series.

    ``metrics`` defaults to the metric columns of the first file; every file must have them.
    """
    files: list[TrainingFile] = []
    series: list[Series] = []
    chosen: list[str] | None = list(metrics) if metrics else None
    for raw_path in paths:
        path = Path(raw_path)
        resolved = detect_format(path) if fmt == "auto" else fmt
        frame = load_frame(path, resolved, tz)  # type: ignore[arg-type]
        if chosen is None:
            chosen = _metric_columns(frame)
        missing = [m for m in chosen if m not in frame.columns]
        if missing:
            raise TrainError(f"{path}: no metric column(s) {missing}; has {_metric_columns(frame)}")
        if "sensor_id" not in frame.columns:
            sid = default_sensor_id(path, resolved) or path.stem  # type: ignore[arg-type]
            frame = frame.with_columns(pl.lit(sid, dtype=pl.String).alias("sensor_id"))
        files.append(TrainingFile(str(path.resolve()), sha256_file(path), frame.height))
        frame = frame.filter(pl.col("ts").is_not_null() & pl.col("sensor_id").is_not_null())
        feats = compute_features(frame, spec, chosen)
        # A live flow emits a window once the watermark (newest ts - lateness) reaches its
        # end; windows past the last watermark exist only because the file ended.
        wm = frame.group_by("sensor_id").agg(
            ((pl.col("ts").dt.epoch("ms").max() - spec.lateness_ms) // spec.hop_ms * spec.hop_ms)
            .alias("_close_ms")
        )
        feats = feats.join(wm, on="sensor_id", how="left").filter(
            pl.col("end").dt.epoch("ms") <= pl.col("_close_ms")
        )
        names = model_feature_names(chosen)
        for (sid,), part in feats.group_by("sensor_id", maintain_order=True):
            x = part.sort("end").select(names).to_numpy().astype(np.float64)
            series.append(Series(path, str(sid), x))
    if chosen is None:
        raise TrainError("no input files")
    return chosen, files, series


def _valid_sequences(windows: np.ndarray, seq_len: int) -> tuple[np.ndarray, int]:
    """Sequences of ``windows`` with no missing value, and how many were dropped."""
    seqs = build_sequences(windows, seq_len)
    ok = np.isfinite(seqs).all(axis=(1, 2))
    return seqs[ok], int((~ok).sum())


def build_dataset(
    paths: Sequence[str | Path],
    spec: WindowSpec,
    seq_len: int,
    holdout: float,
    fmt: str = "auto",
    metrics: Sequence[str] | None = None,
    tz: str = "UTC",
) -> Dataset:
    """Features, chronological split and raw sequences (see the module contract)."""
    if seq_len < 1:
        raise TrainError("--seq-len must be at least 1")
    if not 0 < holdout < 1:
        raise TrainError("--holdout must be between 0 and 1 (exclusive)")
    chosen, files, series = load_series(paths, spec, fmt, metrics, tz)
    names = model_feature_names(chosen)
    f = len(names)
    train_w: list[np.ndarray] = []
    train_s: list[np.ndarray] = []
    hold_s: list[np.ndarray] = []
    dropped = 0
    for s in series:
        n = len(s.windows)
        cut = n - round(holdout * n)
        head, tail = s.windows[:cut], s.windows[cut:]
        train_w.append(head)
        for part, out in ((head, train_s), (tail, hold_s)):
            seqs, bad = _valid_sequences(part, seq_len)
            dropped += bad
            out.append(seqs)
    empty = np.empty((0, seq_len, f))
    train_raw = np.concatenate(train_s) if train_s else empty
    holdout_raw = np.concatenate(hold_s) if hold_s else empty
    total = sum(len(s.windows) for s in series)
    if len(train_raw) == 0 or len(holdout_raw) == 0:
        raise TrainError(
            f"{total} windows give {len(train_raw)} training and {len(holdout_raw)} held-out "
            f"sequences of {seq_len}; use more data, a shorter --seq-len or another --holdout"
        )
    return Dataset(
        metrics=chosen,
        feature_names=names,
        spec=spec,
        seq_len=seq_len,
        files=files,
        series=series,
        train_windows=np.concatenate(train_w),
        train_raw=train_raw,
        holdout_raw=holdout_raw,
        dropped_sequences=dropped,
    )


def fit_scaler(windows: np.ndarray) -> Scaler:
    """Per-feature mean and population std of the training windows (NaN-aware, floored)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns handled below
        mean = np.nanmean(windows, axis=0)
        std = np.nanstd(windows, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > STD_FLOOR), std, STD_FLOOR)
    return Scaler(mean=[float(v) for v in mean], std=[float(v) for v in std])


# --- model ------------------------------------------------------------------------------------


class LstmAE(nn.Module):
    """Encoder LSTM → last hidden state repeated ``seq_len`` times → decoder LSTM → Linear.

    The bottleneck is one hidden vector per sequence, so the model must summarise normal
    dynamics to reconstruct them; unusual windows reconstruct badly.
    """

    def __init__(self, n_features: int, hidden: int, seq_len: int) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.encoder = nn.LSTM(n_features, hidden, batch_first=True)
        self.decoder = nn.LSTM(hidden, hidden, batch_first=True)
        self.output = nn.Linear(hidden, n_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, F]`` scaled windows → their reconstruction, same shape."""
        _, (h, _) = self.encoder(x)
        z = h[-1].unsqueeze(1).repeat(1, self.seq_len, 1)
        y, _ = self.decoder(z)
        return self.output(y)


@contextlib.contextmanager
def deterministic(seed: int, threads: int = 1) -> Iterator[None]:
    """Seed torch, force deterministic kernels and a fixed thread count; restore afterwards."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)


@dataclass
class FitResult:
    """A trained torch model and its per-epoch losses (scaled units)."""

    model: LstmAE
    loss_curve: list[float]
    val_loss_curve: list[float]
    seconds: float


def _mean_loss(model: LstmAE, x: torch.Tensor, batch: int = 1024) -> float:
    total = 0.0
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            chunk = x[lo : lo + batch]
            total += float(nn.functional.mse_loss(model(chunk), chunk, reduction="sum"))
    return total / max(x.numel(), 1)


def fit(
    train_x: np.ndarray,
    holdout_x: np.ndarray,
    hidden: int = 32,
    epochs: int = 10,
    seed: int = 0,
    lr: float = 1e-3,
    batch_size: int = 64,
    threads: int = 1,
    progress: bool = True,
) -> FitResult:
    """Train an ``LstmAE`` on scaled ``[N, T, F]`` float32 sequences with MSE and Adam."""
    if epochs < 1 or hidden < 1 or batch_size < 1:
        raise TrainError("epochs, hidden and batch size must be at least 1")
    started = time.perf_counter()
    n, t, f = train_x.shape
    with deterministic(seed, threads):
        model = LstmAE(f, hidden, t)
        xt = torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32))
        xh = torch.from_numpy(np.ascontiguousarray(holdout_x, dtype=np.float32))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(xt),
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        losses: list[float] = []
        val_losses: list[float] = []
        bar = tqdm(range(epochs), desc="epochs", unit="epoch", disable=not progress,
                   file=sys.stderr)
        for _ in bar:
            model.train()
            total = 0.0
            for (batch,) in loader:
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(batch), batch)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                total += loss.item() * len(batch)
            losses.append(total / n)
            model.eval()
            val_losses.append(_mean_loss(model, xh))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", val=f"{val_losses[-1]:.4f}")
        model.eval()
    return FitResult(model, losses, val_losses, time.perf_counter() - started)


def last_step_errors(model: LstmAE, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Squared error per feature of the last time step, ``[N, F]``, from torch (scaled x)."""
    out = []
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            chunk = torch.from_numpy(np.ascontiguousarray(x[lo : lo + batch], dtype=np.float32))
            d = model(chunk)[:, -1, :] - chunk[:, -1, :]
            out.append((d * d).double().numpy())
    return np.concatenate(out) if out else np.empty((0, x.shape[2]))


def export_onnx(model: LstmAE, path: str | Path, n_features: int) -> None:
    """Export with a dynamic batch axis (TorchScript exporter: no onnxscript needed)."""
    model.eval()
    sample = torch.zeros(1, model.seq_len, n_features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation, LSTM batch notice
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def verify_onnx(model: LstmAE, path: str | Path, x: np.ndarray, atol: float = ONNX_ATOL) -> float:
    """Max |torch - onnxruntime| on ``x`` at batch 1 and in full; OnnxMismatchError above atol."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(x, dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    (got,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x})
    worst = float(np.max(np.abs(got - expected))) if x.size else 0.0
    for i in range(min(len(x), 4)):  # batch size 1 too: the batch axis must really be dynamic
        (one,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + 1]})
        worst = max(worst, float(np.max(np.abs(one - expected[i : i + 1]))))
    if not worst <= atol:
        raise OnnxMismatchError(
            f"ONNX output differs from torch by {worst:.3g} (> {atol:g}) on held-out data"
        )
    return worst


# --- the whole run ----------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Every option of a training run (the CLI's flags)."""

    inputs: list[Path]
    registry: Path
    fmt: str = "auto"
    window_ms: int = 10_000
    hop_ms: int = 1_000
    lateness_ms: int = 0
    seq_len: int = 30
    hidden: int = 32
    epochs: int = 10
    seed: int = 0
    lr: float = 1e-3
    batch_size: int = 64
    holdout: float = 0.2
    threshold_quantile: float = 0.995
    metrics: list[str] | None = None
    activate: bool = False
    threads: int = 1
    tz: str = "UTC"
    progress: bool = True


@dataclass
class TrainResult:
    """What a run produced: the registered version plus the arrays tests and reports need."""

    info: ModelInfo
    fit: FitResult
    dataset: Dataset
    train_x: np.ndarray  # scaled [N, T, F] float32
    holdout_x: np.ndarray  # scaled [M, T, F] float32
    holdout_scores: np.ndarray  # [M], as served
    onnx_max_diff: float
    seconds: float
    activated: bool = False
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable report of the run."""
        m = self.info.metadata
        v = m.validation
        lines = [
            f"version:      {self.info.version}{' (activated)' if self.activated else ''}",
            f"registry:     {self.info.path.parent}",
            f"features:     {m.n_features} ({', '.join(m.feature_names[:4])}, ...)",
            f"windows:      {m.window_length_ms} ms every {m.window_hop_ms} ms, "
            f"seq_len {m.seq_len}",
            f"sequences:    {len(self.train_x)} train / {len(self.holdout_x)} held-out"
            + (f" ({self.dataset.dropped_sequences} dropped: missing features)"
               if self.dataset.dropped_sequences else ""),
            f"final loss:   {m.training.loss_curve[-1]:.5f} train / "
            f"{m.training.val_loss_curve[-1]:.5f} held-out (MSE, scaled units)",
            f"threshold:    {m.threshold:.5f} (q={m.threshold_quantile} of held-out scores)",
            f"held-out:     mean {v.mean:.5f}  p50 {v.p50:.5f}  p99 {v.p99:.5f}  max {v.max:.5f}",
            f"onnx check:   max |torch - ort| = {self.onnx_max_diff:.2g}",
            f"time:         {self.fit.seconds:.1f}s training, {self.seconds:.1f}s total",
        ]
        return "\n".join(lines + self.notes)


def train(cfg: TrainConfig) -> TrainResult:
    """Run the whole pipeline of the module contract and register (optionally activate)."""
    started = time.perf_counter()
    if not 0 < cfg.threshold_quantile <= 1:
        raise TrainError("--threshold-quantile must be in (0, 1]")
    spec = WindowSpec(cfg.window_ms, cfg.hop_ms, cfg.lateness_ms)
    data = build_dataset(
        cfg.inputs, spec, cfg.seq_len, cfg.holdout, cfg.fmt, cfg.metrics, cfg.tz
    )
    scaler = fit_scaler(data.train_windows)
    mean, std = np.asarray(scaler.mean), np.asarray(scaler.std)
    train_x = zscore(data.train_raw, mean, std)
    holdout_x = zscore(data.holdout_raw, mean, std)
    fitted = fit(
        train_x, holdout_x, cfg.hidden, cfg.epochs, cfg.seed, cfg.lr, cfg.batch_size,
        cfg.threads, cfg.progress,
    )
    n_features = len(data.feature_names)
    registry = ModelRegistry(cfg.registry)
    with tempfile.TemporaryDirectory(prefix="vigil-train-") as tmp:
        staging = Path(tmp)
        export_onnx(fitted.model, staging / MODEL_FILE, n_features)
        worst = verify_onnx(fitted.model, staging / MODEL_FILE, holdout_x)
        meta = ModelMetadata(
            version="staging",
            kind="lstm_ae",
            created_at=datetime.now(UTC),
            feature_names=data.feature_names,
            metrics=data.metrics,
            window_length_ms=spec.length_ms,
            window_hop_ms=spec.hop_ms,
            window_lateness_ms=spec.lateness_ms,
            seq_len=cfg.seq_len,
            scaler=scaler,
            threshold=0.0,
            threshold_quantile=cfg.threshold_quantile,
            training_data=data.files,
            training=TrainingInfo(
                epochs=cfg.epochs,
                seed=cfg.seed,
                hidden_size=cfg.hidden,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                loss_curve=fitted.loss_curve,
                val_loss_curve=fitted.val_loss_curve,
                train_sequences=len(train_x),
                holdout_sequences=len(holdout_x),
                holdout_fraction=cfg.holdout,
                seconds=round(fitted.seconds, 3),
                torch_version=str(torch.__version__),
            ),
            validation=ValidationStats(n=0, mean=0.0, p50=0.0, p99=0.0, max=0.0),
            onnx_opset=ONNX_OPSET,
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            input_shape=[-1, cfg.seq_len, n_features],
        )
        # Score the held-out data with the serving code so the threshold means what it will
        # mean online.
        draft = ModelInfo("staging", staging, meta)
        scorer = LstmAutoencoder(draft)
        scores, errors = scorer.score_batch(data.holdout_raw)
        meta.threshold = float(np.quantile(scores, cfg.threshold_quantile))
        meta.validation = ValidationStats(
            n=len(scores),
            mean=float(scores.mean()),
            p50=float(np.quantile(scores, 0.5)),
            p99=float(np.quantile(scores, 0.99)),
            max=float(scores.max()),
            per_feature_mean=[float(v) for v in errors.mean(axis=0)],
        )
        if not math.isfinite(meta.threshold):
            raise TrainError("held-out scores are not finite; the model diverged")
        (staging / METADATA_FILE).write_bytes(encode_metadata(meta))
        info = registry.add(staging)
    if cfg.activate:
        info = registry.activate(info.version)
    return TrainResult(
        info=info,
        fit=fitted,
        dataset=data,
        train_x=train_x,
        holdout_x=holdout_x,
        holdout_scores=scores,
        onnx_max_diff=worst,
        seconds=time.perf_counter() - started,
        activated=cfg.activate,
    )


# --- command line -----------------------------------------------------------------------------


def _duration_ms(text: str) -> int:
    try:
        ms = parse_duration(text).total_seconds() * 1000
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return round(ms)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m detectors.train`` argument parser."""
    ap = argparse.ArgumentParser(
        prog="python -m detectors.train",
        description="Train an LSTM autoencoder on normal sensor data (SKAB, NAB or Vigil "
        "CSV/Parquet), export it to ONNX, and register it as a new model version.",
    )
    ap.add_argument("--input", nargs="+", required=True, type=Path, metavar="FILE",
                    help="training files (normal operation only)")
    ap.add_argument("--registry", required=True, type=Path, metavar="DIR",
                    help="model registry folder (created if missing)")
    ap.add_argument("--format", choices=("auto", *FORMATS), default="auto",
                    help="input format (default: detect from the header)")
    ap.add_argument("--window", type=_duration_ms, default=10_000, metavar="DUR",
                    help="window length, e.g. 10s (default 10s)")
    ap.add_argument("--hop", type=_duration_ms, default=1_000, metavar="DUR",
                    help="window hop, e.g. 1s (default 1s)")
    ap.add_argument("--lateness", type=_duration_ms, default=0, metavar="DUR",
                    help="allowed lateness, as in the flow (default 0s)")
    ap.add_argument("--seq-len", type=positive_int, default=30,
                    help="windows per sequence (default 30)")
    ap.add_argument("--hidden", type=positive_int, default=32,
                    help="LSTM hidden size (default 32)")
    ap.add_argument("--epochs", type=positive_int, default=10, help="epochs (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    ap.add_argument("--batch-size", type=positive_int, default=64,
                    help="training batch size (default 64)")
    ap.add_argument("--holdout", type=float, default=0.2,
                    help="last fraction of each series held out (default 0.2)")
    ap.add_argument("--threshold-quantile", type=float, default=0.995,
                    help="threshold = this quantile of held-out scores (default 0.995)")
    ap.add_argument("--metrics", type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
                    help="comma-separated metric columns (default: all of the first file)")
    ap.add_argument("--tz", default="UTC", help="time zone of naive timestamps (default UTC)")
    ap.add_argument("--threads", type=positive_int, default=1,
                    help="torch threads; results are reproducible per thread count (default 1)")
    ap.add_argument("--activate", action="store_true", help="make the new version active")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Train and register; exit 0, 2 on bad input, 1 on export/registry failure."""
    args = build_parser().parse_args(argv)
    cfg = TrainConfig(
        inputs=list(args.input),
        registry=args.registry,
        fmt=args.format,
        window_ms=args.window,
        hop_ms=args.hop,
        lateness_ms=args.lateness,
        seq_len=args.seq_len,
        hidden=args.hidden,
        epochs=args.epochs,
        seed=args.seed,
        lr=args.lr,
        batch_size=args.batch_size,
        holdout=args.holdout,
        threshold_quantile=args.threshold_quantile,
        metrics=args.metrics,
        activate=args.activate,
        threads=args.threads,
        tz=args.tz,
        progress=not args.no_progress,
    )
    try:
        result = train(cfg)
    except (TrainError, ReplayError, OSError, pl.exceptions.PolarsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # WindowSpec geometry
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OnnxMismatchError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result.summary(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
