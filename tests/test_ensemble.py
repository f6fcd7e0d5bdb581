"""detectors.ensemble: how calibrated likelihoods are combined into the held and surprise scores."""

from __future__ import annotations

import numpy as np

from detectors.base import Verdict
from detectors.calibration import combine
from detectors.ensemble import CalibrationConfig, Ensemble
from flows.windows import ClosedWindow


class _Replay:
    """A detector that returns prepared raw scores, one per window."""

    threshold = 1.0

    def __init__(self, name: str, scores: np.ndarray) -> None:
        self.name, self.version = name, name
        self.scores = iter(scores.tolist())

    def score_and_learn(self, batch: list[tuple[str, ClosedWindow]]) -> list[Verdict]:
        return [Verdict(next(self.scores), False, []) for _ in batch]

    def snapshot(self) -> bytes:
        return b""

    def restore(self, state: bytes) -> None:
        pass

    def forget(self, sensor_id: str) -> None:
        pass


def _run(config: CalibrationConfig, a: np.ndarray, b: np.ndarray) -> list:
    ens = Ensemble([_Replay("a", a), _Replay("b", b)], config)  # type: ignore[list-item]
    return [
        ens.score_and_learn([("s", ClosedWindow(i * 1000, (i + 1) * 1000, {}, 1))])[0]
        for i in range(a.size)
    ]


def test_surprise_is_tippett_of_the_surprise_likelihoods_and_held_stays_fisher() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 400), rng.normal(0, 1, 400)
    a[350] = 9.0  # one detector sees an onset
    out = _run(CalibrationConfig(), a, b)
    one = _run(CalibrationConfig(surprise_method="fisher"), a, b)
    for j, f in zip(out, one, strict=True):
        assert j.likelihood == f.likelihood  # the held combination is unchanged
    # surprise calibrators use k = 1, so each detector's surprise likelihood is recoverable
    # from a single-detector ensemble; the combined value is their Šidák-corrected maximum
    sa = [j.surprise for j in _run(CalibrationConfig(), a, np.full(400, np.nan))]
    sb = [j.surprise for j in _run(CalibrationConfig(), np.full(400, np.nan), b)]
    expect = combine([sa[30:], sb[30:]], "tippett")
    np.testing.assert_allclose([j.surprise for j in out][30:], expect, rtol=1e-12)
    assert out[350].surprise > 0.99


def test_noise_in_a_second_detector_outranks_an_onset_the_first_one_sees_less_often() -> None:
    """Fisher adds the other detector's moderate noise to every window; Tippett does not."""
    ranks = {"tippett": 0, "fisher": 0}
    for seed in range(5):
        rng = np.random.default_rng(seed)
        a = rng.normal(0, 1, 600)
        a[500] = 3.5  # a modest onset, seen by detector a only
        b = rng.normal(0, 1, 600)  # a detector that watches something else: noise here
        for method in ranks:
            s = [j.surprise for j in _run(CalibrationConfig(surprise_method=method), a, b)]
            ranks[method] += sum(x > s[500] for x in s[300:])  # windows outranking the onset
    assert ranks["tippett"] * 3 < ranks["fisher"]


class _SurpriseOnly(_Replay):
    surprise_only = True


def test_a_surprise_only_detector_shapes_surprise_but_never_the_held_likelihood() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 400), rng.normal(0, 1, 400)
    b[350] = 12.0  # only the surprise-only detector sees this onset
    both = Ensemble([_Replay("a", a), _SurpriseOnly("b", b)])  # type: ignore[list-item]
    held_only = Ensemble([_Replay("a", a)])  # type: ignore[list-item]
    plain = Ensemble([_Replay("a", a), _Replay("b", b)])  # type: ignore[list-item]
    out, ref, full = [], [], []
    for i in range(400):
        w = [("s", ClosedWindow(i * 1000, (i + 1) * 1000, {}, 1))]
        out += both.score_and_learn(w)
        ref += held_only.score_and_learn(w)
        full += plain.score_and_learn(w)
    # held likelihood, anomalous flags and fired detectors are those of "a" alone
    assert [j.likelihood for j in out] == [j.likelihood for j in ref]
    assert [j.anomalous for j in out] == [j.anomalous for j in ref]
    assert all("b" not in j.likelihoods and "b" not in j.fired for j in out)
    # the surprise is exactly the two-detector Tippett combination, onset included
    assert [j.surprise for j in out] == [j.surprise for j in full]
    assert out[350].surprise > 0.99 and not out[350].anomalous
    assert both.calibrators["b"].counts(["s"])[0] == 0  # its held ring is never filled
