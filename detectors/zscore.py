"""Robust z-score: the placeholder detector, and a baseline the real models must beat.

For each metric of a sensor it compares the window's ``mean`` and ``std`` with that sensor's
own recent history of windows: ``z = |x - median| / (1.4826 · MAD)``. The window score is the
largest z; the metrics behind the largest z values are the contributors. A sensor must have
``warmup`` windows of history before it can be anomalous. History is a fixed-size ring per
sensor (``history`` windows × features, float64), so state stays a few KiB per sensor.
"""

from __future__ import annotations

import pickle

import numpy as np

from detectors.base import Verdict
from flows.schemas import Contributor
from flows.windows import ClosedWindow

_STATS = ("mean", "std")
_MAD_TO_SIGMA = 1.4826


class _History:
    __slots__ = ("count", "keys", "pos", "ring")

    def __init__(self, keys: list[str], size: int) -> None:
        self.keys = keys
        self.ring = np.zeros((size, len(keys)))
        self.count = 0
        self.pos = 0


class RobustZScore:
    """Per-sensor robust z-score over window means and standard deviations."""

    name = "zscore"
    version = "zscore-1"

    def __init__(self, threshold: float = 6.0, history: int = 60, warmup: int = 10) -> None:
        self.threshold = threshold
        self.history = history
        self.warmup = warmup
        self._sensors: dict[str, _History] = {}

    def score_and_learn(self, batch: list[tuple[str, ClosedWindow]]) -> list[Verdict]:
        """Score then learn each window in order."""
        return [self._one(sensor_id, window) for sensor_id, window in batch]

    def _one(self, sensor_id: str, window: ClosedWindow) -> Verdict:
        feats = window.features
        h = self._sensors.get(sensor_id)
        if h is None:
            keys = sorted(k for k in feats if k.rsplit(".", 1)[1] in _STATS)
            h = self._sensors[sensor_id] = _History(keys, self.history)
        # A metric missing from this window is scored as "no change" (its median).
        x = np.array([feats.get(k, np.nan) for k in h.keys])
        n = min(h.count, self.history)
        if n < self.warmup:
            verdict = Verdict(0.0, False, [], warming_up=True)
        else:
            past = h.ring[:n]
            med = np.median(past, axis=0)
            mad = np.median(np.abs(past - med), axis=0) * _MAD_TO_SIGMA
            floor = 1e-3 * (np.abs(med) + np.std(past, axis=0)) + 1e-9
            z = np.abs(x - med) / np.maximum(mad, floor)
            z = np.nan_to_num(z, nan=0.0)
            score = float(z.max())
            per_metric: dict[str, float] = {}
            for key, value in zip(h.keys, z.tolist(), strict=True):
                metric = key.rsplit(".", 1)[0]
                if value > per_metric.get(metric, -1.0):
                    per_metric[metric] = value
            top = sorted(per_metric.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            verdict = Verdict(
                score,
                score >= self.threshold,
                [Contributor(m, round(v, 3)) for m, v in top],
            )
        if not np.isnan(x).any():
            h.ring[h.pos] = x
            h.pos = (h.pos + 1) % self.history
            h.count += 1
        return verdict

    def snapshot(self) -> bytes:
        """Pickle of the per-sensor rings (numpy arrays pickle as raw bytes)."""
        return pickle.dumps(
            {s: (h.keys, h.ring, h.count, h.pos) for s, h in self._sensors.items()},
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    def restore(self, state: bytes) -> None:
        """Load rings from ``snapshot()``."""
        self._sensors = {}
        for sensor_id, (keys, ring, count, pos) in pickle.loads(state).items():
            h = _History(keys, self.history)
            h.ring, h.count, h.pos = ring.copy(), count, pos
            self._sensors[sensor_id] = h

    def forget(self, sensor_id: str) -> None:
        """Drop a sensor's history."""
        self._sensors.pop(sensor_id, None)
