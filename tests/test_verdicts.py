"""Detectors hand the ensemble their opinions as columns (``detectors.base.Verdicts``).

Contributors are built only for the window and detector the ensemble asks about; these tests
pin that the columns say exactly what one ``Verdict`` per window would have said.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from detectors.base import Verdict, Verdicts, verdicts_of
from detectors.ensemble import Ensemble
from detectors.factory import build_score_stage
from flows.schemas import Contributor
from flows.settings import Settings
from flows.simulator import DEFAULT_METRICS, Fleet
from flows.stages import FeatureStage, group_by_shard
from flows.windows import ClosedWindow, WindowSpec


def test_columns_give_each_window_its_score_and_its_top_three_metrics_ties_to_the_first():
    v = Verdicts(4)
    rank = np.array([[1.0, 3.0, 3.0, 0.0], [0.5, 0.1, 0.2, 0.9]])
    v.set([3, 1], np.array([2.5, 0.7]), np.array([True, False]), np.array([False, False]),
          ["a", "b", "c", "d"], rank, np.round(rank, 1))
    assert v.to_list() == [
        Verdict(0.0, False, [], warming_up=True),  # never set: warming up
        Verdict(0.7, False, [Contributor("d", 0.9), Contributor("a", 0.5),
                             Contributor("c", 0.2)]),
        Verdict(0.0, False, [], warming_up=True),
        Verdict(2.5, True, [Contributor("b", 3.0), Contributor("c", 3.0),
                            Contributor("a", 1.0)]),
    ]


def test_a_warming_window_scores_zero_is_never_anomalous_and_names_no_metric():
    v = Verdicts(2)
    v.set([0, 1], np.array([9.0, 9.0]), np.array([True, True]), np.array([True, False]),
          ["a"], np.ones((2, 1)), np.ones((2, 1)))
    assert (v.score.tolist(), v.anomalous.tolist()) == ([0.0, 9.0], [False, True])
    assert v.contributors(0) == [] and v.contributors(1) == [Contributor("a", 1.0)]


def test_a_detector_that_returns_verdicts_is_read_into_the_same_columns():
    given = [Verdict(1.5, True, [Contributor("x", 2.0)]), Verdict(0.0, False, [], True)]

    class ListOnly:
        def score_and_learn(self, batch: list) -> list[Verdict]:
            return given

    v = verdicts_of(ListOnly(), [])
    assert v.to_list() == given
    assert v.warming_up.tolist() == [False, True]


class _ListOnly:
    """A real detector seen only through ``score_and_learn`` (a list of ``Verdict``s)."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def score_and_learn(self, batch: list) -> list[Verdict]:
        return self._inner.score_and_learn(batch)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        if name == "score_batch":
            raise AttributeError(name)
        return getattr(self._inner, name)


def _windows(sensors: int, ticks: int) -> list[list[tuple[str, ClosedWindow]]]:
    fleet = Fleet(sensors=sensors, metrics=list(DEFAULT_METRICS[:4]), seed=3,
                  interval=timedelta(seconds=10), anomaly_rate=5.0)
    stage = FeatureStage(WindowSpec(300_000, 60_000, 60_000))
    out = []
    for i in range(ticks):
        for _, readings in group_by_shard(fleet.tick(i), 1):
            res = stage.process([readings])
            if res.windows:
                out.append(res.windows)
    return out


def test_the_ensemble_judges_the_default_detectors_the_same_from_columns_as_from_verdicts():
    """The ensemble's reading of columns (scores, warm-up, the best detector's contributors
    for each window) against its reading of one ``Verdict`` per window and detector."""
    settings = Settings.from_env({"VIGIL_SEASONAL_PERIOD": "1h",
                                  "VIGIL_NOVELTY_WARMUP_PERIOD": "20m"})
    columns = build_score_stage(settings).ensemble
    lists = build_score_stage(settings).ensemble
    lists = Ensemble([_ListOnly(d) for d in lists.detectors], lists.config)  # type: ignore[misc]
    judged = opinions = 0
    for batch in _windows(sensors=12, ticks=6 * 150):
        a, b = columns.score_and_learn(batch), lists.score_and_learn(batch)
        assert a == b
        judged += len(a)
        opinions += sum(not j.warming_up and bool(j.contributors) for j in a)
    assert judged > 1000 and opinions > judged // 2  # past warm-up, contributors compared
