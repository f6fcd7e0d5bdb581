"""The LSTM autoencoder as a Vigil Detector, with hot reload from the model registry.

Contract
--------
* Per sensor it keeps a ring of the last ``seq_len`` windows' raw features (float32, in the
  model's feature order). A window is pushed into its sensor's ring, and once the ring is full
  the sequence ending at that window is scored: the reconstruction error of the newest window
  (so a score never uses later data). Until then the verdict is ``warming_up``.
* Inference is batched across every sensor whose window closed in the batch (one
  onnxruntime call per ``batch_size`` sequences), which is where ONNX is cheap.
* The model does not learn online; "learning" is only the ring moving on.
* Hot reload: at most every ``reload_every_s`` seconds it reads the registry's ``ACTIVE``
  pointer. A new version is loaded and checked before it replaces the old one; if it fails,
  the previously active version (the registry's activation history) scores instead, or the
  model already loaded if that is it, and the reason is logged (once per failing version). Sensors'
  rings survive a switch when the new model has the same features; otherwise they restart
  their warm-up (logged). Every verdict carries the version that produced it (``version``).
* ``snapshot()``/``restore()``: the rings and the version they were built for.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from detectors.base import Verdict, sensor_rounds
from detectors.lstm_ae import LstmAutoencoder
from detectors.registry import ModelRegistry, RegistryError
from flows.schemas import Contributor
from flows.windows import ClosedWindow

log = logging.getLogger("vigil.detectors.autoencoder")


class _Ring:
    __slots__ = ("count", "pos", "rows")

    def __init__(self, seq_len: int, n_features: int) -> None:
        self.rows = np.zeros((seq_len, n_features), dtype=np.float32)
        self.count = 0
        self.pos = 0

    def push(self, row: np.ndarray) -> None:
        self.rows[self.pos] = row
        self.pos = (self.pos + 1) % len(self.rows)
        self.count += 1

    def sequence(self) -> np.ndarray:
        """Oldest window first."""
        return np.roll(self.rows, -self.pos, axis=0)


class AutoencoderDetector:
    """Scores windows with the registry's active LSTM-AE version."""

    name = "lstm_ae"

    def __init__(
        self,
        registry: ModelRegistry | str | Path,
        reload_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
        self.reload_every_s = reload_every_s
        self._clock = clock
        self.model = LstmAutoencoder.from_registry(self.registry)
        self._checked_at = clock()
        self._failed: str | None = None  # last version that failed to load
        self._rings: dict[str, _Ring] = {}
        self._metric_of = self._metrics_for(self.model)

    @property
    def version(self) -> str:
        """Version of the model now scoring."""
        return self.model.version

    @property
    def threshold(self) -> float:
        """Reconstruction error at which a window is anomalous (from training)."""
        return self.model.threshold

    # -- hot reload --------------------------------------------------------------------------
    def maybe_reload(self, force: bool = False) -> bool:
        """Switch to a newly activated version; True if the model changed."""
        now = self._clock()
        if not force and now - self._checked_at < self.reload_every_s:
            return False
        self._checked_at = now
        try:
            active = self.registry.active_version()
        except (OSError, RegistryError) as exc:
            log.error("cannot read the model registry %s: %s", self.registry.root, exc)
            return False
        if active is None or active == self.model.version or active == self._failed:
            return False
        try:
            model = LstmAutoencoder(self.registry.check(active))
        except Exception as exc:  # a broken model must never stop scoring
            self._failed = active
            model = self._fallback(active)
            if model is None:
                log.error(
                    "model %s could not be loaded, still scoring with %s: %s",
                    active, self.model.version, exc,
                )
                return False
            log.error(
                "model %s could not be loaded, falling back to the previously active %s: %s",
                active, model.version, exc,
            )
        old = self.model
        self.model, self._failed = model, None
        self._metric_of = self._metrics_for(model)
        if model.feature_names != old.feature_names or model.seq_len != old.seq_len:
            self._rings.clear()
            log.warning(
                "model %s has other features or sequence length than %s: sensors warm up again",
                model.version, old.version,
            )
        log.info("switched model %s -> %s", old.version, model.version)
        return True

    def _fallback(self, failed: str) -> LstmAutoencoder | None:
        """The last good version activated before ``failed``, if this shard still runs an
        older one (it saw no window between the two activations); None to keep the model."""
        try:
            previous = self.registry.previous_active()
            if previous is None or previous.version in (failed, self.model.version):
                return None
            return LstmAutoencoder(self.registry.check(previous.version))
        except Exception:  # the previous one is broken too: keep what scores now
            return None

    @staticmethod
    def _metrics_for(model: LstmAutoencoder) -> np.ndarray:
        return np.array([n.rsplit(".", 1)[0] for n in model.feature_names])

    # -- scoring -----------------------------------------------------------------------------
    def score_and_learn(self, batch: list[tuple[str, ClosedWindow]]) -> list[Verdict]:
        """Push each window into its sensor's ring and score the full sequences in batches."""
        self.maybe_reload()
        model = self.model
        verdicts: list[Verdict | None] = [None] * len(batch)
        f = len(model.feature_names)
        for indices in sensor_rounds(batch):
            ready: list[int] = []
            sequences: list[np.ndarray] = []
            for i in indices:
                sid, window = batch[i]
                ring = self._rings.get(sid)
                if ring is None:
                    ring = self._rings[sid] = _Ring(model.seq_len, f)
                ring.push(model.vectorize(window.features))
                if ring.count >= model.seq_len:
                    ready.append(i)
                    sequences.append(ring.sequence())
                else:
                    verdicts[i] = Verdict(0.0, False, [], warming_up=True)
            if not ready:
                continue
            scores, errors = model.score_batch(np.stack(sequences))
            for row, i in enumerate(ready):
                score = float(scores[row])
                if not np.isfinite(score):  # a feature is missing from the window
                    verdicts[i] = Verdict(0.0, False, [], warming_up=True)
                    continue
                verdicts[i] = Verdict(
                    score, score >= model.threshold, self._contributors(errors[row])
                )
        return verdicts  # type: ignore[return-value]

    def _contributors(self, errors: np.ndarray) -> list[Contributor]:
        """The metrics with the largest reconstruction error of any of their features."""
        best: dict[str, float] = {}
        for metric, err in zip(self._metric_of.tolist(), errors.tolist(), strict=True):
            if err > best.get(metric, -1.0):
                best[metric] = err
        top = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        return [Contributor(m, round(v, 4)) for m, v in top]

    # -- recovery ----------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Rings plus the model version and features they were built for."""
        rings = {s: (r.rows, r.count, r.pos) for s, r in self._rings.items()}
        return pickle.dumps(
            (self.model.version, tuple(self.model.feature_names), self.model.seq_len, rings),
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    def restore(self, state: bytes) -> None:
        """Load rings; dropped (sensors warm up again) if the model's features changed."""
        version, names, seq_len, rings = pickle.loads(state)
        self._rings = {}
        if list(names) != self.model.feature_names or seq_len != self.model.seq_len:
            log.warning(
                "recovered state was built for model %s with other features: warming up again",
                version,
            )
            return
        for sid, (rows, count, pos) in rings.items():
            ring = _Ring(seq_len, len(names))
            ring.rows, ring.count, ring.pos = rows.copy(), count, pos
            self._rings[sid] = ring

    def forget(self, sensor_id: str) -> None:
        """Drop a sensor's ring."""
        self._rings.pop(sensor_id, None)
