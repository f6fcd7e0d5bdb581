"""Per-sensor calibration of raw detector scores into tail probabilities in [0, 1].

Why: a raw score means different things for different detectors (a robust z of 7, a
Half-Space-Trees mass of 0.97) and for different sensors of one detector (a noisy pump
hovers at z≈4 all day, a quiet thermometer at z≈1). Thresholds and the combination of
several detectors only make sense on a common scale. This module puts every sensor's
scores on the scale "how unusual is this sensor's recent score, judged against its own
past scores", in the spirit of Numenta HTM's *anomaly likelihood* (Ahmad et al. 2017).

Method (per sensor, scores taken strictly in order)
---------------------------------------------------
* The sensor keeps its last ``history`` (N, default 300) raw scores in a ring of ``dtype``
  (float16: 3 significant digits, which rank as well as float32's 7, see below).
* For a new raw score ``x_t`` the *short-term mean* ``m_t`` is the mean of the newest
  ``short`` (k) raw scores, ``x_t`` included. HTM averages k = 10 per-record scores; here
  the default is k = 1 because each raw score already summarises a whole window (windows
  overlap by all but one hop), so averaging again only smears every false alarm over k more
  rows and delays every detection. (Measured on the 13 NAB files with the z-score detector:
  standard score 26 at k = 1, 19 at k = 3, 14 at k = 5; see docs/accuracy.md.)
* The *long-term distribution* is that of the k-moving-averages over the history (the N
  scores *before* ``x_t``; HTM does the same so correlated scores are compared fairly).
* The tail probability ``Q = P(M ≥ m_t)`` comes from that distribution without assuming a
  shape in its body and with a heavy tail beyond it:

  - up to the history's ``tail_quantile`` (q = 0.9) value ``u``: the empirical mid-rank,
    ``Q = (#{M > m} + ½·#{M = m} + ½) / (n + 1)`` (never exactly 0 or 1);
  - above ``u``: a generalised Pareto tail, ``Q = p_u · (1 + ξ·(m − u)/β)^(−1/ξ)`` with
    ``p_u`` the empirical share above ``u``, shape ``ξ = tail_shape`` (0.25) fixed and
    scale ``β = (1 − ξ)·mean(M − u | M > u)`` (its moment estimate), floored at
    ``1e-3·|u|`` (or 1e-12) so a constant history does not divide by zero.

  Why not a normal tail (HTM's choice): raw scores such as a robust z are heavy-tailed; a
  Gaussian fitted by mean/std puts one-in-a-million probabilities on scores this sensor
  produces every day, and saturates ``1 − Q`` to exactly 1.0 beyond z ≈ 8.3, so all big
  scores tie and cannot be ranked (NAB standard score 0.6 with the Gaussian vs 26 with this
  tail on the same raw scores). The Pareto tail decays polynomially, so ``1 − Q`` keeps
  ranking even very large scores.
* The calibrated value is the likelihood ``L = 1 − Q``. It is one-sided: scores *below* the
  sensor's usual level give L near 0, never an alarm. Everything above is invariant to
  scaling and shifting a sensor's raw scores (quantiles, excesses and the floor all scale):
  exactly with float32 histories, to float16's 3 significant digits with float16 ones.
* Only after scoring ``x_t`` is it added to the history (no look-ahead, and an anomaly is
  never judged against itself).

Choices, documented because callers depend on them
--------------------------------------------------
* ``update`` returns ``L`` itself, not HTM's log-scaled value: L is a probability that
  thresholds read naturally (0.5 = typical, 0.99 = one in a hundred) and that
  :func:`combine` can consume. :func:`log_likelihood` gives HTM's log scale for display;
  it is monotone, so rank-based evaluation (e.g. NAB's threshold sweep) is unaffected.
* Warm-up: until a sensor has ``warmup`` (default 30) scores in its history, ``update``
  returns ``warmup_value`` (default 0.0, "no evidence of an anomaly", so nothing can alert
  on a sensor the calibrator does not know yet; HTM uses 0.5 here). Entries marked
  ``warming`` (the detector itself still warming up) and non-finite raw scores also return
  ``warmup_value`` and are *not* learned, so a detector's placeholder zeros never enter the
  history as if they were normal scores.
* The history is not robust to contamination: a long anomaly in it raises ``u`` and ``β``
  and damps the next one for up to N scores, as in HTM.

State and cost
--------------
A calibrator holds ``width`` score columns per sensor (the ensemble: one per detector), each
with its own ring and counters, so one call ranks every detector's score of a round and the
sensor ids are looked up once. Per sensor and column: the ring (2·N bytes in float16: 600
bytes at N = 300; 1,200 in float32) plus two int64 counters (count, position) = 616 bytes of
payload, plus the sensor id and pickle framing (~50 bytes per sensor) in a snapshot. Ranking
a score costs two counting passes over its N history values (for k > 1, over the k-averages
taken around the ring as stored, never put in order), vectorised with numpy over every
(sensor, column) pair of a call; only a score that lands in its history's top decile also
pays for ordering, the quantile (a partition, a sort while the history fills) and the tail
fit, and a column still warming up costs nothing. Both shortcuts give the full path's
likelihoods bit for bit (tests/test_calibration.py).

Why float16 is enough: ranks only need the order of scores, and the Pareto tail only their
top decile's mean excess; 3 significant digits keep both, apart from more exact ties (which
the mid-rank splits). Measured through the flow: SKAB (leaderboard protocol) F1 / FAR / MAR
0.78 / 11.55 / 29.64 with float32 rings, 0.78 / 12.42 / 28.67 with float16 (F1 0.7803 vs
0.7836); NAB-style standard score 42.1 vs 42.6. Raw scores beyond float16's range (65,504)
are stored as 65,504.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from detectors._rows import SensorRows

__all__ = ["Calibrator", "combine", "log_likelihood"]

_SNAPSHOT_VERSION = 3  # 1: one (count, pos, ring bytes) entry per sensor; 2: one column
_REL_SCALE_FLOOR = 1e-3
_CHUNK_ELEMENTS = 1 << 21  # bounds the (rows, scores, history) temporaries to ~16 MiB


def log_likelihood(likelihood: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """HTM's display scale: ``log(1.0000000001 − L) / log(1e-10)``, in [0, 1].

    L = 0.5 maps to 0.03, 0.99 to 0.2, 0.99999 to 0.5 and 1 to 1: the interesting tail gets
    most of the range. Monotone in L, so it never changes which score is higher.
    """
    lik = np.clip(np.asarray(likelihood, dtype=float), 0.0, 1.0)
    return np.clip(np.log(1.0000000001 - lik) / math.log(1e-10), 0.0, 1.0)


def combine(
    probabilities: Sequence[npt.ArrayLike] | npt.ArrayLike,
    method: Literal["fisher", "tippett", "max"] = "fisher",
) -> npt.NDArray[np.float64]:
    """Combine several detectors' calibrated likelihoods of the same windows into one.

    ``probabilities`` holds one array per detector (shape ``(detectors, n)``, or a list of
    equally long arrays; a 1-D array is several detectors on one window). Methods:

    * ``"fisher"`` (default): treat ``p_i = 1 − L_i`` as independent p-values, form
      ``X = −2 Σ ln p_i`` (χ² with 2d degrees of freedom under "nothing unusual") and return
      ``1 − P(χ²_2d > X)``. Agreement adds up: two detectors both at 0.99 give 0.999, while
      one at 0.99 and one at 0.5 give 0.97 and two at 0.5 give 0.40. A single detector is
      returned unchanged. Independence is an optimistic assumption for correlated
      detectors.
    * NaN means "this detector has no opinion on this window yet" (still warming up): it is
      left out and the degrees of freedom shrink, so a warming detector neither dilutes nor
      boosts the others. A window with no opinion at all gets 0.
    * ``"tippett"``: the most confident detector, corrected for having looked at ``d`` of
      them (Tippett's minimum-p test with Šidák's correction): ``p = 1 − (1 − min p_i)^d``,
      i.e. ``L = (max L_i)^d``. Agreement adds nothing, so one detector that sees nothing
      cannot raise a window another detector flags, and a noisy detector raises the combined
      value only by its own rare windows (``d`` times as many as one detector has, not the
      many moderate ones Fisher adds up). The right test when a signal shows in one detector
      (detectors watching different failure modes) rather than weakly in all; a single
      detector is returned unchanged.
    * ``"max"``: the largest likelihood, uncorrected (same order as ``"tippett"`` when every
      window has the same detectors).
    """
    arr = np.asarray(probabilities, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError("probabilities must have shape (detectors, n) with at least one row")
    missing = np.isnan(arr)
    arr = np.clip(np.where(missing, 0.0, arr), 0.0, 1.0)
    d = (~missing).sum(axis=0)  # detectors with an opinion, per window
    if method == "max":
        return arr.max(axis=0)
    if method == "tippett":
        return np.where(d > 0, arr.max(axis=0) ** np.maximum(d, 1), 0.0)
    if method != "fisher":
        raise ValueError(f"unknown method {method!r}; use 'fisher', 'tippett' or 'max'")
    p = np.where(missing, 1.0, np.maximum(1.0 - arr, 1e-300))
    half = -np.log(p).sum(axis=0)  # X / 2
    # Survival of χ² with 2d dof at X: exp(−X/2) Σ_{j<d} (X/2)^j / j!, summed in log space.
    terms = np.stack([
        j * np.log(np.maximum(half, 1e-300)) - math.lgamma(j + 1) for j in range(arr.shape[0])
    ])
    terms[0] = 0.0  # (X/2)^0 / 0! = 1 even when X = 0
    terms = np.where(np.arange(arr.shape[0])[:, None] < np.maximum(d, 1)[None, :], terms, -np.inf)
    top = terms.max(axis=0)
    log_sf = -half + top + np.log(np.exp(terms - top).sum(axis=0))
    out = np.clip(1.0 - np.exp(np.minimum(log_sf, 0.0)), 0.0, 1.0)
    single = d == 1  # one opinion: return it exactly, not through exp/log round trips
    if single.any():
        out[single] = arr[:, single].max(axis=0)
    return out


def _moving_average(seq: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.float64]:
    """Means of ``k`` consecutive columns, equal bit for bit to ``mean`` over a sliding view.

    Below 8 terms numpy's mean adds the terms left to right and divides by ``k``; adding
    shifted slices does the same in a few whole-array passes, ~20× faster at k = 3.
    """
    if k == 1:
        return seq
    if k >= 8:  # numpy sums longer runs pairwise: keep its own reduction
        return sliding_window_view(seq, k, axis=1).mean(axis=-1)
    width = seq.shape[1] - k + 1
    total = seq[:, :width].copy()
    for j in range(1, k):
        total += seq[:, j : j + width]
    total /= k
    return total


def _around(
    rings: npt.NDArray[np.floating], start: npt.NDArray[np.int64], width: int
) -> npt.NDArray[np.floating]:
    """The first ``width`` values of each ring row read from slot ``start[i]`` on, wrapping
    around: a window over the row written twice (one gather, no index arithmetic per value)."""
    twice = np.concatenate([rings, rings], axis=1)
    return sliding_window_view(twice, width, axis=1)[np.arange(len(rings)), start]


class Calibrator:
    """Turns each sensor's raw detector scores into likelihoods in [0, 1] (module docstring)."""

    def __init__(
        self,
        history: int = 300,
        short: int = 1,
        warmup: int = 30,
        warmup_value: float = 0.0,
        tail_quantile: float = 0.9,
        tail_shape: float = 0.25,
        width: int = 1,
        dtype: str = "float16",
    ) -> None:
        if short < 1:
            raise ValueError("short must be at least 1")
        if history < short + 1:
            raise ValueError("history must exceed short (at least two moving averages)")
        if not short < warmup <= history:
            raise ValueError("warmup must be greater than short and at most history")
        if not 0.0 <= warmup_value <= 1.0:
            raise ValueError("warmup_value must lie in [0, 1]")
        if not 0.5 <= tail_quantile < 1.0 or not 0.0 <= tail_shape < 1.0:
            raise ValueError("tail_quantile must lie in [0.5, 1) and tail_shape in [0, 1)")
        self.history = history
        self.short = short
        self.warmup = warmup
        self.warmup_value = warmup_value
        self.tail_quantile = tail_quantile
        self.tail_shape = tail_shape
        if width < 1:
            raise ValueError("width must be at least 1")
        self.width = width
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float16, np.float32):
            raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
        self._finite_max = float(np.finfo(self.dtype).max)
        # per sensor and column: the ring of raw scores, scores ever learned, next slot to
        # write (the oldest score once the ring is full)
        self._rows = SensorRows({
            "ring": ((width, history), self.dtype, np.nan),
            "count": ((width,), np.int64, 0),
            "pos": ((width,), np.int64, 0),
        })

    def __len__(self) -> int:
        return len(self._rows)

    def update(
        self,
        sensor_ids: Sequence[str],
        raw: npt.ArrayLike,
        warming: npt.ArrayLike | None = None,
    ) -> npt.NDArray[np.float64]:
        """Likelihood of each raw score against its sensor's history, then learn it.

        Entries are taken in order: a sensor with several entries in one batch has each
        scored against a history that includes its earlier entries, exactly as if they had
        come one per call. ``warming`` marks entries whose detector had no opinion yet;
        they (and non-finite scores) get ``warmup_value`` and are not learned. One score
        column (``width`` 1).
        """
        self._one_column()
        x = np.asarray(raw, dtype=np.float64).reshape(-1)
        if len(sensor_ids) != x.size:
            raise ValueError(f"{len(sensor_ids)} sensor ids for {x.size} scores")
        skip = ~np.isfinite(x)
        if warming is not None:
            w = np.asarray(warming, dtype=bool).reshape(-1)
            if w.size != x.size:
                raise ValueError("warming must have one flag per score")
            skip |= w
        out = np.full(x.size, self.warmup_value, dtype=np.float64)
        x32 = self._stored(x)  # what the ring will hold; score with the same precision
        positions: dict[str, list[int]] = {}
        for i, sid in enumerate(sensor_ids):
            if not skip[i]:
                positions.setdefault(sid, []).append(i)
        by_length: dict[int, list[tuple[str, list[int]]]] = {}
        for sid, pos in positions.items():
            by_length.setdefault(len(pos), []).append((sid, pos))
        for t, members in by_length.items():
            step = max(1, _CHUNK_ELEMENTS // (self.history * t))
            for r0 in range(0, len(members), step):
                part = members[r0 : r0 + step]
                idx = np.array([p for _, p in part])  # (R, T)
                new = x32[idx]
                rows = self._rows.rows([sid for sid, _ in part])
                counts = self._rows["count"][rows, 0]
                out[idx] = self._score(self._histories(rows), counts, new)
                for j in range(t):
                    self._push(rows, new[:, j : j + 1])
        return out

    def score(
        self,
        sensor_ids: Sequence[str],
        raw: npt.ArrayLike,
        warming: npt.ArrayLike | None = None,
    ) -> npt.NDArray[np.float64]:
        """Likelihood of each raw score against its sensor's history, learning nothing.

        With :meth:`learn` this splits :meth:`update` in two, so a caller can decide from the
        likelihoods which scores to learn (the flow does not learn scores it alerted on, so a
        long incident does not become the sensor's normal). Each sensor may appear at most
        once per call. ``raw`` is one score per sensor (``width`` 1) or ``(sensors, width)``,
        one per column; ``warming`` has the same shape.
        """
        x = self._columns(raw, len(sensor_ids))
        if len(set(sensor_ids)) != len(sensor_ids):
            raise ValueError("score() takes each sensor at most once; use update() for runs")
        skip = ~np.isfinite(x)
        if warming is not None:
            skip |= np.asarray(warming, dtype=bool).reshape(x.shape)
        out = np.full(x.shape, self.warmup_value, dtype=np.float64)
        rows = self._rows.known(sensor_ids)
        take = ~skip & (rows >= 0)[:, None]
        at_r, at_c = np.nonzero(take)  # the (sensor, column) pairs to score
        # a column still warming up scores warmup_value whatever its history holds
        ready = self._rows["count"][rows[at_r], at_c] >= self.warmup
        at_r, at_c = at_r[ready], at_c[ready]
        step = max(1, _CHUNK_ELEMENTS // self.history)
        for k0 in range(0, at_r.size, step):
            i, c = at_r[k0 : k0 + step], at_c[k0 : k0 + step]
            r = rows[i]
            counts = self._rows["count"][r, c]
            new = self._stored(x[i, c])[:, None]
            if 1 < self.short < 8:
                out[i, c] = self._rank_averages(r, c, counts, new[:, 0])
                continue
            if self.short == 1:
                hist = self._histories(r, c, ordered=False)
                body, likelihood = self._body_of_history(hist, counts, new[:, 0])
                out[i[body], c[body]] = likelihood
                rest = ~body
                i, c, counts, new, hist = i[rest], c[rest], counts[rest], new[rest], hist[rest]
            else:  # long averages are summed pairwise by numpy: the general path
                hist = self._histories(r, c)
            if i.size:
                out[i, c] = self._score(hist, counts, new)[:, 0]
        return out if np.ndim(raw) == 2 else out[:, 0]

    def _body_of_history(
        self,
        hist: npt.NDArray[np.floating],
        counts: npt.NDArray[np.int64],
        new: npt.NDArray[np.floating],
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
        """Which scores fall in the body of their history, where ``Q`` is the empirical
        mid-rank and needs no quantile, and their likelihoods.

        Why: most scores of a sensor are ordinary, and for them the sort or partition that
        finds the tail's quantile ``u`` (the costliest step of :meth:`_tail`) is wasted.
        With ``n`` scores in the history and ``lo`` the lower order statistic of ``u``,
        ``#{M > m} ≥ n − lo`` means the ``lo``-th smallest score already exceeds ``m``, so
        ``m < u`` and :meth:`_tail` takes its empirical branch. Counting in float32 (exact
        for the ring's values) gives the very counts, and the same float64 arithmetic then
        gives bit-identical likelihoods; the other scores take the full path. Only columns
        past their warm-up come here (:meth:`score` gives the others ``warmup_value``).
        """
        cnt = np.minimum(counts, self.history)  # scores in the ring; the rest is NaN
        return self._in_body(hist.astype(np.float32), new.astype(np.float32), cnt)

    def _in_body(
        self, values: npt.NDArray[np.floating], m: npt.NDArray[np.floating],
        cnt: npt.NDArray[np.int64],
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
        """Which ``m[i]`` lie below the tail quantile of the ``cnt[i]`` non-NaN ``values[i]``
        (:meth:`_body_of_history` says why counting decides it), and their likelihoods:
        exactly :meth:`_tail`'s empirical branch."""
        lo = np.floor(self.tail_quantile * np.maximum(cnt - 1, 0)).astype(np.int64)
        above = (values > m[:, None]).sum(axis=1)  # NaN compares False
        body = above >= cnt - lo
        equal = (values == m[:, None]).sum(axis=1)[body]  # cheaper than copying rows first
        q = (above[body] + 0.5 * equal + 0.5) / (cnt[body] + 1.0)
        return body, np.clip(1.0 - q, 0.0, 1.0)

    def _rank_averages(
        self,
        rows: npt.NDArray[np.intp],
        columns: npt.NDArray[np.intp],
        counts: npt.NDArray[np.int64],
        new: npt.NDArray[np.floating],
    ) -> npt.NDArray[np.float64]:
        """:meth:`_score` of one new score per (row, column) pair for ``short`` k in 2..7,
        bit for bit, from the rings as they are stored.

        Why: ranking needs the history's k-moving averages only as a set, so they are taken
        around each ring as stored (each window of k scores summed oldest first, as
        :func:`_moving_average` sums it, so every average is the very same float) instead of
        first putting every history in order; the k − 1 windows that would join the newest
        score to the oldest are left out. Most short-term means ``m`` fall in the body of
        their history (see :meth:`_body_of_history`), where the counts ``#{M > m}`` and
        ``#{M = m}`` decide; only the others are put in order, by rotating their averages,
        for :meth:`_tail`. Only columns past their warm-up (≥ ``warmup`` > k scores) come here.
        """
        k, n = self.short, self.history
        rings = self._rows["ring"][rows, columns]  # (P, N) as stored, NaN where never written
        pos = self._rows["pos"][rows, columns]  # the oldest score's slot once the ring is full
        ext = np.concatenate([rings, rings[:, : k - 1]], axis=1, dtype=np.float64)
        ma = _moving_average(ext, k)  # ma[:, j]: the window of slots j .. j + k − 1 (mod N)
        wraps = (pos[:, None] - k + 1 + np.arange(k - 1)) % n  # also the newest k − 1 slots
        # the short-term mean: the newest k − 1 stored scores and the new one, oldest first
        last = np.column_stack([np.take_along_axis(ext, wraps, axis=1), new.astype(np.float64)])
        m = _moving_average(last, k)[:, 0]
        full = counts >= n  # a ring not yet full has NaN in every window that wraps
        if full.any():
            at = np.flatnonzero(full)
            ma[at[:, None], wraps[at]] = np.nan
        cnt = np.minimum(counts, n) - k + 1  # averages wholly inside the history
        out = np.empty(rows.size)
        body, likelihood = self._in_body(ma, m, cnt)
        out[body] = likelihood
        rest = np.flatnonzero(~body)
        if rest.size:  # the history's averages in order, oldest first, as _score has them
            win = _around(ma[rest], pos[rest], n - k + 1)
            out[rest] = np.clip(1.0 - self._tail(win[:, None, :], m[rest, None]), 0.0, 1.0)[:, 0]
        return out

    def learn(
        self,
        sensor_ids: Sequence[str],
        raw: npt.ArrayLike,
        mask: npt.ArrayLike | None = None,
    ) -> None:
        """Add raw scores (where ``mask`` is True, and finite) to their sensors' histories.

        ``raw`` and ``mask`` are shaped as for :meth:`score`.
        """
        x = self._columns(raw, len(sensor_ids))
        keep = np.isfinite(x)
        if mask is not None:
            keep &= np.asarray(mask, dtype=bool).reshape(x.shape)
        x32 = self._stored(x)
        chosen = np.flatnonzero(keep.any(axis=1))
        ids = [sensor_ids[i] for i in chosen.tolist()]
        if len(set(ids)) == len(ids):
            self._push(self._rows.rows(ids), x32[chosen], keep[chosen])
        else:  # a sensor more than once: its scores go in one after the other
            for sid, i in zip(ids, chosen.tolist(), strict=True):
                self._push(self._rows.rows([sid]), x32[i : i + 1], keep[i : i + 1])

    def _stored(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.floating]:
        """Scores as the ring holds them: its dtype, clipped to its finite range (a float16
        ring would turn a raw score above 65,504 into infinity)."""
        return np.clip(x, -self._finite_max, self._finite_max).astype(self.dtype)

    def _columns(self, raw: npt.ArrayLike, n: int) -> npt.NDArray[np.float64]:
        """``raw`` as an (n, width) float64 array; 1-D input is one column."""
        x = np.asarray(raw, dtype=np.float64)
        if x.ndim <= 1:
            self._one_column()
            x = x.reshape(-1, 1)
        if x.shape != (n, self.width):
            raise ValueError(
                f"{n} sensor ids for scores of shape {x.shape} (width {self.width})"
            )
        return x

    def _one_column(self) -> None:
        if self.width != 1:
            raise ValueError(
                f"this calibrator holds {self.width} score columns; pass (sensors, width) arrays"
            )

    def _push(
        self,
        rows: npt.NDArray[np.intp],
        values: npt.NDArray[np.float32],
        mask: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        """Write ``values[i, c]`` into column c of (distinct) row ``rows[i]`` where ``mask``."""
        if mask is None:
            r, c = np.repeat(rows, self.width), np.tile(np.arange(self.width), rows.size)
            v = values.reshape(-1)
        else:
            i, c = np.nonzero(mask)
            r, v = rows[i], values[i, c]
        pos = self._rows["pos"]
        at = pos[r, c]
        self._rows["ring"][r, c, at] = v
        pos[r, c] = (at + 1) % self.history
        self._rows["count"][r, c] += 1

    def seen(self, sensor_id: str, column: int = 0) -> int:
        """How many raw scores of this sensor were learned (0 for an unknown sensor)."""
        row = self._rows.get(sensor_id)
        return 0 if row is None else int(self._rows["count"][row, column])

    def counts(self, sensor_ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """:meth:`seen` for many sensors at once: ``(sensors,)``, or ``(sensors, width)``."""
        rows = self._rows.known(sensor_ids)
        out = np.zeros((rows.size, self.width), dtype=np.int64)
        known = rows >= 0
        out[known] = self._rows["count"][rows[known]]
        return out[:, 0] if self.width == 1 else out

    def _histories(
        self, rows: npt.NDArray[np.intp], columns: npt.NDArray[np.intp] | int = 0,
        ordered: bool = True,
    ) -> npt.NDArray[np.float32]:
        """(R, N) histories of column ``columns[i]`` of row ``rows[i]``, oldest → newest,
        NaN-padded at the front while not yet full.

        ``ordered=False`` returns the rings as stored: enough when one score per sensor is
        ranked without averaging (``short`` 1), which only needs the history as a set.
        """
        rings = self._rows["ring"][rows, columns]
        if not ordered:
            return rings
        return _around(rings, self._rows["pos"][rows, columns], self.history)

    def _score(
        self,
        hist: npt.NDArray[np.float32],
        counts: npt.NDArray[np.int64],
        new: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.float64]:
        """Likelihoods for R sensors × T new scores each; ``hist`` is (R, N) oldest first."""
        n, k = self.history, self.short
        r, t = new.shape
        seq = np.concatenate([hist, new], axis=1, dtype=np.float64)  # (R, N + T)
        ma = _moving_average(seq, k)  # ma[:, i] ends at seq index i+k-1
        width = n - k + 1  # moving averages that lie wholly inside the N-score history
        tail = np.empty((r, t))
        if t == 1:  # one score per sensor (the flow's case): the history's averages as they are
            tail[:, :1] = self._tail(ma[:, None, :width], ma[:, width : width + 1])
            t = 0
        step = max(1, _CHUNK_ELEMENTS // max(1, r * width))
        for t0 in range(0, t, step):
            t1 = min(t, t0 + step)
            win = sliding_window_view(ma, width, axis=1)[:, t0:t1, :]  # (R, c, width)
            m = ma[:, n - k + 1 + t0 : n - k + 1 + t1]  # short-term mean, x_t included
            tail[:, t0:t1] = self._tail(win, m)
        seen = counts[:, None] + np.arange(tail.shape[1])[None, :]  # history before each score
        return np.where(seen >= self.warmup, np.clip(1.0 - tail, 0.0, 1.0), self.warmup_value)

    def _tail(
        self, win: npt.NDArray[np.float64], m: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """``Q = P(M ≥ m)``: empirical mid-rank below the q-quantile, Pareto tail above it."""
        cnt = (~np.isnan(win)).sum(axis=-1)
        pos = self.tail_quantile * np.maximum(cnt - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(cnt - 1, 0))
        frac = pos - lo
        width = win.shape[-1]
        if cnt.size and bool((cnt == width).all()):
            # Every history full (the steady state): only the two order statistics around
            # the quantile are needed, and a partition finds them in O(N), not O(N log N).
            lo0, hi0 = int(lo.flat[0]), int(hi.flat[0])
            part = np.partition(win, sorted({lo0, hi0}), axis=-1)
            u = part[..., lo0] * (1.0 - frac) + part[..., hi0] * frac
        else:
            ordered = np.sort(win, axis=-1)  # NaN (history not yet full) sorts last
            u = (np.take_along_axis(ordered, lo[..., None], -1)[..., 0] * (1.0 - frac)
                 + np.take_along_axis(ordered, hi[..., None], -1)[..., 0] * frac)
        with np.errstate(invalid="ignore"):
            over = win > u[..., None]  # NaN compares False
            above = (win > m[..., None]).sum(axis=-1)
            equal = (win == m[..., None]).sum(axis=-1)
        n_over = over.sum(axis=-1)
        # the exceedances over u, zero elsewhere (as np.where would give them) in one pass
        gap = np.subtract(win, u[..., None], out=np.zeros(win.shape), where=over)
        excess = gap.sum(axis=-1) / np.maximum(n_over, 1)
        xi = self.tail_shape
        beta = np.maximum((1.0 - xi) * excess, np.maximum(_REL_SCALE_FLOOR * np.abs(u), 1e-12))
        empirical = (above + 0.5 * equal + 0.5) / (cnt + 1.0)
        p_u = (n_over + 0.5) / (cnt + 1.0)
        e = np.maximum(m - u, 0.0) / beta
        pareto = p_u * np.exp(-np.log1p(xi * e) / xi) if xi > 0 else p_u * np.exp(-e)
        return np.where(m > u, pareto, empirical)

    def forget(self, sensor_id: str) -> None:
        """Drop a sensor's history (it warms up again if it comes back)."""
        self._rows.drop(sensor_id)

    def state_bytes(self, sensor_id: str) -> int:
        """Payload bytes one sensor's state takes: a ring plus two counters per column."""
        if self._rows.get(sensor_id) is None:
            raise KeyError(sensor_id)
        return (self.history * self.dtype.itemsize + 16) * self.width

    def params(self) -> tuple[int, int, int, float, float, float, int, str]:
        """What a snapshot was taken with."""
        return (
            self.history, self.short, self.warmup, self.warmup_value, self.tail_quantile,
            self.tail_shape, self.width, self.dtype.name,
        )

    def state(self) -> tuple[int, tuple, tuple[list[str], dict[str, np.ndarray]]]:
        """Every sensor's rings and counters, with the parameters they were built under, as
        objects for a caller to pickle inside its own snapshot (the tables may be views of
        the live ones: pickle them before this calibrator learns again)."""
        return (_SNAPSHOT_VERSION, self.params(), self._rows.snapshot())

    def snapshot(self) -> bytes:
        """``state()`` pickled."""
        return pickle.dumps(self.state(), protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, state: bytes | tuple) -> None:
        """Replace all state with a ``snapshot()`` (or ``state()``); refuses one taken with
        another history or width. Snapshots of one-column calibrators from before columns
        existed (versions 1 and 2) restore into a width-1 calibrator."""
        ids, tables = self.loads(state)
        self._rows.restore(ids, tables)

    def loads(self, state: bytes | tuple) -> tuple[list[str], dict[str, np.ndarray]]:
        """A ``snapshot()`` (or ``state()``) as sensor ids and tables shaped for this
        calibrator."""
        version, params, sensors = pickle.loads(state) if isinstance(state, bytes) else state
        if version not in (1, 2, _SNAPSHOT_VERSION):
            raise ValueError(f"calibration snapshot version {version} is not supported")
        if params[0] != self.history:
            raise ValueError(
                f"snapshot has history {params[0]}, this calibrator {self.history}"
            )
        width = params[6] if version >= 3 else 1
        if width != self.width:
            raise ValueError(f"snapshot has {width} score columns, this calibrator {self.width}")
        if version == 1:  # {sensor id: (count, pos, ring bytes)}
            ids = list(sensors)
            sensors = (ids, {
                "count": np.array([sensors[s][0] for s in ids], np.int64),
                "pos": np.array([sensors[s][1] for s in ids], np.int64),
                "ring": np.frombuffer(b"".join(sensors[s][2] for s in ids), np.float32)
                .reshape(len(ids), self.history),
            })
        ids, tables = sensors
        if tables["ring"].dtype != self.dtype:  # another precision: cast (float16 rounds)
            tables = {**tables, "ring": tables["ring"].astype(self.dtype)}
        if version < 3:  # one column, stored without its axis
            tables = {
                "ring": tables["ring"].reshape(len(ids), 1, self.history),
                "count": tables["count"].reshape(len(ids), 1),
                "pos": tables["pos"].reshape(len(ids), 1),
            }
        return ids, tables

    def restore_columns(
        self, parts: Sequence[tuple[int, list[str], dict[str, np.ndarray], int]]
    ) -> None:
        """Replace all state from other calibrators' state: ``(column here, sensor ids,
        tables as :meth:`loads` returns them, column there)`` per column to fill. Columns
        and sensors not named start fresh (how an ensemble keeps each detector's history
        when detectors are added, removed or reordered)."""
        ids = list(dict.fromkeys(s for _, part_ids, _, _ in parts for s in part_ids))
        at = {s: i for i, s in enumerate(ids)}
        tables = {
            name: np.full((len(ids), *shape), fill, dtype=dtype)
            for name, (shape, dtype, fill) in self._rows.specs.items()
        }
        for col, part_ids, part, src in parts:
            if part_ids == ids:  # the common case: every column saved with the same sensors
                rows: npt.NDArray[np.intp] | slice = slice(None)
            else:
                rows = np.fromiter((at[s] for s in part_ids), dtype=np.intp,
                                   count=len(part_ids))
            for name in tables:
                tables[name][rows, col] = part[name][:, src]
        self._rows.restore(ids, tables, adopt=True)  # built here for it: no second copy
