"""Reliability 1-3 against real processes: repeated SIGKILLs of the flow, a broker outage
and an API outage followed by a slow API. Each run ends with an exact reconciliation against
an uninterrupted run of the same readings:

* every reading is in exactly one distinct (sensor, window) score (tumbling windows), none
  dead-lettered, and every window's score equals the uninterrupted run's (the recovered
  state scores the same);
* the (alert_id, status) set on the alerts topic equals the uninterrupted run's (copies
  allowed: at-least-once), and the API holds each alert exactly once.

Short versions run in the default suite; ``VIGIL_TEST_LONG=1`` runs the long ones (12 kills,
30 s broker outage, 60 s API outage), whose figures are in docs/reliability.md. Each test
prints one ``RELIABILITY`` line with its figures (``pytest -s`` shows them).
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from apikit import TOKEN, free_port
from integration import FLOW_TOPICS, flow_env, kill, produce, start_flow, wait_for
from reliability import (
    LONG,
    TUMBLING,
    FaultProxy,
    Outcome,
    ProxiedBroker,
    SteadyProducer,
    fleet,
    flow_metric,
    kill_in_snapshot,
    real_readings,
    start_api,
    stop,
    wait_complete,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

SENSORS = 12
SECONDS = 3000 if LONG else 600
RATE = 400.0  # readings per second while a fault scenario streams
RECORDS = fleet(SENSORS, SECONDS)
EXPECTED = real_readings(RECORDS, SENSORS)
TOPICS = {**FLOW_TOPICS, "readings": 2}


def _init_recovery(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(path), "1"], check=True)
    return path


def _report(name: str, **figures: object) -> None:
    print(f"RELIABILITY {name} " + " ".join(f"{k}={v}" for k, v in figures.items()))


def _assert_same_as_reference(got: Outcome, ref: Outcome, api: bool = True) -> None:
    assert got.dead == [], [d.reason for d in got.dead[:5]]
    assert got.scored_readings == EXPECTED, (got.scored_readings, EXPECTED)  # lost: 0
    assert set(got.scores) == set(ref.scores)
    differing = [k for k, s in got.scores.items() if s.score != ref.scores[k].score]
    assert not differing, f"{len(differing)} windows scored differently, e.g. {differing[:3]}"
    assert set(got.alert_events) == set(ref.alert_events)
    if api:
        assert len(got.api_ids) == len(set(got.api_ids)), "an alert is twice in the API"
        assert set(got.api_ids) == ref.alert_ids


@pytest.fixture(scope="module")
def reference(broker, tmp_path_factory) -> Outcome:
    """The same readings through one uninterrupted flow."""
    topics = broker.unique_topics("ref", TOPICS)
    produce(broker.bootstrap, topics["readings"], RECORDS)
    log = tmp_path_factory.mktemp("ref") / "flow.log"
    flow = start_flow(flow_env(broker.bootstrap, topics, **TUMBLING), log)
    try:
        ref = wait_complete(broker.bootstrap, topics, EXPECTED, timeout=180)
    finally:
        stop(flow)
    assert ref.scored_readings == EXPECTED, log.read_text()[-3000:]
    assert len(ref.alert_ids) >= 5
    return ref


def test_repeated_sigkills_lose_nothing_and_recovered_state_scores_the_same(
    broker, reference, tmp_path
):
    kills = 12 if LONG else 3
    topics = broker.unique_topics("crash", TOPICS)
    api_port = free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    api = start_api(tmp_path / "api.sqlite3", api_port, tmp_path / "api.log", TOKEN)
    recovery = _init_recovery(tmp_path / "recovery")
    env = flow_env(broker.bootstrap, topics, api_url=api_url, api_token=TOKEN, **TUMBLING)
    log = tmp_path / "flow.log"
    rng = random.Random(7)
    producer = SteadyProducer(broker.bootstrap, topics["readings"], RECORDS, RATE)
    producer.start()
    flow = start_flow(env, log, recovery=recovery, snapshot_s=1)
    t0 = time.monotonic()
    try:
        # kill at random moments while readings stream in (during start-up, mid-batch), and
        # every other time the instant the recovery store changes: during a snapshot
        span = len(RECORDS) / RATE
        in_snapshot = 0
        for n in range(kills):
            time.sleep(rng.uniform(0.3, 2 * span / kills))
            if n % 2:
                in_snapshot += kill_in_snapshot(flow, recovery)
            else:
                kill(flow)
            flow = start_flow(env, log, recovery=recovery, snapshot_s=1)
        producer.finish(300)
        got = wait_complete(broker.bootstrap, topics, EXPECTED, 300, api_url, TOKEN)
    finally:
        stop(flow)
        stop(api)
    _report("crash", kills=kills, in_snapshot=in_snapshot, records_in=len(RECORDS),
            readings_scored=got.scored_readings,
            score_records=got.score_records, alert_events=sum(got.alert_events.values()),
            distinct_alert_events=len(got.alert_events), api_alerts=len(got.api_ids),
            seconds=round(time.monotonic() - t0))
    assert log.read_text().count("mode=kafka") == kills + 1
    assert in_snapshot >= 1, "no kill landed in a snapshot"
    _assert_same_as_reference(got, reference)


def test_a_broker_outage_is_ridden_out_by_the_running_flow_without_loss(reference, tmp_path):
    outage = 30.0 if LONG else 8.0
    pb = ProxiedBroker()
    flow: subprocess.Popen | None = None
    try:
        topics = pb.unique_topics("outage", TOPICS)
        recovery = _init_recovery(tmp_path / "recovery")
        log = tmp_path / "flow.log"
        metrics_port = free_port()
        env = flow_env(pb.bootstrap, topics, metrics_port=str(metrics_port), **TUMBLING)
        producer = SteadyProducer(pb.bootstrap, topics["readings"], RECORDS, RATE)
        producer.start()
        flow = start_flow(env, log, recovery=recovery, snapshot_s=1)
        time.sleep(min(8.0, len(RECORDS) / RATE / 3))
        before = flow_metric(metrics_port, "vigil_readings_total")
        pb.proxy.cut()
        time.sleep(outage)
        pb.proxy.restore()
        producer.finish(300)
        got = wait_complete(pb.bootstrap, topics, EXPECTED, 300)
        assert flow.poll() is None, "the flow exited instead of riding out the outage"
        _report("broker_outage", outage_s=outage, records_in=len(RECORDS),
                readings_before_cut=before, readings_scored=got.scored_readings,
                score_records=got.score_records, alert_events=sum(got.alert_events.values()),
                distinct_alert_events=len(got.alert_events))
        assert "mode=kafka" in log.read_text()
        assert log.read_text().count("mode=kafka") == 1  # one process, never restarted
        assert before is not None and 0 < before < EXPECTED  # the cut landed mid-stream
        _assert_same_as_reference(got, reference, api=False)
    finally:
        stop(flow)
        pb.stop()


def test_api_down_then_slow_the_flow_keeps_scoring_buffers_within_bound_and_api_gets_all_once(
    broker, reference, tmp_path
):
    down, slow = (60.0, 30.0) if LONG else (8.0, 6.0)
    buffer = 10_000
    topics = broker.unique_topics("apiout", TOPICS)
    api_port = free_port()
    api = start_api(tmp_path / "api.sqlite3", api_port, tmp_path / "api.log", TOKEN)
    proxy = FaultProxy(api_port)
    api_url = f"http://127.0.0.1:{proxy.port}"
    metrics_port = free_port()
    env = flow_env(broker.bootstrap, topics, api_url=api_url, api_token=TOKEN,
                   metrics_port=str(metrics_port), api_sink_buffer=str(buffer), **TUMBLING)
    log = tmp_path / "flow.log"
    pending: list[float] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            v = flow_metric(metrics_port, "vigil_api_push_pending_alerts")
            if v is not None:
                pending.append(v)
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    producer = SteadyProducer(broker.bootstrap, topics["readings"], RECORDS, RATE)
    flow = start_flow(env, log, recovery=_init_recovery(tmp_path / "recovery"), snapshot_s=1)
    try:
        producer.start()
        sampler.start()

        def api_has_alerts() -> bool:
            r = httpx.get(f"http://127.0.0.1:{api_port}/v1/alerts", timeout=5)
            return bool(r.json()["items"])

        assert wait_for(api_has_alerts, 60), log.read_text()[-2000:]
        proxy.cut()  # from the first alert on, while the rest stream in
        at_cut = flow_metric(metrics_port, "vigil_readings_total") or 0
        time.sleep(down)
        during = (flow_metric(metrics_port, "vigil_readings_total") or 0) - at_cut
        proxy.restore()
        proxy.delay = 0.5  # every answer 0.5 s late per chunk
        time.sleep(slow)
        proxy.delay = 0.0
        producer.finish(300)
        got = wait_complete(broker.bootstrap, topics, EXPECTED, 300, f"http://127.0.0.1:"
                            f"{api_port}", TOKEN)
    finally:
        sampling.set()
        stop(flow)
        stop(api)
        proxy.close()
    flow_log = log.read_text()
    _report("api_outage", down_s=down, slow_s=slow, records_in=len(RECORDS),
            readings_during_outage=during, max_pending=max(pending, default=0),
            readings_scored=got.scored_readings, alert_events=sum(got.alert_events.values()),
            api_alerts=len(got.api_ids))
    assert during > 0, "the flow stopped reading while the API was down"
    assert max(pending) > 0, "no alert waited for the API: the outage proved nothing"
    assert max(pending) <= buffer
    assert "push of alerts to" in flow_log  # it retried
    assert TOKEN not in flow_log and TOKEN not in (tmp_path / "api.log").read_text()
    _assert_same_as_reference(got, reference)
