"""The LSTM-AE detector: batched scoring, hot reload with fallback, recovery (no torch)."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import timedelta

import numpy as np
import pytest

from detectors.autoencoder import AutoencoderDetector
from detectors.defaults import DEFAULT_REGISTRY
from detectors.registry import ModelRegistry
from flows.schemas import Reading
from flows.simulator import Fleet
from flows.stages import FeatureStage
from flows.windows import WindowSpec

SPEC = WindowSpec(300_000, 60_000, 60_000)  # the flow's defaults, which the model was built for


def _windows(sensors: int = 3, minutes: int = 60, shift_from: int | None = None) -> list:
    """Closed windows of simulated normal sensors, sim-0000 shifted up from ``shift_from``."""
    fleet = Fleet(sensors=sensors, anomaly_rate=0, seed=5, interval=timedelta(seconds=10))
    stage = FeatureStage(SPEC)
    out = []
    for i in range(minutes * 6):
        batch = fleet.tick(i)
        if shift_from is not None and i >= shift_from * 6:
            batch = [
                Reading(r.sensor_id, r.ts, {**r.values, "pressure": r.values["pressure"] + 25})
                if r.sensor_id == "sim-0000" else r
                for r in batch
            ]
        out += stage.process([batch]).windows
    return out


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    root = tmp_path / "registry"
    shutil.copytree(DEFAULT_REGISTRY, root)
    return ModelRegistry(root)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_bundled_default_model_loads_and_is_active():
    reg = ModelRegistry(DEFAULT_REGISTRY)
    info = reg.active()
    assert info is not None and info.metadata.kind == "lstm_ae"
    assert info.metadata.window_length_ms == SPEC.length_ms
    assert info.metadata.window_hop_ms == SPEC.hop_ms


def test_sensors_warm_up_for_a_sequence_then_normal_windows_score_below_threshold(registry):
    det = AutoencoderDetector(registry)
    verdicts = det.score_and_learn(_windows())
    seq = det.model.seq_len
    by_sensor: dict[str, list] = {}
    for v, (sid, _) in zip(verdicts, _windows(), strict=True):
        by_sensor.setdefault(sid, []).append(v)
    for vs in by_sensor.values():
        assert all(v.warming_up for v in vs[: seq - 1])
        scored = [v for v in vs[seq - 1 :]]
        assert scored and not any(v.warming_up for v in scored)
        assert np.mean([v.anomalous for v in scored]) < 0.1


def test_a_level_shift_scores_above_threshold_and_names_the_shifted_metric(registry):
    det = AutoencoderDetector(registry)
    wins = _windows(minutes=60, shift_from=40)
    verdicts = det.score_and_learn(wins)
    shifted = [
        v for v, (sid, w) in zip(verdicts, wins, strict=True)
        if sid == "sim-0000" and w.start_ms >= wins[0][1].start_ms + 41 * 60_000
    ]
    assert shifted and all(v.anomalous for v in shifted[:5])
    assert shifted[0].contributors[0].metric == "pressure"


def test_one_batch_and_window_by_window_give_the_same_scores(registry):
    wins = _windows(minutes=30)
    together = AutoencoderDetector(registry).score_and_learn(wins)
    det = AutoencoderDetector(registry)
    one_by_one = [det.score_and_learn([w])[0] for w in wins]
    assert [v.score for v in together] == pytest.approx([v.score for v in one_by_one], abs=1e-5)


def _second_version(registry: ModelRegistry, threshold: float) -> str:
    src = registry.active().path
    tmp = registry.root.parent / "candidate"
    shutil.copytree(src, tmp)
    meta = json.loads((tmp / "metadata.json").read_text())
    meta["threshold"] = threshold
    (tmp / "metadata.json").write_text(json.dumps(meta))
    return registry.add(tmp).version


def test_a_newly_activated_version_is_picked_up_without_restart_and_keeps_sensor_state(registry):
    clock = Clock()
    det = AutoencoderDetector(registry, reload_every_s=5, clock=clock)
    wins = _windows(minutes=40)
    half = len(wins) // 2
    det.score_and_learn(wins[:half])
    old = det.version
    new = _second_version(registry, threshold=1e-9)  # flags everything: easy to see
    registry.activate(new)
    clock.t = 1.0
    assert det.score_and_learn(wins[half : half + 3])[0].anomalous is False  # not yet re-read
    clock.t = 10.0
    after = det.score_and_learn(wins[half + 3 :])
    assert det.version == new != old
    assert all(v.anomalous and not v.warming_up for v in after)  # rings survived the switch


def test_a_corrupt_active_model_keeps_the_old_one_scoring_and_logs_why(registry, caplog):
    clock = Clock()
    det = AutoencoderDetector(registry, reload_every_s=5, clock=clock)
    good = det.version
    bad = registry.new_version("v9999-broken")
    shutil.copy(registry.active().metadata_path, bad / "metadata.json")
    (bad / "model.onnx").write_bytes(b"this is not an onnx model")
    (registry.root / "ACTIVE").write_text("v9999-broken\n")  # as if a file got corrupted
    clock.t = 10.0
    with caplog.at_level(logging.ERROR, logger="vigil.detectors.autoencoder"):
        verdicts = det.score_and_learn(_windows(minutes=20))
    assert det.version == good and verdicts
    assert any("v9999-broken" in r.getMessage() and good in r.getMessage() for r in caplog.records)
    caplog.clear()
    clock.t = 20.0
    with caplog.at_level(logging.ERROR, logger="vigil.detectors.autoencoder"):
        det.score_and_learn(_windows(minutes=5))
    assert not caplog.records  # a failing version is reported once, not every reload check


def test_snapshot_and_restore_continue_exactly_like_the_original(registry):
    wins = _windows(minutes=40)
    half = len(wins) // 2
    full = AutoencoderDetector(registry).score_and_learn(wins)
    det = AutoencoderDetector(registry)
    first = det.score_and_learn(wins[:half])
    det2 = AutoencoderDetector(registry)
    det2.restore(det.snapshot())
    rest = det2.score_and_learn(wins[half:])
    assert [v.score for v in first + rest] == [v.score for v in full]


def test_per_sensor_state_is_small(registry):
    det = AutoencoderDetector(registry)
    det.score_and_learn(_windows(sensors=50, minutes=20))
    per_sensor = len(det.snapshot()) / 50
    assert per_sensor < 1.5 * 1024  # seq_len 10 x 24 float32 features + overhead


def test_a_snapshot_in_the_older_per_sensor_ring_format_restores_the_same_state(registry):
    """Recovery stores written before rings became tables still resume exactly."""
    import pickle

    wins = _windows(minutes=40)
    half = len(wins) // 2
    det = AutoencoderDetector(registry)
    det.score_and_learn(wins[:half])
    version, names, seq_len, (ids, tables) = pickle.loads(det.snapshot())
    older = {
        sid: (tables["seq"][j], int(tables["count"][j]), int(tables["pos"][j]))
        for j, sid in enumerate(ids)
    }
    det2 = AutoencoderDetector(registry)
    det2.restore(pickle.dumps((version, names, seq_len, older)))
    assert det2.score_and_learn(wins[half:]) == det.score_and_learn(wins[half:])


def test_a_forgotten_sensor_warms_up_again_while_the_others_keep_scoring(registry):
    wins = _windows(sensors=2, minutes=30)
    det = AutoencoderDetector(registry)
    det.score_and_learn(wins)
    det.forget("sim-0000")
    again = _windows(sensors=2, minutes=8)
    later = det.score_and_learn(again)
    by_sensor: dict[str, list[bool]] = {}
    for (sid, _), v in zip(again, later, strict=True):
        by_sensor.setdefault(sid, []).append(v.warming_up)
    assert by_sensor["sim-0000"] and all(by_sensor["sim-0000"])
    assert by_sensor["sim-0001"] and not any(by_sensor["sim-0001"])
