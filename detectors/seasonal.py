"""Seasonal profile: each metric's newest value against its usual level at this time of day.

Contract (``detectors.base.Detector``)
--------------------------------------
* ``score_and_learn(batch)`` scores every ``(sensor_id, ClosedWindow)`` from the state before
  it, then learns it, and returns one ``Verdict`` per window in batch order.
* ``score`` is the largest, over the sensor's metrics, of
  ``z = |last − level[phase]| / (dev + floor)``: the metric's newest value (``last``), its
  learned level in the current phase bucket of the period, and its typical absolute residual.
  ``anomalous`` is ``score >= threshold``; ``contributors`` are the three metrics with the
  largest ``z`` (weight = that ``z``).
* ``warming_up`` (score 0) while the sensor has learned fewer than ``warmup`` windows, until
  its windows span a full period (the newest window ends at least ``period_s`` after the end
  of its first), and when none of its metrics has a level for the current phase yet.
* ``snapshot()``/``restore()`` round-trip everything.

Why this detector exists
------------------------
Half-Space Trees and the LSTM autoencoder judge a window against the *recent* past, so a
value that is normal at 3 p.m. but not at 3 a.m. (a daily load pattern that fails to drop at
night, a pattern that goes flat) looks ordinary to them. Here the period (default one day) is
cut into ``buckets`` phases (default 48, 30 min each), and each metric keeps an EWMA level per
phase. A sensor without a daily cycle is not harmed: consecutive windows fall into the same
phase, so its level then tracks the recent past like a short EWMA forecast, and the score
becomes a one-step prediction error.

**No opinion before a full period.** What is usual at this time of day is unknown until the
sensor has been seen for a day: before that each phase's level is its first value (or a few
windows of it), so the detector would only be a short-term forecaster duplicating what HST
already judges. Measured: on SKAB (runs of about 20 minutes at 1 Hz, never a full day) that
duplicate cost the default flow F1 0.78 -> 0.74 (leaderboard protocol); on the 13 NAB files
the score is unchanged (44.4 alone), because NAB's unscored probationary period (15 % of a
file) already covers the first day of every file but the shortest.

Choices, measured on the 13 labeled NAB files (docs/accuracy.md; one configuration for all,
calibrated with ``detectors.calibration.Calibrator`` k = 1, NAB-style standard profile):

* **The newest value, not the window mean**: averaging a 10-row window hides a spike (window
  mean: 17.5, mean of 3 rows: 27.5, newest value: 41.8).
* ``alpha`` (level rate per visit of a phase) 0.2 and ``dev_rate`` 0.01 per window: the middle
  of a 3 × 3 × 3 grid over alpha {0.1, 0.2, 0.4}, buckets {24, 48, 96} and dev rate
  {0.003, 0.01, 0.03}, which scored 30-47 (a weekly period with 336 buckets: 29.0). Not the
  grid's best (47.2): the spread says the exact values are noise, the structure is not.
* **No hold**: clipping residuals at 5 deviations before learning (so an incident teaches the
  level less) scored lower in 13 of 27 grid points and higher in 14; left out for simplicity.

State: per sensor ``buckets × metrics`` float32 levels plus a float64 deviation per metric, a
counter and its first window's end: 808 bytes for 4 metrics at 48 buckets, independent of how
long it has run. Sensors
with the same metrics are rows of one set of tables (``detectors._rows``), so a round of
windows is scored and learned with a few numpy calls.
"""

from __future__ import annotations

import pickle

import numpy as np

from detectors._rows import FeatureSets, TableSpec
from detectors.base import BatchScoring, Verdicts, by_feature_set, gather, last_values, rounded
from flows.windows import ClosedWindow

DEFAULT_THRESHOLD = 6.0
_SNAPSHOT_VERSION = 3  # 1: one (keys, level, dev, count) entry per sensor; 2: no "first"
_NO_FIRST = np.iinfo(np.int64).min  # "first" of a sensor row that has not scored a window


