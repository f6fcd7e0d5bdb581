"""detectors.ensemble: how calibrated likelihoods are combined into the held and surprise scores."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from detectors.base import Verdict, rounded
from detectors.calibration import combine
from detectors.ensemble import CalibrationConfig, Ensemble
from flows.windows import ClosedWindow


class _Stateless:
    """The Detector protocol's bookkeeping for test detectors that keep no state."""

    threshold = 1.0

    def __init__(self, name: str) -> None:
        self.name, self.version = name, name

    def snapshot(self) -> bytes:
        return b""

    def restore(self, state: bytes) -> None:
        pass

    def forget(self, sensor_id: str) -> None:
        pass


class _Replay(_Stateless):
    """A detector that returns prepared raw scores, one per window."""

    def __init__(self, name: str, scores: np.ndarray) -> None:
        super().__init__(name)
        self.scores = iter(scores.tolist())

    def score_and_learn(self, batch: list[tuple[str, ClosedWindow]]) -> list[Verdict]:
        return [Verdict(next(self.scores), False, []) for _ in batch]


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
    # surprise is published rounded to 6 decimals: the inputs' rounding, doubled by the
    # square of Šidák's correction, plus the output's
    np.testing.assert_allclose([j.surprise for j in out][30:], expect, rtol=0, atol=1.6e-6)
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


class _FeatureDetector(_Stateless):
    """Raw score = the window's feature named like the detector; warming while ``warm`` is set.

    The same class recorded ``tests/data/ensemble_v1_snapshot.pickle``."""

    def score_and_learn(self, batch: list[tuple[str, ClosedWindow]]) -> list[Verdict]:
        return [
            Verdict(w.features[self.name], False, [], bool(w.features.get("warm")))
            for _, w in batch
        ]


def _windows(batch: list) -> list[tuple[str, ClosedWindow]]:
    return [(s, ClosedWindow(int(a), int(e), dict(f), r)) for s, (a, e, f, r) in batch]


def _fixture() -> dict:
    with (Path(__file__).parent / "data" / "ensemble_v1_snapshot.pickle").open("rb") as fh:
        fx = pickle.load(fh)
    fx["config"]["alert_likelihood"] = 0.998  # the default when it was recorded
    return fx


def test_a_recovery_store_with_one_calibrator_pair_per_detector_resumes_identically() -> None:
    """Snapshots written when every detector had its own two calibrators (recorded with that
    code) restore into the column-per-detector calibrators and score the next windows —
    incidents, warming detectors, NaN scores, a sensor twice in a batch, a new sensor — bit
    for bit as the old code did."""
    fx = _fixture()
    ens = Ensemble(  # the old code kept float32 histories: compare like with like
        [_FeatureDetector("a"), _FeatureDetector("b")],  # type: ignore[list-item]
        CalibrationConfig(**fx["config"], precision="float32"),
    )
    ens.restore(fx["snapshot"])
    half = Ensemble(  # the default float16 histories take the same store, rounded
        [_FeatureDetector("a"), _FeatureDetector("b")],  # type: ignore[list-item]
        CalibrationConfig(**fx["config"]),
    )
    half.restore(fx["snapshot"])
    for wide, narrow in ((ens.held, half.held), (ens.unheld, half.unheld)):
        ids, tables = wide.loads(wide.snapshot())
        ids16, tables16 = narrow.loads(narrow.snapshot())
        assert ids16 == ids and tables16["ring"].dtype == np.float16
        np.testing.assert_array_equal(tables16["ring"], tables["ring"].astype(np.float16))
        np.testing.assert_array_equal(tables16["count"], tables["count"])
    for batch, expected in zip(fx["later"], fx["outputs"], strict=True):
        got = [
            (j.likelihood, j.surprise, j.anomalous, j.likelihoods)
            for j in ens.score_and_learn(_windows(batch))
        ]
        assert got == [  # the published fields come rounded now
            (lik, round(sur, 6), anom, {k: round(v, 6) for k, v in liks.items()})
            for lik, sur, anom, liks in expected
        ]
    assert any(anom for out in fx["outputs"] for _, _, anom, _ in out)  # incidents covered


