"""The flow as a real process against a real Kafka-protocol broker (tansu, or Redpanda via
VIGIL_TEST_BROKERS): replay in, alerts/scores/dead letters out, crash recovery."""

from __future__ import annotations

import gzip
import random
import subprocess
import sys
import threading
import time
from collections import Counter

import orjson
import polars as pl
import pytest
from integration import (
    DATASETS,
    FLOW_TOPICS,
    ONE_HZ,
    ROOT,
    flow_env,
    kill,
    produce,
    read_decoded,
    start_flow,
    wait_exit,
    wait_for,
)

from bench.broker import read_all
from flows.offline import compute_features
from flows.replay import load_frame
from flows.schemas import Alert, DeadLetter, Reading, ScoreRecord, encoder
from flows.windows import WindowSpec

pytestmark = pytest.mark.integration

SKAB_FILE = DATASETS / "skab" / "valve1" / "0.csv"


@pytest.mark.skipif(not SKAB_FILE.exists(), reason=f"SKAB data not found at {SKAB_FILE}")
def test_replayed_skab_file_yields_scores_and_alerts_on_their_topics(broker, tmp_path):
    topics = broker.unique_topics("skab", FLOW_TOPICS)
    replay = subprocess.run(
        [sys.executable, "-m", "flows.replay", str(SKAB_FILE), "--brokers", broker.bootstrap,
         "--topic", topics["readings"], "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert replay.returncode == 0, replay.stderr
    rows = sum(1 for _ in SKAB_FILE.open()) - 1
    env = flow_env(broker.bootstrap, topics, exit_at_end="true", **ONE_HZ)
    log = tmp_path / "flow.log"
    wait_exit(start_flow(env, log), log)

    scores = read_decoded(broker.bootstrap, topics["scores"], ScoreRecord)
    alerts = read_decoded(broker.bootstrap, topics["alerts"], Alert)
    assert {s.sensor_id for _, s in scores} == {"skab-valve1-0"}
    # exactly the windows the offline (training) path computes from the same file
    offline = compute_features(
        load_frame(SKAB_FILE).with_columns(pl.lit("skab-valve1-0").alias("sensor_id")),
        WindowSpec(30_000, 10_000, 5_000),
    )
    assert len(scores) == offline.height
    assert sum(s.readings for _, s in scores) == offline["readings"].sum() > 2 * rows
    assert alerts, "the valve anomaly in this file should raise at least one alert"
    assert all(key == b"skab-valve1-0" for key, _ in alerts)
    assert {a.status for _, a in alerts} <= {"open", "resolved"}
    assert not read_all(broker.bootstrap, topics["dead"], timeout=10)
    assert "mode=kafka" in log.read_text()


def _ten_kinds_of_bad(i: int, now_ms: int) -> bytes:
    kinds = [
        b'{"sensor_id": "a", "ts": 1700000000000, "values": {"x": 1.0',   # malformed_json
        b'{"sensor_id": "a", "values": {"x": 1.0}}',                        # missing_field
        b'{"sensor_id": "a", "ts": 1700000000000, "values": {"x": "hot"}}',  # wrong_type
        b'{"sensor_id": "a", "ts": 1700000000000, "values": {"x": NaN}}',   # not_finite
        orjson.dumps({"sensor_id": "a", "ts": now_ms + 86_400_000, "values": {"x": 1.0}}),
        gzip.compress(b'{"sensor_id": "a"}'),                               # unknown_encoding
        b"",                                                                # empty_record
        b'{"sensor_id": "a", "ts": "2023-11-14T22:13:20", "values": {"x": 1}}',  # bad_timestamp
        b'{"sensor_id": "", "ts": 1700000000000, "values": {"x": 1.0}}',    # invalid_value
        b'["a", 1700000000000, {"x": 1.0}]',                                # not_an_object
    ]
    return kinds[i % 10]


def test_a_hundred_malformed_records_in_ten_ways_are_dead_lettered_and_the_rest_scored(
    broker, tmp_path
):
    topics = broker.unique_topics("dlq", FLOW_TOPICS)
    rng = random.Random(5)
    t0 = 1_700_000_000_000
    good = [
        Reading(f"s{i % 3}", t0 + (i // 3) * 1000, {"x": rng.gauss(0, 1)}) for i in range(900)
    ]
    now_ms = int(time.time() * 1000)
    records: list[tuple[bytes | None, bytes]] = [
        (r.sensor_id.encode(), encoder.encode(r)) for r in good
    ]
    bad_positions = sorted(rng.sample(range(1000), 100))
    for n, pos in enumerate(bad_positions):
        records.insert(pos, (b"bad", _ten_kinds_of_bad(n, now_ms)))
    assert len(records) == 1000
    produce(broker.bootstrap, topics["readings"], records)

    env = flow_env(broker.bootstrap, topics, exit_at_end="true", window_length="10s",
                   window_hop="10s", allowed_lateness="0s")
    log = tmp_path / "flow.log"
    wait_exit(start_flow(env, log), log)

    dead = [d for _, d in read_decoded(broker.bootstrap, topics["dead"], DeadLetter)]
    assert len(dead) == 100
    reasons = Counter(d.reason for d in dead)
    assert reasons == {r: 10 for r in (
        "malformed_json", "missing_field", "wrong_type", "not_finite", "future_timestamp",
        "unknown_encoding", "empty_record", "bad_timestamp", "invalid_value", "not_an_object",
    )}
    assert all(len(d.detail) > 15 for d in dead)
    assert {bytes(d.raw) for d in dead} <= {v for _, v in records}
    scores = [s for _, s in read_decoded(broker.bootstrap, topics["scores"], ScoreRecord)]
    assert sum(s.readings for s in scores) == 900  # tumbling windows: each reading once


def _fleet_records(sensors: int = 12, seconds: int = 1500) -> list[tuple[bytes, bytes]]:
    rng = random.Random(11)
    t0 = 1_700_000_000_000
    out = []
    for i in range(seconds):
        for s in range(sensors):
            shift = 30.0 if (i // 250) % 2 == 1 and s % 3 == 0 and i % 250 < 40 else 0.0
            r = Reading(f"m{s}", t0 + i * 1000,
                        {"t": 50 + rng.gauss(0, 1) + shift, "p": 3 + rng.gauss(0, 0.1)})
            out.append((r.sensor_id.encode(), encoder.encode(r)))
    return out


def test_sigkill_mid_stream_then_restart_loses_no_alert(broker, tmp_path):
    records = _fleet_records()
    settings = dict(exit_at_end="true", consumer_batch_size="200", **ONE_HZ)

    clean_topics = broker.unique_topics("clean", FLOW_TOPICS)
    produce(broker.bootstrap, clean_topics["readings"], records)
    log = tmp_path / "clean.log"
    wait_exit(start_flow(flow_env(broker.bootstrap, clean_topics, **settings), log), log)
    clean = {a.alert_id for _, a in read_decoded(broker.bootstrap, clean_topics["alerts"], Alert)}
    assert len(clean) >= 5

    topics = broker.unique_topics("crash", FLOW_TOPICS)
    half = len(records) // 2
    produce(broker.bootstrap, topics["readings"], records[:half])
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True)
    tail_env = flow_env(broker.bootstrap, topics, consumer_batch_size="200", **ONE_HZ)
    log = tmp_path / "crash.log"
    proc = start_flow(tail_env, log, recovery=recovery, snapshot_s=1)
    assert wait_for(
        lambda: len(read_all(broker.bootstrap, topics["alerts"], timeout=5)) >= 2, timeout=60
    ), log.read_text()[-2000:]
    # the second half streams in while the flow runs; SIGKILL lands in the middle of it
    producer = threading.Thread(
        target=produce, args=(broker.bootstrap, topics["readings"], records[half:], 400)
    )
    producer.start()
    time.sleep(1.5)
    kill(proc)
    producer.join()
    before = {a.alert_id for _, a in read_decoded(broker.bootstrap, topics["alerts"], Alert)}
    assert before < clean, "the kill should land before the stream ends"
    env = flow_env(broker.bootstrap, topics, **settings)
    wait_exit(start_flow(env, log, recovery=recovery, snapshot_s=1), log)
    assert log.read_text().count("mode=kafka") == 2

    after = read_decoded(broker.bootstrap, topics["alerts"], Alert)
    assert {a.alert_id for _, a in after} == clean
    events = Counter((a.alert_id, a.status) for _, a in after)
    clean_alerts = read_decoded(broker.bootstrap, clean_topics["alerts"], Alert)
    clean_events = Counter((a.alert_id, a.status) for _, a in clean_alerts)
    assert set(events) == set(clean_events)  # duplicates allowed, nothing missing
