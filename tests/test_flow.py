"""The real dataflow, run in-process with bytewax.testing."""

import random

import polars as pl
import pytest
from bytewax.testing import TestingSource
from flowkit import (
    FAST,
    T0,
    Collected,
    encode_all,
    init_recovery,
    run_flow,
    synthetic_readings,
    to_batches,
)

from flows.offline import compute_features
from flows.schemas import Reading
from flows.windows import WindowSpec

SPEC = WindowSpec(60_000, 10_000, 5_000)


def test_online_features_equal_offline_polars_features():
    readings = synthetic_readings(sensors=3, seconds=400)
    online = run_flow(to_batches(encode_all(readings), size=137)).windows
    df = pl.DataFrame({
        "sensor_id": [r.sensor_id for r in readings],
        "ts": [r.ts for r in readings],
        "temp": [r.values["temp"] for r in readings],
        "flow": [r.values["flow"] for r in readings],
    })
    offline = compute_features(df, SPEC, metrics=["temp", "flow"])
    assert len(online) == offline.height > 100
    by_key = {(sid, w.start_ms): w for sid, w in online}
    for row in offline.iter_rows(named=True):
        w = by_key[(row["sensor_id"], int(row["start"].timestamp() * 1000))]
        assert w.readings == row["readings"]
        for name, value in w.features.items():
            assert row[name] == value, name  # same code path: bit-identical


def test_bad_records_are_dead_lettered_and_every_good_one_is_scored():
    readings = synthetic_readings(sensors=2, seconds=300)
    records = encode_all(readings)
    bad_positions = set(range(3, len(records), 50))
    for i in bad_positions:
        records[i] = b'{"sensor_id": "s0", "ts": "not a time", "values": {}}'
    got = run_flow(to_batches(records))
    assert len(got.dead) == len(bad_positions)
    assert {d.offset for d in got.dead} == bad_positions
    good_windows_readings = sum(w.readings for _, w in got.windows)
    assert got.scores and sum(s.readings for s in got.scores) == good_windows_readings


def test_out_of_order_readings_within_lateness_give_the_same_scores_as_in_order():
    readings = synthetic_readings(sensors=2, seconds=600)
    shuffled = readings[:]
    rng = random.Random(9)
    for i in range(0, len(shuffled) - 8, 5):  # swaps at most 4 readings = 2 s apart
        j = i + rng.randint(1, 4)
        shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    a = run_flow(to_batches(encode_all(readings)))
    b = run_flow(to_batches(encode_all(shuffled)))
    assert not b.dead
    key = lambda s: (s.sensor_id, s.window_start)  # noqa: E731
    sa, sb = sorted(a.scores, key=key), sorted(b.scores, key=key)
    assert [(s.sensor_id, s.window_start, s.readings) for s in sa] == [
        (s.sensor_id, s.window_start, s.readings) for s in sb
    ]
    assert [s.score for s in sb] == pytest.approx([s.score for s in sa], rel=1e-6, abs=1e-6)


def test_readings_beyond_the_allowed_lateness_go_to_dead_letters_as_late():
    readings = synthetic_readings(sensors=1, seconds=120)
    late = Reading("s0", T0 + 100_000 - 6_000, {"temp": 1.0, "flow": 1.0})  # 6 s > 5 s
    on_time = Reading("s0", T0 + 100_000 - 4_000, {"temp": 1.0, "flow": 1.0})
    records = encode_all([*readings[:101], late, on_time, *readings[101:]])
    got = run_flow(to_batches(records, size=1000))
    assert [d.reason for d in got.dead] == ["late"]
    assert got.dead[0].sensor_id == "s0" and "VIGIL_ALLOWED_LATENESS" in got.dead[0].detail


def test_an_injected_level_shift_raises_one_alert_that_opens_and_resolves():
    got = run_flow(to_batches(encode_all(synthetic_readings())))
    s0 = [a for a in got.alerts if a.sensor_id == "s0"]
    assert [a.status for a in s0][:2] == ["open", "resolved"]
    assert s0[0].alert_id == s0[1].alert_id
    assert s0[0].contributors[0].metric == "temp"
    opened = [a for a in s0 if a.status == "open"]
    assert any(abs(a.start.timestamp() * 1000 - (T0 + 900_000)) <= 60_000 for a in opened)


def test_recovery_after_a_crash_gives_the_same_alerts_and_scores(tmp_path):
    batches = to_batches(encode_all(synthetic_readings()), size=400)
    clean = run_flow(batches)
    store = init_recovery(tmp_path / "rec")
    items = [*batches[:8], TestingSource.ABORT(), *batches[8:]]
    got = Collected()
    run_flow(items, recovery_dir=store, into=got)  # stops at ABORT, like a crash
    assert 0 < len(got.scores) < len(clean.scores)
    run_flow(items, recovery_dir=store, into=got)  # resumes from the last snapshot
    assert {a.alert_id for a in got.alerts} == {a.alert_id for a in clean.alerts}
    key = lambda s: (s.sensor_id, s.window_start)  # noqa: E731
    resumed = {key(s): s.score for s in got.scores}  # duplicates allowed, values must agree
    assert resumed == {key(s): s.score for s in clean.scores}


def test_fast_settings_are_valid():
    FAST.validate()


