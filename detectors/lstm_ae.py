"""LSTM-autoencoder scoring with onnxruntime: the serving half of ``detectors.train``.

Contract
--------
* Input: sequences ``[B, T, F]`` of *raw* window features (``T = metadata.seq_len``, the
  columns in ``metadata.feature_names`` order, the oldest window first). They are z-scored
  with the stored scaler here, exactly as in training.
* Output: ``scores[B]`` = mean over features of the squared reconstruction error of the
  **last** time step (the newest window, so a score never depends on later data), and
  ``per_feature_errors[B, F]``, the squared error per feature of that step, for contributors.
  Both are float64 and comparable to ``metadata.threshold``.
* A sequence holding a NaN or infinite value gets NaN score and errors and is not sent to the
  model (a window may lack a metric); the other rows are unaffected.
* No torch and no Bytewax: numpy, onnxruntime and the registry's metadata only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from detectors.registry import ModelInfo, ModelMetadata, ModelRegistry, RegistryError, load_session
from flows.windows import feature_names

DROPPED_FEATURES: tuple[str, ...] = ("count",)  # near-constant at a steady sampling rate


def model_feature_names(metrics: Iterable[str]) -> list[str]:
    """The model's input columns for ``metrics``: the flow's features minus ``count``."""
    return [n for n in feature_names(metrics) if n.rsplit(".", 1)[1] not in DROPPED_FEATURES]


def zscore(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` in float64, returned as the model's float32; shared with training."""
    return ((np.asarray(x, dtype=np.float64) - mean) / std).astype(np.float32)


def build_sequences(windows: np.ndarray, seq_len: int) -> np.ndarray:
    """All runs of ``seq_len`` consecutive rows of ``windows [N, F]``, sliding by one.

    Returns ``[N - seq_len + 1, seq_len, F]`` (empty when N < seq_len) as a new array.
    """
    if windows.ndim != 2:
        raise ValueError(f"windows must be [N, F], got shape {windows.shape}")
    n, f = windows.shape
    if n < seq_len:
        return np.empty((0, seq_len, f), dtype=windows.dtype)
    view = np.lib.stride_tricks.sliding_window_view(windows, seq_len, axis=0)
    return np.ascontiguousarray(view.transpose(0, 2, 1))


class LstmAutoencoder:
    """Scores sequences of windows with one registered LSTM-AE version."""

    def __init__(
        self,
        info: ModelInfo | None = None,
        *,
        session: ort.InferenceSession | None = None,
        metadata: ModelMetadata | None = None,
        batch_size: int = 256,
    ) -> None:
        if info is not None:
            metadata = info.metadata
            session = session or load_session(info)
        if session is None or metadata is None:
            raise ValueError("pass a ModelInfo, or both session and metadata")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.metadata = metadata
        self.session = session
        self.batch_size = batch_size
        self.version = metadata.version
        self.threshold = float(metadata.threshold)
        self.seq_len = metadata.seq_len
        self.feature_names: list[str] = list(metadata.feature_names)
        self.feature_keys: tuple[str, ...] = tuple(self.feature_names)
        self._index = {n: i for i, n in enumerate(self.feature_names)}
        self._mean = np.asarray(metadata.scaler.mean, dtype=np.float64)
        self._std = np.asarray(metadata.scaler.std, dtype=np.float64)
        self._input = metadata.input_name
        self._output = metadata.output_name

    @classmethod
    def from_registry(cls, registry: ModelRegistry, batch_size: int = 256) -> LstmAutoencoder:
        """The registry's active version; RegistryError if none is active."""
        info = registry.active()
        if info is None:
            raise RegistryError(f"{registry.root}: no active model version")
        return cls(info, batch_size=batch_size)

    def vectorize(self, features: Mapping[str, float]) -> np.ndarray:
        """One window's feature dict as a row in model order; missing features are NaN."""
        row = np.full(len(self.feature_names), np.nan)
        index = self._index
        for name, value in features.items():
            i = index.get(name)
            if i is not None:
                row[i] = value
        return row

    def scale(self, sequences: np.ndarray) -> np.ndarray:
        """Z-score raw features with the training scaler, as float32 for the model."""
        return zscore(sequences, self._mean, self._std)

    def reconstruct(self, scaled: np.ndarray) -> np.ndarray:
        """Model output for already-scaled ``[B, T, F]`` float32 input, in batches."""
        out = np.empty(scaled.shape, dtype=np.float32)
        for lo in range(0, scaled.shape[0], self.batch_size):
            chunk = scaled[lo : lo + self.batch_size]
            (out[lo : lo + len(chunk)],) = self.session.run(
                [self._output], {self._input: chunk}
            )
        return out

    def score_batch(self, sequences: np.ndarray | Sequence) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``[B]`` and per-feature squared errors ``[B, F]`` of the newest window."""
        x = np.asarray(sequences, dtype=np.float64)
        f = len(self.feature_names)
        if x.ndim != 3 or x.shape[1] != self.seq_len or x.shape[2] != f:
            raise ValueError(
                f"expected sequences of shape [B, {self.seq_len}, {f}], got {list(x.shape)}"
            )
        b = x.shape[0]
        errors = np.full((b, f), np.nan)
        ok = np.isfinite(x).all(axis=(1, 2))
        if ok.any():
            scaled = self.scale(x[ok])
            recon = self.reconstruct(scaled)
            diff = recon[:, -1, :].astype(np.float64) - scaled[:, -1, :].astype(np.float64)
            errors[ok] = diff * diff
        scores = errors.mean(axis=1)  # NaN rows stay NaN
        return scores, errors
