"""Several detectors, calibrated per sensor and combined into one anomaly likelihood per window.

Contract
--------
* ``score_and_learn(batch)`` takes ``(sensor_id, ClosedWindow)`` pairs (a sensor's windows in
  event-time order) and returns one :class:`Judgement` per window, in batch order. Every
  detector scores the whole batch first (each from its state before the window, then learns
  it); then, round by round (at most one window per sensor per round, so a sensor's later
  window sees its earlier one), each detector's raw score is turned into a likelihood in
  [0, 1] by that detector's :class:`~detectors.calibration.Calibrator` (the score's tail
  probability against the sensor's own recent raw scores), and the likelihoods are combined
  with Fisher's method (:func:`~detectors.calibration.combine`); ``surprise`` (below) with
  Tippett's.
* A window is ``anomalous`` when the combined likelihood reaches ``alert_likelihood``. The
  calibrators do not learn the raw scores of anomalous windows (the detectors have their own
  protection as well), so an incident is judged against the sensor's history from before it
  and does not turn into "normal" after ``history`` windows.
* ``surprise`` is the same combination from a second set of calibrators that learn *every*
  window: how unusual the window is against everything the sensor did lately, the ongoing
  incident included, so it fades as an incident goes on (HTM's anomaly likelihood). It
  ranks onsets, which is what a point-scored stream benchmark (NAB) rewards, while the held
  ``likelihood`` keeps an alert open for as long as the sensor stays off its baseline (what
  SKAB's per-row labels, and an operator, want). Measured: held only, NAB-style standard
  score 0 (every incident's long tail of high scores counts as false positives); unheld
  only, SKAB F1 0.11 (incidents fade within ``history`` windows). It costs a second
  calibration ring per detector and sensor.
* The surprise likelihoods are combined with ``surprise_method`` (default ``"tippett"``: the
  most surprised detector, Šidák-corrected for the number with an opinion), not Fisher:
  an onset usually shows in one detector's view, and Fisher adds up the other detectors'
  moderate likelihoods, which on a stream one detector does not model (HST on NAB's
  5-minute streams, NAB-style standard score 3-5 alone) are noise that outranks real
  onsets. Measured on the 13 NAB files, HST + seasonal: Fisher 35.5, Tippett 42.1 (over
  HST seeds 42/1/2: Fisher 34.4-35.5, Tippett 42.0-42.6). The held ``likelihood`` stays
  Fisher, where two detectors agreeing on a quiet episode is what finds it on SKAB.
* A detector still warming up (its own warm-up, or fewer than ``warmup`` calibrated scores
  for the sensor) has no opinion: its likelihood is NaN, left out of the combination. A
  window no detector has an opinion on is ``warming_up`` with likelihood 0.
* A detector whose class sets ``surprise_only = True`` takes part in ``surprise`` only: it
  never has a held likelihood (NaN, left out of Fisher's combination, never among
  ``fired``), so it cannot open or hold an alert, and its held calibrator stays empty. For a
  score that fades by design as an incident persists (``detectors/novelty.py``), where the
  held path wants "still off baseline". Measured on the 13 NAB files: the novelty detector
  in the held path as well opened 362 alerts after the probationary periods instead of 174
  (inside label windows 37 instead of 22) and kept alerts open on 3.2 times as many rows
  outside the windows (17,467 vs 5,452), for 2 more windows with an alert (17 vs 15 of 25).
* ``contributors`` come from the detector with the highest likelihood; ``fired`` lists the
  detectors whose own likelihood reached ``fired_likelihood`` (or, when only their
  combination did, the most confident one).
* ``snapshot()``/``restore()`` cover every detector and calibrator; detectors are keyed by
  name, so adding one later starts it fresh while the others keep their state.

Why calibrate at all: raw scores live on unrelated scales (an HST mass in [0, 1], a
reconstruction error of 0.3 or 300) and differ per sensor; a per-sensor tail probability is
one scale on which a single threshold and a combination both mean something.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Literal

import numpy as np

from detectors.base import Detector, rounded, sensor_rounds, verdicts_of
from detectors.calibration import Calibrator, combine
from flows.schemas import Contributor
from flows.windows import ClosedWindow


@dataclass(slots=True)  # not frozen: built per window, and frozen init costs 3x
class Judgement:
    """The combined opinion of all detectors on one window.

    ``likelihood`` is exact (decisions use it); ``score`` is it rounded to 6 decimals, and
    ``surprise``, ``raw`` and ``likelihoods`` are rounded the same way: what a score record
    publishes.
    """

    likelihood: float
    score: float
    surprise: float
    anomalous: bool
    raw: dict[str, float]
    likelihoods: dict[str, float]
    contributors: list[Contributor]
    fired: tuple[str, ...]
    warming_up: bool


@dataclass(frozen=True, slots=True)
class CalibrationConfig:
    """How raw scores become likelihoods and when a window counts as anomalous."""

    history: int = 300
    """Raw scores per sensor and detector a new score is ranked against."""
    short: int = 3
    """Newest raw scores averaged before ranking (HTM's short-term mean)."""
    warmup: int = 30
    """Calibrated scores a sensor needs before that detector has an opinion."""
    precision: str = "float16"
    """Storage type of the raw-score histories (``Calibrator``'s ``dtype``)."""
    surprise_short: int = 1
    """``short`` of the surprise calibrators: an onset score should not wait for k windows."""
    surprise_method: Literal["fisher", "tippett", "max"] = "tippett"
    """How the surprise calibrators' likelihoods are combined (``calibration.combine``)."""
    alert_likelihood: float = 0.9995
    """Combined likelihood at which a window is anomalous."""
    fired_likelihood: float = 0.99
    """A detector's own likelihood at which it is named among those that fired."""


# 1 (unversioned): a dict of per-detector calibrator pairs; 2: calibrators as snapshot bytes;
# 3: calibrators as their state() objects (pickled once, with the rest)
_SNAPSHOT_VERSION = 3


class Ensemble:
    """Detectors plus one calibrator each; the flow keeps one per state shard."""

    def __init__(self, detectors: list[Detector], config: CalibrationConfig | None = None) -> None:
        if not detectors:
            raise ValueError("an ensemble needs at least one detector")
        names = [d.name for d in detectors]
        if len(set(names)) != len(names):
            raise ValueError(f"detector names must be unique, got {names}")
        self.detectors = detectors
        self.config = config or CalibrationConfig()
        c = self.config
        # Detectors that only shape the surprise score (module docstring) have no held column.
        names = [d.name for d in detectors]
        held = [k for k, d in enumerate(detectors) if not getattr(d, "surprise_only", False)]
        self._held_cols = np.array(held, dtype=np.intp)
        self.held_names = tuple(names[k] for k in held)
        self._fired_names: dict[int, tuple[str, ...]] = {}  # bit j set: detector j fired
        # One score column per detector, in configured order: a round is calibrated in one
        # call per calibrator, with one sensor-id lookup, whatever the number of detectors.
        self.held = Calibrator(
            c.history, c.short, c.warmup, width=max(1, len(held)), dtype=c.precision
        )
        self.unheld = Calibrator(
            c.history, c.surprise_short, c.warmup, width=len(detectors), dtype=c.precision
        )

    @property
    def names(self) -> tuple[str, ...]:
        """Detector names in configured order."""
        return tuple(d.name for d in self.detectors)

    @property
    def version(self) -> str:
        """Versions of every detector, e.g. ``hst-1+v0001-2334da8e``."""
        return "+".join(d.version for d in self.detectors)

    def score_and_learn(self, batch: list[tuple[str, ClosedWindow]]) -> list[Judgement]:
        """Judge every window from the state before it, then learn it (module docstring)."""
        if not batch:
            return []
        c = self.config
        verdicts = [verdicts_of(d, batch) for d in self.detectors]
        raw_all = np.stack([v.score for v in verdicts], axis=1)  # (N, D)
        warm_all = np.stack([v.warming_up for v in verdicts], axis=1)
        names = self.names
        out: list[Judgement | None] = [None] * len(batch)
        for idx in sensor_rounds(batch):
            sids = [batch[i][0] for i in idx]
            raw_t, warm_t = raw_all[idx], warm_all[idx]  # (R, D)
            lik_t = np.full(raw_t.shape, np.nan)
            h = self._held_cols
            if h.size:
                lik_t[:, h] = self._calibrated(self.held, sids, raw_t[:, h], warm_t[:, h])
            sur_t = self._calibrated(self.unheld, sids, raw_t, warm_t)
            lik = lik_t.T  # (D, R)
            combined = combine(lik)
            surprise = combine(sur_t.T, c.surprise_method)
            anomalous = combined >= c.alert_likelihood
            if h.size:
                self.held.learn(sids, raw_t[:, h], ~warm_t[:, h] & ~anomalous[:, None])
            self.unheld.learn(sids, raw_t, ~warm_t)
            opinion = ~np.isnan(lik)
            has_any = opinion.any(axis=0).tolist()
            complete = opinion.all(axis=0).tolist()  # every detector has an opinion
            best = np.argmax(np.where(opinion, lik, -np.inf), axis=0).tolist()
            # which detectors fired, as one bit each: a window's names come from a table
            fired_code = (lik >= c.fired_likelihood).T @ (1 << np.arange(len(names)))
            lik_rows, raw_rows = rounded(lik_t).tolist(), rounded(raw_t).tolist()
            comb, anom = combined.tolist(), anomalous.tolist()
            score, surp = rounded(combined).tolist(), rounded(surprise).tolist()
            fired_of = self._fired_names
            for r, (i, code) in enumerate(zip(idx, fired_code.tolist(), strict=True)):
                if has_any[r]:
                    b = best[r]
                    fired = fired_of.get(code)
                    if fired is None:
                        fired = fired_of[code] = tuple(
                            n for j, n in enumerate(names) if code >> j & 1
                        )
                    fired = fired or ((names[b],) if anom[r] else ())
                    contributors = verdicts[b].contributors(i)
                else:
                    fired, contributors = (), []
                lik_row = lik_rows[r]
                out[i] = Judgement(
                    likelihood=comb[r],
                    score=score[r],
                    surprise=surp[r],
                    anomalous=anom[r],
                    raw=dict(zip(names, raw_rows[r], strict=True)),
                    likelihoods=dict(zip(names, lik_row, strict=True)) if complete[r] else {
                        n: x for n, x in zip(names, lik_row, strict=True) if x == x
                    },
                    contributors=contributors,
                    fired=fired,
                    warming_up=not has_any[r],
                )
        return out  # type: ignore[return-value]

    def _calibrated(
        self, cal: Calibrator, sids: list[str], raw: np.ndarray, warm: np.ndarray
    ) -> np.ndarray:
        """(R, D) likelihoods; NaN where a detector has no opinion yet for that sensor."""
        ready = ~warm & (cal.counts(sids).reshape(raw.shape) >= self.config.warmup)
        return np.where(ready, cal.score(sids, raw, warm), np.nan)

    def state(self) -> tuple:
        """Detector state keyed by detector name, and both calibrators with their column
        order (detector names), so a restore can match columns by name.

        Objects for the caller to pickle once (``ScoreStage.snapshot``): each nested pickle
        level would copy the whole state again, ~0.1 s per 250 MiB.
        """
        return (
            _SNAPSHOT_VERSION,
            {d.name: d.snapshot() for d in self.detectors},
            self.names,
            self.held_names,
            self.held.state(),
            self.unheld.state(),
        )

    def snapshot(self) -> bytes:
        """``state()`` pickled."""
        return pickle.dumps(self.state(), protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, state: bytes | tuple) -> None:
        """Load ``snapshot()`` (or ``state()``); a detector missing from it starts fresh.

        Also takes the format from before the calibrators had one column per detector:
        ``{name: (detector, held calibrator, surprise calibrator)}``.
        """
        saved = pickle.loads(state) if isinstance(state, bytes) else state
        c = self.config
        if isinstance(saved, dict):  # one one-column calibrator pair per detector
            one = Calibrator(c.history, c.short, c.warmup, dtype=c.precision)
            detectors = {name: det for name, (det, _, _) in saved.items()}
            held = {name: (one.loads(h), 0) for name, (_, h, _) in saved.items()}
            unheld = {name: (one.loads(u), 0) for name, (_, _, u) in saved.items()}
        else:
            version, detectors, names, held_names, held_state, unheld_state = saved
            if version not in (2, _SNAPSHOT_VERSION):  # 2 holds calibrator bytes: loads takes both
                raise ValueError(f"ensemble snapshot version {version} is not supported")
            h = Calibrator(c.history, c.short, c.warmup, width=max(1, len(held_names)),
                           dtype=c.precision).loads(held_state)
            u = Calibrator(c.history, c.short, c.warmup, width=len(names),
                           dtype=c.precision).loads(unheld_state)
            held = {name: (h, j) for j, name in enumerate(held_names)}
            unheld = {name: (u, j) for j, name in enumerate(names)}
        for d in self.detectors:
            if d.name in detectors:
                d.restore(detectors[d.name])
        for cal, columns, parts in (
            (self.held, self.held_names, held), (self.unheld, self.names, unheld)
        ):
            cal.restore_columns([
                (k, *parts[name][0], parts[name][1])
                for k, name in enumerate(columns) if name in parts
            ])

    def forget(self, sensor_id: str) -> None:
        """Drop a sensor from every detector and calibrator."""
        for d in self.detectors:
            d.forget(sensor_id)
        self.held.forget(sensor_id)
        self.unheld.forget(sensor_id)

