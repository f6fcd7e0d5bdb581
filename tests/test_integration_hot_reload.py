"""Hot reload against a real broker: a newly activated model takes over without a restart,
no window is skipped, and a corrupt model leaves the running one in place (logged)."""

from __future__ import annotations

import itertools
import json
import shutil
from collections import defaultdict
from datetime import timedelta

import pytest
from integration import FLOW_TOPICS, flow_env, produce, read_decoded, start_flow, wait_for

from detectors.defaults import DEFAULT_REGISTRY
from detectors.registry import ModelRegistry
from flows.schemas import ScoreRecord, encoder
from flows.simulator import Fleet

pytestmark = pytest.mark.integration

SENSORS = 4


def _records(fleet: Fleet, ticks: range) -> list[tuple[bytes, bytes]]:
    return [(r.sensor_id.encode(), encoder.encode(r)) for i in ticks for r in fleet.tick(i)]


def _second_version(registry: ModelRegistry, tmp_path) -> str:
    src = tmp_path / "candidate"
    shutil.copytree(registry.active().path, src)
    meta = json.loads((src / "metadata.json").read_text())
    meta["threshold"] *= 2  # a different model, recognisable by version
    (src / "metadata.json").write_text(json.dumps(meta))
    return registry.add(src).version


def test_activating_a_model_switches_scores_live_and_a_corrupt_one_is_refused(broker, tmp_path):
    registry_root = tmp_path / "registry"
    shutil.copytree(DEFAULT_REGISTRY, registry_root)
    registry = ModelRegistry(registry_root)
    v1 = registry.active_version()
    v2 = _second_version(registry, tmp_path)

    topics = broker.unique_topics("reload", FLOW_TOPICS)
    env = flow_env(
        broker.bootstrap, topics, detectors="lstm_ae", model_registry=str(registry_root),
        model_reload_interval="500ms",
    )
    log = tmp_path / "flow.log"
    proc = start_flow(env, log)
    fleet = Fleet(sensors=SENSORS, anomaly_rate=0, seed=7, interval=timedelta(seconds=10))
    try:
        def versions() -> set[str]:
            return {s.model_version for _, s in read_decoded(
                broker.bootstrap, topics["scores"], ScoreRecord, timeout=5)}

        produce(broker.bootstrap, topics["readings"], _records(fleet, range(0, 360)))
        assert wait_for(lambda: v1 in versions(), timeout=60), log.read_text()[-2000:]

        registry.activate(v2)
        # keep the stream going until scores come from the new version
        tick = 360
        def switched() -> bool:
            nonlocal tick
            produce(broker.bootstrap, topics["readings"], _records(fleet, range(tick, tick + 6)))
            tick += 6
            return v2 in versions()
        assert wait_for(switched, timeout=60, interval=0.5), log.read_text()[-2000:]

        bad = registry.new_version("v9999-broken")
        shutil.copy(registry.info(v2).metadata_path, bad / "metadata.json")
        (bad / "model.onnx").write_bytes(b"not a model")
        (registry_root / "ACTIVE").write_text("v9999-broken\n")  # a file corrupted in place
        produce(broker.bootstrap, topics["readings"], _records(fleet, range(tick, tick + 60)))
        tick += 60
        assert wait_for(lambda: "v9999-broken" in log.read_text(), timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    text = log.read_text()
    assert f"switched model {v1} -> {v2}" in text
    assert f"model v9999-broken could not be loaded, still scoring with {v2}" in text
    scores = [s for _, s in read_decoded(broker.bootstrap, topics["scores"], ScoreRecord)]
    assert {s.model_version for s in scores} == {v1, v2}
    assert scores[-1].model_version == v2  # the corrupt model never scored
    # no window skipped: every sensor has one score per minute, each over a full window
    by_sensor: dict[str, list[ScoreRecord]] = defaultdict(list)
    for s in scores:
        by_sensor[s.sensor_id].append(s)
    assert len(by_sensor) == SENSORS
    for series in by_sensor.values():
        ends = sorted({s.window_end for s in series})
        assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(ends))
        assert all(s.readings == 30 for s in series)  # 5 min of readings every 10 s