class SeasonalProfile(BatchScoring):
    """Per-sensor phase-of-period EWMA levels; scores the newest value's deviation."""

    name = "seasonal"
    version = "seasonal-1"

    def __init__(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        *,
        period_s: float = 86_400.0,
        buckets: int = 48,
        alpha: float = 0.2,
        dev_rate: float = 0.01,
        warmup: int = 30,
        rel_floor: float = 1e-6,
    ) -> None:
        if period_s <= 0 or buckets < 1:
            raise ValueError("need period_s > 0 and buckets >= 1")
        if not (0.0 < alpha <= 1.0 and 0.0 < dev_rate <= 1.0):
            raise ValueError("alpha and dev_rate must lie in (0, 1]")
        if warmup < 1:
            raise ValueError("warmup must be at least 1")
        self.threshold = threshold
        self.period_ms = round(period_s * 1000)
        self.buckets = buckets
        self.alpha = alpha
        self.dev_rate = dev_rate
        self.warmup = warmup
        self.rel_floor = rel_floor
        # one table per feature set ("<metric>.last" keys, sorted), and each sensor's set
        self._sets = FeatureSets(self._spec, last_values)

    def _spec(self, keys: tuple[str, ...]) -> TableSpec:
        """Per sensor: float32 level per phase and metric, deviation per metric, a counter,
        and the end of its first window (for the full-period warm-up)."""
        return {
            "level": ((self.buckets, len(keys)), np.float32, np.nan),
            "dev": ((len(keys),), np.float64, np.nan),
            "count": ((), np.int64, 0),
            "first": ((), np.int64, _NO_FIRST),
        }

    def phase(self, end_ms: int) -> int:
        """Phase bucket of the window's newest pane (the pane ends at ``end_ms``)."""
        return int(((end_ms - 1) % self.period_ms) * self.buckets // self.period_ms)

    def score_batch(self, batch: list[tuple[str, ClosedWindow]]) -> Verdicts:
        """Score then learn each window; windows of one sensor are taken in order."""
        out = Verdicts(len(batch))
        for keys, members in by_feature_set(batch, self._sets.keys_of):
            self._score_group(keys, members, batch, out)
        return out

    def _score_group(
        self, keys: tuple[str, ...], members: list[int],
        batch: list[tuple[str, ClosedWindow]], out: Verdicts,
    ) -> None:
        if not keys:  # nothing to judge: warming up
            return
        table = self._sets.table(keys)
        rows = table.rows([batch[i][0] for i in members])
        x = gather(batch, members, keys)
        end = np.fromiter((batch[i][1].end_ms for i in members), np.int64, len(members))
        phase = ((end - 1) % self.period_ms) * self.buckets // self.period_ms
        level = table["level"][rows, phase].astype(np.float64)
        dev = table["dev"][rows]
        count = table["count"][rows]
        first = table["first"][rows]
        first = np.where(first == _NO_FIRST, end, first)
        table["first"][rows] = first
        resid = x - level  # NaN where the value is missing or the phase has no level yet
        known = np.isfinite(resid)
        scale = np.where(np.isnan(dev), np.abs(resid), dev)
        scale = scale + self.rel_floor * np.abs(np.nan_to_num(level)) + 1e-12
        z = np.where(known, np.abs(np.nan_to_num(resid)) / scale, 0.0)
        young = end - first < self.period_ms  # has not been seen for a full period yet
        warming_at = (count < self.warmup) | young | ~known.any(axis=1)
        if not warming_at.all():  # else every sensor's first period (a new fleet's first day)
            score = z.max(axis=1)
            metrics = [k[: -len(".last")] for k in keys]
            out.set(members, score, score >= self.threshold, warming_at, metrics, z,
                    rounded(z, 3))
        # learn: the deviation from residuals where known, the level where the value is
        absr = np.abs(resid)  # NaN where not known; those rows keep their deviation
        first = np.isnan(dev)  # the metric's first residual sets its deviation
        new_dev = np.where(known, np.where(first, absr, dev + self.dev_rate * (absr - dev)), dev)
        has_x = np.isfinite(x)
        new_level = np.where(known, level + self.alpha * np.nan_to_num(resid), level)
        new_level = np.where(has_x & ~known, x, new_level)  # first visit of this phase
        table["level"][rows, phase] = new_level
        table["dev"][rows] = new_dev
        table["count"][rows] += 1

    def state_bytes(self, sensor_id: str) -> int:
        """Payload bytes of one sensor: levels, deviations, the counter and the first end."""
        keys = self._sets.keys[sensor_id]
        return self.buckets * len(keys) * 4 + len(keys) * 8 + 16

    def snapshot(self) -> bytes:
        """Each feature set's table rows (numpy arrays pickle as raw bytes)."""
        params = (self.period_ms, self.buckets)
        groups = self._sets.snapshot()
        return pickle.dumps(
            (_SNAPSHOT_VERSION, params, groups), protocol=pickle.HIGHEST_PROTOCOL
        )

    def restore(self, state: bytes) -> None:
        """Load ``snapshot()``; refuses one taken with another period or bucket count."""
        version, params, groups = pickle.loads(state)
        if version not in (1, 2, _SNAPSHOT_VERSION):
            raise ValueError(f"seasonal snapshot version {version} is not supported")
        if tuple(params) != (self.period_ms, self.buckets):
            raise ValueError(
                f"snapshot has period {params[0]} ms / {params[1]} buckets, this detector "
                f"{self.period_ms} ms / {self.buckets}"
            )
        if version == 1:  # {sensor id: (keys, level, dev, count)}
            by_keys: dict[tuple[str, ...], list[str]] = {}
            for sid, entry in groups.items():
                by_keys.setdefault(tuple(entry[0]), []).append(sid)
            groups = [
                (keys, ids, {
                    "level": np.array([groups[s][1] for s in ids], np.float32)
                    .reshape(len(ids), self.buckets, len(keys)),
                    "dev": np.array([groups[s][2] for s in ids], np.float64)
                    .reshape(len(ids), len(keys)),
                    "count": np.array([groups[s][3] for s in ids], np.int64),
                })
                for keys, ids in by_keys.items()
            ]
        if version < 3:  # those sensors were already scoring: count a full period as seen
            for _, ids, tables in groups:
                tables["first"] = np.full(len(ids), -self.period_ms, np.int64)
        self._sets.restore(groups)

    def forget(self, sensor_id: str) -> None:
        """Drop a sensor's profile."""
        self._sets.forget(sensor_id)
