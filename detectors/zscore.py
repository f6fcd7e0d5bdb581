"""Robust z-score: the placeholder detector, and a baseline the real models must beat.

For each metric of a sensor it compares the window's ``mean`` and ``std`` with that sensor's
own recent history of windows: ``z = |x - median| / (1.4826 · MAD)``. The window score is the
largest z; the metrics behind the largest z values are the contributors. A sensor must have
``warmup`` windows of history before it can be anomalous. History is a fixed-size ring per
sensor (``history`` windows × features, float64).

A batch is scored with a handful of numpy calls, not one per window: windows are grouped by
feature set and stacked, and a sensor with several windows in one batch is handled in
successive rounds so each window is still scored against the history *before* it.
"""

from __future__ import annotations

import pickle

import numpy as np

from detectors.base import Verdict, sensor_rounds
from flows.schemas import Contributor
from flows.windows import ClosedWindow

_STATS = ("mean", "std")
_MAD_TO_SIGMA = 1.4826


class _History:
    __slots__ = ("count", "keys", "pos", "ring")

    def __init__(self, keys: tuple[str, ...], size: int) -> None:
        self.keys = keys
        self.ring = np.full((size, len(keys)), np.nan)
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
        self._metric_index: dict[tuple[str, ...], tuple[list[str], np.ndarray]] = {}

    def score_and_learn(self, batch: list[tuple[str, ClosedWindow]]) -> list[Verdict]:
        """Score then learn each window; windows of one sensor are taken in order."""
        verdicts: list[Verdict | None] = [None] * len(batch)
        for indices in sensor_rounds(batch):
            groups: dict[tuple[str, ...], list[tuple[int, _History, np.ndarray]]] = {}
            for i in indices:
                sid, window = batch[i]
                h = self._history(sid, window)
                x = np.array([window.features.get(k, np.nan) for k in h.keys])
                groups.setdefault(h.keys, []).append((i, h, x))
            for keys, members in groups.items():
                self._score_group(keys, members, verdicts)
        return verdicts  # type: ignore[return-value]

    def _history(self, sid: str, window: ClosedWindow) -> _History:
        h = self._sensors.get(sid)
        if h is None:
            keys = tuple(sorted(k for k in window.features if k.rsplit(".", 1)[1] in _STATS))
            h = self._sensors[sid] = _History(keys, self.history)
        return h

    def _metrics(self, keys: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
        """Metric names and reduceat offsets for a (sorted) feature-key tuple."""
        got = self._metric_index.get(keys)
        if got is None:
            metrics: list[str] = []
            starts: list[int] = []
            for j, k in enumerate(keys):
                m = k.rsplit(".", 1)[0]
                if not metrics or metrics[-1] != m:
                    metrics.append(m)
                    starts.append(j)
            got = self._metric_index[keys] = (metrics, np.array(starts))
        return got

    def _score_group(
        self, keys: tuple[str, ...], members: list[tuple[int, _History, np.ndarray]],
        verdicts: list[Verdict | None],
    ) -> None:
        x = np.stack([m[2] for m in members])  # (G, F)
        counts = np.array([min(m[1].count, self.history) for m in members])
        ready = counts >= self.warmup
        if ready.any():
            idx = np.flatnonzero(ready)
            past = np.stack([members[i][1].ring for i in idx])  # (R, H, F), NaN where unfilled
            med = np.nanmedian(past, axis=1)
            mad = np.nanmedian(np.abs(past - med[:, None, :]), axis=1) * _MAD_TO_SIGMA
            floor = 1e-3 * (np.abs(med) + np.nanstd(past, axis=1)) + 1e-9
            z = np.abs(x[idx] - med) / np.maximum(mad, floor)
            z = np.nan_to_num(z, nan=0.0)
            scores = z.max(axis=1)
            metrics, starts = self._metrics(keys)
            per_metric = np.maximum.reduceat(z, starts, axis=1)  # (R, M)
            order = np.argsort(-per_metric, axis=1, kind="stable")[:, :3]
            for row, i in enumerate(idx):
                top = [
                    Contributor(metrics[j], round(float(per_metric[row, j]), 3))
                    for j in order[row]
                ]
                score = float(scores[row])
                verdicts[members[i][0]] = Verdict(score, score >= self.threshold, top)
        for i, (pos, h, xi) in enumerate(members):
            if not ready[i]:
                verdicts[pos] = Verdict(0.0, False, [], warming_up=True)
            if not np.isnan(xi).any():
                h.ring[h.pos] = xi
                h.pos = (h.pos + 1) % self.history
                h.count += 1

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
            h = _History(tuple(keys), self.history)
            h.ring, h.count, h.pos = ring.copy(), count, pos
            self._sensors[sensor_id] = h

    def forget(self, sensor_id: str) -> None:
        """Drop a sensor's history."""
        self._sensors.pop(sensor_id, None)
