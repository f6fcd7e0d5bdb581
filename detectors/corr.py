"""Correlation structure of a sensor's metrics: Hotelling's T² of the window means.

Contract (``detectors.base.Detector``)
--------------------------------------
* ``score_and_learn(batch)`` scores every ``(sensor_id, ClosedWindow)`` from the state before
  it, then learns it, and returns one ``Verdict`` per window in batch order. A sensor's
  feature set (the ``<metric>.mean`` of every metric of its first window, sorted, at most
  ``max_metrics``) is fixed by its first window; a metric missing from a later window keeps
  its smoothed value; ``forget`` a sensor to start over.
* Each window's metric means ``x`` are first smoothed per sensor, ``m ← m + α(x − m)``
  (EWMA with a half-life of ``smooth_windows`` windows; 0 = none): a multivariate EWMA
  chart. ``score`` is Hotelling's T² of ``m`` against the sensor's learned mean ``μ`` and
  shrunk correlation matrix, divided by the number of metrics ``d`` (so about 1 for a
  typical window, whatever ``d``): ``z = (m − μ) / σ``, ``R`` the learned correlation
  matrix, ``score = zᵀ((1 − s)·R + s·I)⁻¹z / d``. ``anomalous`` is ``score >= threshold``.
  ``contributors`` are the three metrics with the largest share of T²:
  ``z_i·(((1 − s)R + sI)⁻¹z)_i / d`` (the shares add up to the score; a share can be
  negative, reported as 0). A metric that moved against its usual relation to the others
  carries most of the share, its partners that stayed put carry none.
* ``warming_up`` (score 0, never anomalous) while the sensor has learned fewer than
  ``warmup`` windows, and always for a sensor with fewer than two metrics: one metric has no
  correlation structure, and its level is what the other detectors already judge. So
  single-metric streams (NAB) are untouched by this detector (``Ensemble`` leaves a detector
  without an opinion out of the combination).
* ``snapshot()``/``restore()`` round-trip everything; a restored detector scores the next
  window exactly as the original would have.

Why this detector exists
------------------------
HST judges each metric's deviation on its own (one forest dimension per metric) and the
LSTM-AE reconstructs a sequence trained on one run; both miss *quiet* incidents in which no
metric leaves its range (SKAB's valve1/4, valve2/0, valve2/2: the flow rate sits slightly
low against pressure and current). T² weighs a deviation by the learned covariance, so a
small move against the usual correlation counts as much as a large move along it, and the
smoothing lets a small persistent shift stand out of the window-to-window noise. That is
the family of the published T²/PCA rows of SKAB's leaderboard (T²+Q 0.76 / 26.62 / 24.92,
T² alone 0.66 / 19.21 / 42.6), here online, causal and per sensor.

Choices (measured on SKAB's leaderboard protocol: offline replays of cached HST and LSTM-AE
raw scores plus this detector's through the real calibrator, Fisher combination and alert
policy, HST seeds 42/1/2/3; F1 / FAR %; docs/accuracy.md has the grid)
------------------------------------------------------------------------------------------
* **Learned from its own past, with a hold.** Mean and covariance are exponentially
  weighted with an event-time half-life (``half_life_s``, 20 min; at least
  ``min_half_life_windows`` windows), as a running mean (rate ``1/(n+1)``) until that falls
  below the EWMA rate. On SKAB's ~20-minute runs that is close to "the run so far";
  half-lives of 2 and 5 minutes let slow incidents into the baseline (measured on an earlier
  variant without smoothing and clipping, seed 42: F1 0.77-0.78 instead of 0.80). Warm-up
  60 windows (not tuned).
* **Windows it flags (``score >= threshold``) are learned at ``anomaly_weight`` (0.3) of
  the rate, and every learned residual is clipped at ``clip`` (3) deviations** (a Huber-type
  update, as HST's standardiser). Learning everything at the full rate lets one incident's
  residuals inflate the covariance, and the detector goes blind (AUC of its raw score on
  SKAB's test windows 0.59 instead of 0.81-0.82). Never learning flagged windows (a
  textbook T² chart) breaks the other way online: a sensor whose operating point drifts
  (other/1: temperature) or does not return exactly to its old point after an incident
  (other/7) stays "anomalous" for ever, 100 % of some files' rows alarm, and with HST and
  the LSTM-AE the FAR reached 23-42 %. The reduced weight bounds that, not fully: with the
  defaults other/1, whose temperature drifts through its first minutes, still alarms on its
  whole test part.
  Weight 0.1 / 0.3 / 1.0 (smoothing 10, alert 0.9995): FAR 23-26 / 13-14 / 8-10 %, F1
  0.80-0.81 / 0.80-0.81 / 0.76-0.78; clip 2 instead of 3: FAR 23-25 %; ``threshold`` 3
  instead of 5: FAR 16-17 %. These knobs move the false-alarm rate much more than F1.
* **Smoothing half-life 5 windows**, the middle of {3, 5, 7, 10} (alert 0.9995: F1
  0.796-0.802 / 0.803-0.807 / 0.799-0.804 / 0.800-0.808, FAR 12.7-14.1 / 11.9-13.4 /
  12.7-13.9 / 13.2-14.2 %); none: F1 0.78-0.79 at FAR 14.5-14.7 %; 20: FAR 19.5-21 %.
* **Shrinkage** ``s`` (0.2) towards the identity keeps ``R`` invertible with few windows or
  with metrics that never moved (a constant metric's ``σ`` is floored at ``rel_floor·|μ|``);
  it also caps how much a broken correlation can weigh (1/s).
* **Features**: the window mean of each metric. Per-row noise (SKAB's voltage and current
  vary by ±10 % from one row to the next) averages out over a window and the smoothing.
* With this detector as a third opinion, Fisher's combination needs a higher alert level:
  at 0.998 the FAR was 19.7-20.4 % (F1 0.79-0.80); 0.9993 / 0.9995 / 0.9997 gave F1 0.80 /
  0.803-0.807 / 0.788-0.796 at FAR 15.3-16.2 / 11.9-13.4 / 11.5-11.8 %
  (``VIGIL_ALERT_LIKELIHOOD`` is 0.9995 since). The level applies to every sensor: where
  ``corr`` has no opinion (one metric) HST + LSTM-AE at 0.9995 alert less (SKAB: F1
  0.67-0.68, FAR 4.7-6.5 %, against 0.77-0.78 at 0.998).

State and cost
--------------
Per sensor: ``d`` float32 smoothed means, ``d`` float32 learned means, the ``d(d+1)/2``
float32 upper triangle of the covariance, the windows learned and the last window's end
(two int64s): 88 bytes of payload for 4 metrics, 224 for 8. Sensors with the same metrics
are rows of one set of tables (``detectors._rows``), so a round of windows is scored and
learned with a few batched numpy calls (one batched ``solve`` of ``d × d`` systems).
Measured with ``python tests/test_corr.py`` (10,000 sensors, batches of 1,000 windows):
snapshot 102 bytes per sensor with 4 metrics (238 with 8), 5.2 µs per window (9.3 µs with
8 metrics) for scoring and learning, on a shared 2-core x86_64.
The detector adds two calibrators per sensor in the ensemble (held and surprise, 1.2 KiB
each at a 300-score history), which cost more state than the detector itself.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping

import numpy as np

from detectors._rows import FeatureSets, SensorRows, TableSpec
from detectors.base import BatchScoring, Verdicts, by_feature_set, gather, rounded
from flows.windows import ClosedWindow

DEFAULT_THRESHOLD = 5.0
_SNAPSHOT_VERSION = 1
_FEATURE = ".mean"


class CorrelationDetector(BatchScoring):
    """Per-sensor online mean and shrunk covariance of the metric means; scores T² / d."""

    name = "corr"
    version = "corr-1"

    def __init__(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        *,
        half_life_s: float = 1200.0,
        min_half_life_windows: float = 30.0,
        shrinkage: float = 0.2,
        anomaly_weight: float = 0.3,
        smooth_windows: float = 5.0,
        clip: float = 3.0,
        warmup: int = 60,
        rel_floor: float = 1e-3,
        max_metrics: int = 16,
    ) -> None:
        if threshold <= 0 or half_life_s <= 0 or min_half_life_windows <= 0:
            raise ValueError("threshold, half_life_s and min_half_life_windows must be positive")
        if not 0.0 < shrinkage <= 1.0:
            raise ValueError(f"shrinkage must lie in (0, 1], got {shrinkage}")
        if not 0.0 <= anomaly_weight <= 1.0:
            raise ValueError(f"anomaly_weight must lie in [0, 1], got {anomaly_weight}")
        if warmup < 2 or max_metrics < 2:
            raise ValueError("need warmup >= 2 and max_metrics >= 2")
        if smooth_windows < 0 or clip <= 0:
            raise ValueError("need smooth_windows >= 0 (0 = none) and clip > 0")
        self.threshold = threshold
        self.half_life_s = half_life_s
        self.min_half_life_windows = min_half_life_windows
        self._max_rate = 1.0 - 2.0 ** (-1.0 / min_half_life_windows)
        self.shrinkage = shrinkage
        self.anomaly_weight = anomaly_weight
        self.smooth_windows = smooth_windows
        self._alpha = 1.0 if smooth_windows == 0 else 1.0 - 2.0 ** (-1.0 / smooth_windows)
        self.clip = clip
        self.warmup = warmup
        self.rel_floor = rel_floor
        self.max_metrics = max_metrics
        self._sets = FeatureSets(self._spec, self._select)  # () for < 2 metrics: no table

    @staticmethod
    def _spec(keys: tuple[str, ...]) -> TableSpec:
        """Per sensor: float32 smoothed window means, their learned mean and packed
        upper-triangle covariance, and (windows learned, last window end)."""
        d = len(keys)
        return {
            "smooth": ((d,), np.float32, 0.0),
            "mean": ((d,), np.float32, 0.0),
            "cov": ((d * (d + 1) // 2,), np.float32, 0.0),
            "meta": ((2,), np.int64, 0),
        }

    def _select(self, features: Mapping[str, float]) -> tuple[str, ...]:
        found = sorted(k for k in features if k.endswith(_FEATURE))
        return tuple(found[: self.max_metrics]) if len(found) >= 2 else ()

    # -- scoring -----------------------------------------------------------------------------
    def score_batch(self, batch: list[tuple[str, ClosedWindow]]) -> Verdicts:
        """Score then learn each window; several windows of one sensor go in rounds."""
        out = Verdicts(len(batch))
        for keys, members in by_feature_set(batch, self._sets.keys_of):
            if keys:  # else nothing to judge: warming up
                self._score_group(keys, members, batch, out)
        return out

    def _score_group(
        self, keys: tuple[str, ...], members: list[int],
        batch: list[tuple[str, ClosedWindow]], out: Verdicts,
    ) -> None:
        d = len(keys)
        table = self._sets.table(keys)
        rows = table.rows([batch[i][0] for i in members])
        x = gather(batch, members, keys)
        span = np.array([(batch[i][1].start_ms, batch[i][1].end_ms) for i in members], np.int64)
        mean = table["mean"][rows].astype(np.float64)
        cov = _unpack(table["cov"][rows].astype(np.float64), d)
        meta = table["meta"][rows]
        n = meta[:, 0]
        first = (n == 0)[:, None]  # the first window defines every metric (its feature set)
        prev = table["smooth"][rows].astype(np.float64)
        x = np.where(np.isfinite(x), x, np.where(first, 0.0, prev))  # missing: keeps its level
        smooth = np.where(first, x, prev + self._alpha * (x - prev))
        table["smooth"][rows] = smooth.astype(np.float32)
        resid = smooth - mean
        ready = n >= self.warmup
        scores = np.zeros(len(members))
        share = np.zeros((len(members), d))
        step = resid.copy()  # what is learned: residuals clipped at `clip` deviations once warm
        if ready.any():
            r = np.flatnonzero(ready)
            var = np.diagonal(cov[r], axis1=1, axis2=2)
            sd = np.sqrt(np.maximum(var, (self.rel_floor * mean[r]) ** 2 + 1e-12))
            z = resid[r] / sd
            step[r] = np.clip(resid[r], -self.clip * sd, self.clip * sd)
            corr = cov[r] / (sd[:, :, None] * sd[:, None, :])
            s = self.shrinkage
            shrunk = (1.0 - s) * corr + s * np.eye(d)
            y = np.linalg.solve(shrunk, z[:, :, None])[:, :, 0]
            share[r] = z * y / d
            scores[r] = share[r].sum(axis=1)
        anomalous = ready & (scores >= self.threshold)
        self._learn(table, rows, span, mean, cov, n, step, anomalous)
        metrics = [k[: -len(_FEATURE)] for k in keys]
        # negative shares show as 0
        out.set(members, scores, anomalous, ~ready, metrics, share,
                rounded(np.maximum(share, 0.0), 3))

    def _learn(
        self, table: SensorRows, rows: np.ndarray, span: np.ndarray, mean: np.ndarray,
        cov: np.ndarray, n: np.ndarray, resid: np.ndarray, anomalous: np.ndarray,
    ) -> None:
        """Running mean, then event-time EWMA of mean and covariance of the (clipped)
        residuals; anomalies down-weighted."""
        end = span[:, 1]
        last = table["meta"][rows, 1]
        elapsed = np.clip(end - last, 0, end - span[:, 0])
        ewma = np.minimum(1.0 - np.exp2(-elapsed / (1000.0 * self.half_life_s)), self._max_rate)
        rate = np.maximum(1.0 / (n + 1.0), ewma)
        rate = np.where(anomalous, rate * self.anomaly_weight, rate)
        learned = rate > 0
        new_mean = mean + rate[:, None] * resid
        outer = resid[:, :, None] * resid[:, None, :]
        new_cov = (1.0 - rate)[:, None, None] * (cov + rate[:, None, None] * outer)
        table["mean"][rows] = new_mean.astype(np.float32)
        table["cov"][rows] = _pack(new_cov).astype(np.float32)
        table["meta"][rows, 0] = n + learned
        table["meta"][rows, 1] = end

    # -- state -------------------------------------------------------------------------------
    def state_bytes(self, sensor_id: str) -> int:
        """Payload bytes of one sensor: means, packed covariance and two counters."""
        d = len(self._sets.keys[sensor_id])
        return 0 if d == 0 else 8 * d + 4 * (d * (d + 1) // 2) + 16

    def snapshot(self) -> bytes:
        """Each feature set's table rows (numpy arrays pickle as raw bytes), and the sensors
        without an opinion (fewer than two metrics)."""
        groups = self._sets.snapshot()
        single = [sid for sid, keys in self._sets.keys.items() if not keys]
        return pickle.dumps(
            (_SNAPSHOT_VERSION, groups, single), protocol=pickle.HIGHEST_PROTOCOL
        )

    def restore(self, state: bytes) -> None:
        """Replace all learned state with a ``snapshot()``."""
        version, groups, single = pickle.loads(state)
        if version != _SNAPSHOT_VERSION:
            raise ValueError(f"corr snapshot version {version} is not supported")
        self._sets.restore(groups, dict.fromkeys(single, ()))

    def forget(self, sensor_id: str) -> None:
        """Drop a sensor's mean and covariance."""
        self._sets.forget(sensor_id)


_TRIU: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _triu(d: int) -> tuple[np.ndarray, np.ndarray]:
    idx = _TRIU.get(d)
    if idx is None:
        idx = _TRIU[d] = np.triu_indices(d)
    return idx


def _pack(cov: np.ndarray) -> np.ndarray:
    """(G, d, d) symmetric → (G, d(d+1)/2) upper triangle, row by row."""
    i, j = _triu(cov.shape[-1])
    return cov[:, i, j]


def _unpack(packed: np.ndarray, d: int) -> np.ndarray:
    """(G, d(d+1)/2) upper triangle → (G, d, d) symmetric."""
    i, j = _triu(d)
    out = np.empty((packed.shape[0], d, d))
    out[:, i, j] = packed
    out[:, j, i] = packed
    return out