def test_restore_matches_calibration_columns_to_detectors_by_name() -> None:
    """Adding, removing or reordering detectors keeps each remaining detector's history."""
    fx = _fixture()
    cfg = CalibrationConfig(**fx["config"])
    old = Ensemble([_FeatureDetector("a"), _FeatureDetector("b")], cfg)  # type: ignore[list-item]
    old.restore(fx["snapshot"])
    state = old.snapshot()
    moved = Ensemble(
        [_FeatureDetector("c"), _FeatureDetector("b")], cfg  # type: ignore[list-item]
    )
    moved.restore(state)
    only_b = Ensemble([_FeatureDetector("b")], cfg)  # type: ignore[list-item]
    only_b.restore(fx["snapshot"])  # the old format maps by name too
    for batch in fx["later"][:10]:
        batch = [(s, (a, e, {**f, "c": 1.0}, r)) for s, (a, e, f, r) in batch]
        want = [j.likelihoods.get("b") for j in old.score_and_learn(_windows(batch))]
        assert [j.likelihoods.get("b") for j in moved.score_and_learn(_windows(batch))] == want
        assert [j.likelihoods.get("b") for j in only_b.score_and_learn(_windows(batch))] == want
    s0 = sum(s == "s0" for batch in fx["later"][:10] for s, _ in batch)
    assert moved.unheld.seen("s0", 0) == s0  # c started fresh with these windows...
    assert moved.unheld.seen("s0", 1) == old.unheld.seen("s0", 1) > s0  # ...b kept its history


def test_rounded_publishes_the_same_floats_as_python_round() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([
        rng.random(20_000), rng.normal(0, 50, 20_000), rng.gamma(0.5, 1e4, 5_000),
        [0.0, -0.0, 5e-7, 0.1234565, 1e9, -3.3e12, 1e300, np.inf, -np.inf],
    ])
    for digits in (3, 4, 6):
        want = [round(float(v), digits) for v in values]
        assert rounded(values, digits).tolist() == want
    assert np.isnan(rounded(np.array([np.nan]))[0])
    # the documented exception: 2.5e-6 is a hair above the tie in binary, but 2.5e-6 * 1e6
    # rounds to exactly 2.5, which rint sends to the even neighbour
    assert rounded(np.array([2.5e-6]))[0] == 2e-6 and round(2.5e-6, 6) == 3e-6


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
    assert both.held_names == ("a",) and both.held.width == 1  # no held ring for it at all
    restored = Ensemble([_Replay("a", a), _SurpriseOnly("b", b)])  # type: ignore[list-item]
    restored.restore(both.snapshot())
    assert restored.unheld.seen("s", 1) == both.unheld.seen("s", 1) > 300


def test_a_score_stage_snapshot_of_the_nested_layout_resumes_identically() -> None:
    """Recovery stores written before snapshots were pickled once hold the ensemble as bytes
    inside the stage's pickle, and each calibrator as bytes inside the ensemble's (version
    2). They restore and score the next windows exactly as the flattened layout does."""
    from detectors.policy import AlertPolicy
    from flows.schemas import encoder
    from flows.stages import ScoreStage

    fx = _fixture()
    cfg = CalibrationConfig(**fx["config"])

    def stage() -> ScoreStage:
        dets = [_FeatureDetector("a"), _FeatureDetector("b")]
        return ScoreStage(Ensemble(dets, cfg), AlertPolicy(0.9999))  # type: ignore[arg-type]

    warm = stage()
    warm.ensemble.restore(fx["snapshot"])
    for batch in fx["later"][:20]:
        warm.process(_windows(batch))
    e = warm.ensemble
    version2 = pickle.dumps((
        2, {d.name: d.snapshot() for d in e.detectors}, e.names, e.held_names,
        e.held.snapshot(), e.unheld.snapshot(),
    ))
    nested = pickle.dumps((version2, warm.policy.open, warm.policy.pending))
    flat = warm.snapshot()
    assert isinstance(pickle.loads(flat)[0], tuple)  # the ensemble is not pickled twice
    old, new = stage(), stage()
    old.restore(nested)
    new.restore(flat)
    judged = 0
    for batch in fx["later"][20:]:
        a, b = old.process(_windows(batch)), new.process(_windows(batch))
        assert encoder.encode((a.scores, a.alerts)) == encoder.encode((b.scores, b.alerts))
        judged += len(a.scores)
    assert judged > 50
