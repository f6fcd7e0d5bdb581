"""The flow's API pusher against a real API (uvicorn in a thread) that goes away and back."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import msgspec
import pytest
from apikit import TOKEN, alert, free_port, score, serve_in_thread
from integration import ROOT, wait_for
from litestar import Litestar, post
from litestar.exceptions import ValidationException
from litestar.params import JSONBody

from api import create_app
from api.app import _validation_error
from flows import api_client
from flows.api_client import ApiPusher, decode_pending, encode_pending
from flows.settings import Settings


@pytest.fixture
def make_app(tmp_path):
    settings = Settings(api_db=str(tmp_path / "api.sqlite3"), api_token=TOKEN)
    return lambda: create_app(settings)


def _ids(url: str) -> list[str]:
    return [a["alert_id"] for a in
            httpx.get(f"{url}/v1/alerts", params={"limit": 500}).json()["items"]]


def test_alerts_scores_and_heartbeats_reach_the_api(make_app):
    with serve_in_thread(make_app()) as url:
        pusher = ApiPusher(url, TOKEN, batch=7, flush_interval=0.05, score_interval=0.2,
                           heartbeat_interval=0.2, source="flow-test")
        pusher.put_alerts([alert(i) for i in range(20)])
        pusher.put_scores([score("s1", m, v) for m, v in ((1, 0.2), (2, 3.0), (3, 0.5))])
        pusher.put_scores([score("s2", 1, 0.1)])
        assert pusher.drain(5)
        assert wait_for(lambda: httpx.get(f"{url}/v1/sensors/s1").status_code == 200
                        and httpx.get(f"{url}/v1/sensors/s2").status_code == 200, 5)
        assert pusher.close(5) == 0
        assert sorted(_ids(url)) == [f"a{i:05d}" for i in range(20)]
        history = httpx.get(f"{url}/v1/sensors/s1/scores").json()["items"]
        assert [p["score"] for p in history] == [3.0]  # the peak of the interval is kept
        assert httpx.get(f"{url}/ready").json()["flow"]["source"] == "flow-test"


def test_heartbeats_carry_the_readings_and_dead_letter_rates_and_lag_the_flow_counted(make_app):
    from flows import metrics

    with serve_in_thread(make_app()) as url:
        pusher = ApiPusher(url, TOKEN, heartbeat_interval=0.3, source="flow-rates",
                           stats=metrics.totals)
        lag = metrics.CONSUMER_LAG.labels("ui-test-readings", "0")
        lag.set(42)
        stop = threading.Event()

        def count() -> None:  # what the flow's operators do, ~2000 readings/s
            while not stop.wait(0.01):
                metrics.READINGS.inc(20)
                metrics.DEAD.labels("ui-test").inc(1)

        counter = threading.Thread(target=count, daemon=True)
        counter.start()
        try:
            def reported() -> dict | None:
                flow = httpx.get(f"{url}/ready").json()["flow"]
                return flow if flow["readings_per_s"] else None

            assert wait_for(reported, 5)
            flow = reported()
            assert flow["source"] == "flow-rates" and flow["lag_messages"] >= 42
            assert 200 < flow["readings_per_s"] < 4000
            assert 0.03 < flow["dead_letters_per_s"] / flow["readings_per_s"] < 0.07
        finally:
            stop.set()
            counter.join()
            metrics.CONSUMER_LAG.remove("ui-test-readings", "0")
            pusher.close(5)


def test_the_first_heartbeat_only_primes_the_rates(make_app):
    from flows import metrics

    pusher = ApiPusher("http://127.0.0.1:9", TOKEN, heartbeat_interval=0, stats=metrics.totals)
    try:
        first = pusher.heartbeat_body()
        assert "readings_per_s" not in first and first["source"] == "flow"
        metrics.READINGS.inc(10)
        second = pusher.heartbeat_body()
        assert second["readings_per_s"] > 0 and second["dead_letters_per_s"] == 0
    finally:
        pusher.close(1)


class _OldHeartbeat(msgspec.Struct, forbid_unknown_fields=True):
    """POST /v1/heartbeat's body before the throughput fields existed."""

    source: str


_old_beats: list[str] = []


@post("/v1/heartbeat", status_code=204)
async def _old_heartbeat(data: JSONBody[_OldHeartbeat]) -> None:
    _old_beats.append(data.source)


def test_an_api_that_refuses_the_throughput_fields_still_gets_heartbeats():
    """An API from before the throughput fields: the pusher falls back to bare heartbeats
    instead of letting the 422 stop its thread (which also pushes the alerts)."""
    from flows import metrics

    _old_beats.clear()
    old_api = Litestar([_old_heartbeat], exception_handlers={
        ValidationException: _validation_error})  # 422, as every Vigil API answers
    with serve_in_thread(old_api) as url:
        pusher = ApiPusher(url, TOKEN, heartbeat_interval=0.1, stats=metrics.totals)
        assert wait_for(lambda: len(_old_beats) >= 2, 5)
        assert pusher._thread.is_alive() and pusher._stats is None
        pusher.close(2)