def test_a_recovery_store_from_another_shard_count_is_refused_with_a_clear_message(tmp_path):
    import dataclasses

    from flows.detect import ShardCountMismatch, state_tag, untag_state

    batches = to_batches(encode_all(synthetic_readings()), size=400)
    store = init_recovery(tmp_path / "rec")
    items = [*batches[:8], TestingSource.ABORT(), *batches[8:]]
    run_flow(items, settings=dataclasses.replace(FAST, state_shards=16), recovery_dir=store)
    with pytest.raises(Exception, match="VIGIL_STATE_SHARDS=16, this flow runs with 8"):
        run_flow(items, settings=dataclasses.replace(FAST, state_shards=8), recovery_dir=store)
    assert untag_state(state_tag(8) + b"x", 8) == b"x"
    assert untag_state(b"untagged, from before", 8) == b"untagged, from before"
    with pytest.raises(ShardCountMismatch):
        untag_state(state_tag(16) + b"x", 8)


def test_a_stage_pickles_its_state_straight_after_the_shard_tag_restoring_the_same_stage():
    """The tag is written first and the state pickled after it (no copy of the snapshot to
    put it in front): the bytes are exactly the tagged snapshot, and restore from them."""
    from detectors.factory import build_score_stage
    from flows.detect import state_tag, untag_state
    from flows.stages import FeatureStage, ScoreStage
    from flows.windows import WindowSpec

    spec = WindowSpec(300_000, 60_000, 60_000)
    features, scores = FeatureStage(spec), build_score_stage(FAST)
    readings = synthetic_readings()
    windows = []
    for i in range(0, len(readings), 400):
        windows += features.process([readings[i : i + 400]]).windows
    assert windows
    scores.process(windows)
    for stage in (features, scores):
        tagged = stage.snapshot(prefix=state_tag(8))
        assert tagged == state_tag(8) + stage.snapshot()
        assert isinstance(untag_state(tagged, 8), memoryview)  # not a copy
    again = FeatureStage.restore(spec, untag_state(features.snapshot(prefix=state_tag(8)), 8))
    assert again.snapshot() == features.snapshot()
    restored: ScoreStage = build_score_stage(FAST)
    restored.restore(untag_state(scores.snapshot(prefix=state_tag(8)), 8))
    assert len(restored.ensemble.unheld) == len(scores.ensemble.unheld) > 0


def test_readings_are_grouped_by_their_stable_shard_in_arrival_order_also_past_the_memo_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """group_by_shard remembers shard keys; the groups must equal crc32 placement, and a
    memo that starts over (ever-new sensor ids) must not change them."""
    from datetime import UTC, datetime

    from flows import stages

    ts = datetime(2024, 1, 1, tzinfo=UTC)
    readings = [Reading(sensor_id=f"s{i % 37}", ts=ts, values={"x": float(i)}) for i in range(200)]
    want: dict[str, list[Reading]] = {}
    for r in readings:
        want.setdefault(stages.shard_of(r.sensor_id, 8), []).append(r)
    assert dict(stages.group_by_shard(readings, 8)) == want
    monkeypatch.setattr(stages, "_SHARD_MEMO_LIMIT", 5)
    for _ in range(3):
        assert dict(stages.group_by_shard(readings, 8)) == want
    assert len(stages._shard_memo[8]) <= 37
    assert dict(stages.group_by_shard(readings, 3)) != want  # another count, other groups


def test_loading_the_flow_freezes_the_start_up_heap_and_collects_the_young_generation_rarely():
    """python -m bytewax.run flows.detect imports flows.detect; after that import the ~100k
    start-up objects (modules, models) must be frozen, leaving gen-2 collections short, and
    young collections must wait for tens of thousands of allocations, not CPython's 700."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import gc, time; import flows.detect; "
        "t = time.perf_counter(); gc.collect(); "
        "print(gc.get_freeze_count(), round((time.perf_counter() - t) * 1000, 1), "
        "gc.get_threshold()[0])"
    )
    env = {"PATH": "/usr/bin:/bin", "VIGIL_METRICS_PORT": "0", "VIGIL_LOG_LEVEL": "WARNING"}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True, cwd=root).stdout.split()
    frozen, collect_ms, young = int(out[0]), float(out[1]), int(out[2])
    assert frozen > 50_000
    assert young >= 10_000
    assert collect_ms < 20.0  # ~55 ms with the start-up heap in sight


@pytest.mark.parametrize(("workers", "shards", "warned"), [
    (2, 1, True),   # one shard: the second worker would hold no state at all
    (2, 4, True),   # Bytewax's key hashing spreads a few shards unevenly
    (2, 8, False),
    (1, 1, False),  # the default: one worker, one shard
])
def test_the_flow_warns_at_start_when_workers_outnumber_what_its_shards_can_keep_busy(
    caplog, workers, shards, warned
):
    import dataclasses

    from bytewax.testing import cluster_main

    from flows.detect import build_flow

    got: list = []

    def outputs(s) -> None:
        import bytewax.operators as op
        from bytewax.testing import TestingSink

        op.output("collect_alerts", s.alerts, TestingSink(got))

    items = to_batches(encode_all(synthetic_readings(sensors=3, seconds=30)))
    flow = build_flow(dataclasses.replace(FAST, state_shards=shards), TestingSource(items),
                      outputs)
    with caplog.at_level("WARNING", logger="vigil.flow"):
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    msgs = [r.getMessage() for r in caplog.records if "VIGIL_STATE_SHARDS" in r.getMessage()]
    assert bool(msgs) == warned
    if warned:
        assert f"VIGIL_STATE_SHARDS={shards} for {workers} workers" in msgs[0]
        assert f"at least {4 * workers}" in msgs[0]
