"""Scores do not depend on how the input is cut into batches.

The flow's batches are whatever each poll of the broker returned, so a replay after a crash,
another batch size or another fetch timing cuts the same readings differently. The window
store emits windows in the order of the readings that closed them, and the detectors score
consecutive rounds of that order, so every cut gives the same sequence, also for HST's forest,
which the sensors of a shard share.
"""

from __future__ import annotations

from datetime import timedelta

from detectors.factory import build_score_stage
from flows.schemas import encoder
from flows.settings import Settings
from flows.simulator import DEFAULT_METRICS, Fleet
from flows.stages import FeatureStage, ScoreStage, group_by_shard
from flows.windows import WindowSpec


def _records(ticks_per_batch: int, ticks: int = 6 * 150) -> list[bytes]:
    """Every score record and alert of a simulated fleet with dropouts, fed in batches."""
    settings = Settings.from_env({"VIGIL_DETECTORS": "hst,seasonal,corr"})
    fleet = Fleet(sensors=40, metrics=list(DEFAULT_METRICS[:4]), seed=3,
                  interval=timedelta(seconds=10), anomaly_rate=150.0)
    spec = WindowSpec(300_000, 60_000, 60_000)
    features: dict[str, FeatureStage] = {}
    scorers: dict[str, ScoreStage] = {}
    out: list[bytes] = []
    every = [fleet.tick(i) for i in range(ticks)]
    for start in range(0, ticks, ticks_per_batch):
        batch = [r for tick in every[start : start + ticks_per_batch] for r in tick]
        for shard, readings in group_by_shard(batch, 2):
            windows = features.setdefault(shard, FeatureStage(spec)).process([readings]).windows
            if windows:
                if shard not in scorers:
                    scorers[shard] = build_score_stage(settings)
                res = scorers[shard].process(windows)
                out += [encoder.encode(r) for r in (*res.scores, *res.alerts)]
    return sorted(out)


def test_scores_and_alerts_do_not_depend_on_how_the_readings_are_cut_into_batches() -> None:
    one_tick = _records(1)
    assert len(one_tick) > 3_000
    assert _records(7) == one_tick  # several windows of a sensor that resumed, in one batch
    assert _records(45) == one_tick