def test_alerts_queued_while_the_api_is_down_arrive_once_it_is_back(make_app):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    pusher = ApiPusher(url, TOKEN, flush_interval=0.01, heartbeat_interval=0, max_backoff=0.3)
    pusher.put_alerts([alert(i) for i in range(30)])
    assert wait_for(lambda: pusher.failures >= 2, 5)
    assert len(pusher.pending()) == 30
    with serve_in_thread(make_app(), port=port):
        pusher.put_alerts([alert(i) for i in range(30, 40)])
        assert pusher.drain(10)
        assert sorted(_ids(url)) == [f"a{i:05d}" for i in range(40)]
        pusher.close(5)


def test_a_full_buffer_blocks_the_flow_instead_of_dropping_alerts(make_app):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    pusher = ApiPusher(url, TOKEN, buffer=5, flush_interval=0.01, heartbeat_interval=0,
                       max_backoff=0.2)
    done = threading.Event()

    def produce() -> None:
        pusher.put_alerts([alert(i) for i in range(12)])
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    time.sleep(0.8)
    assert not done.is_set() and len(pusher.pending()) == 5
    with serve_in_thread(make_app(), port=port):
        assert done.wait(10)
        assert pusher.drain(10)
        assert sorted(_ids(url)) == [f"a{i:05d}" for i in range(12)]
        pusher.close(5)


def test_a_batch_the_api_rejects_is_counted_and_does_not_block_later_alerts(make_app):
    with serve_in_thread(make_app()) as url:
        before = api_client.REJECTED._value.get()
        pusher = ApiPusher(url, TOKEN, flush_interval=0.01, heartbeat_interval=0)
        pusher.put_alerts([alert(1, score=math.nan)])  # encodes as null: the API says 422
        assert pusher.drain(5)
        pusher.put_alerts([alert(2)])
        assert pusher.drain(5)
        pusher.close(5)
        assert _ids(url) == ["a00002"]
        assert api_client.REJECTED._value.get() == before + 1


def test_pending_alerts_round_trip_through_the_sink_recovery_state():
    pending = [alert(1), alert(2, status="resolved")]
    assert decode_pending(encode_pending(pending)) == pending
    assert decode_pending(None) == []


def test_the_flow_pushes_every_alert_and_scores_to_the_api_via_named_steps(make_app):
    from dataclasses import replace
    from datetime import timedelta

    import bytewax.operators as op
    from bytewax.testing import TestingSink, TestingSource, run_main
    from flowkit import FAST, encode_all, synthetic_readings, to_batches

    from flows.detect import FlowStreams, api_outputs, build_flow

    with serve_in_thread(make_app()) as url:
        settings = replace(FAST, api_url=url, api_token=TOKEN,
                           api_score_interval=timedelta(milliseconds=50))
        alerts: list = []

        def outputs(s: FlowStreams) -> None:
            op.output("collect_alerts", s.alerts, TestingSink(alerts))
            api_outputs(settings, s)

        batches = to_batches(encode_all(synthetic_readings(sensors=3, seconds=1200)))
        flow = build_flow(settings, TestingSource(batches), outputs)
        steps = {s.step_id for s in flow.substeps}
        assert {"vigil_detect.push_alerts_to_api", "vigil_detect.push_scores_to_api"} <= steps
        run_main(flow, epoch_interval=timedelta(0))
        assert alerts
        stored = httpx.get(f"{url}/v1/alerts", params={"limit": 500}).json()["items"]
        assert {a["alert_id"] for a in stored} == {a.alert_id for a in alerts}
        assert any(a.status == "resolved" for a in alerts)
        assert httpx.get(f"{url}/ready").json()["flow"]["source"].startswith("flow@")
        by_id = {a["alert_id"]: a for a in stored}
        for a in alerts:
            if a.status == "resolved":
                assert by_id[a.alert_id]["status"] == "resolved"
        sensors = httpx.get(f"{url}/v1/sensors").json()["items"]
        assert {s["sensor_id"] for s in sensors} == {"s0", "s1", "s2"}
        assert all(s["last_score"] is not None for s in sensors)


def test_a_flow_process_sends_heartbeats_from_start_up_before_any_alert(make_app):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")} | {
        "VIGIL_API_TOKEN": TOKEN, "VIGIL_API_HEARTBEAT_STALE": "4s",
        # the simulated fleet in real time from now: its first window closes after minutes
        "VIGIL_SIM_BACKFILL": "0s",
    }
    with serve_in_thread(make_app()) as url:
        env["VIGIL_API_URL"] = url
        flow = subprocess.Popen([sys.executable, "-m", "bytewax.run", "flows.detect"], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert wait_for(
                lambda: httpx.get(f"{url}/ready").json()["flow"]["last_heartbeat"], 30)
            assert not httpx.get(f"{url}/ready").json()["flow"]["stale"]
            assert _ids(url) == []  # no alert (so no alert sink partition) exists yet
        finally:
            flow.send_signal(signal.SIGTERM)
            flow.wait(30)
