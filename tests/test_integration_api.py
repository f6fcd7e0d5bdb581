"""Broker + flow + API as real processes: a replayed SKAB file's alerts reach the API (REST and
SSE) with the same ids as on the alerts topic, even though the API is killed for 10 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import msgspec
import pytest
from apikit import TOKEN, free_port
from integration import (
    DATASETS,
    FLOW_TOPICS,
    ONE_HZ,
    ROOT,
    flow_env,
    kill,
    read_decoded,
    start_flow,
    wait_for,
)

from flows.schemas import Alert

pytestmark = pytest.mark.integration

SKAB_FILE = DATASETS / "skab" / "valve1" / "0.csv"


def _start_api(db: Path, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update({"VIGIL_API_DB": str(db), "VIGIL_API_PORT": str(port),
                "VIGIL_API_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_for(up, 20), log.read_text()[-2000:]
    return proc


class StreamCollector(threading.Thread):
    """An SSE client that reconnects with Last-Event-ID, as a browser's EventSource does."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.events: list[tuple[int, str, str]] = []  # (event id, kind, alert_id)
        self.connects = 0
        self.stop = threading.Event()

    def run(self) -> None:
        last = 0
        while not self.stop.is_set():
            try:
                with httpx.stream("GET", f"{self.url}/v1/alerts/stream",
                                  headers={"Last-Event-ID": str(last)},
                                  timeout=httpx.Timeout(2.0)) as r:
                    self.connects += 1
                    fields: dict[str, str] = {}
                    for line in r.iter_lines():
                        if line == "" and "data" in fields:
                            data = msgspec.json.decode(fields["data"])
                            last = int(fields["id"])
                            self.events.append((last, data["kind"], data["alert"]["alert_id"]))
                            fields = {}
                        elif line and not line.startswith(":"):
                            name, _, value = line.partition(":")
                            fields[name] = value.lstrip(" ")
                        if self.stop.is_set():
                            return
            except httpx.HTTPError:
                time.sleep(0.2)


@pytest.mark.skipif(not SKAB_FILE.exists(), reason=f"SKAB data not found at {SKAB_FILE}")
def test_skab_alerts_reach_the_api_and_its_stream_and_survive_a_10s_api_outage(broker, tmp_path):
    topics = broker.unique_topics("api", FLOW_TOPICS)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = tmp_path / "api.sqlite3"
    api_log = tmp_path / "api.log"
    api = _start_api(db, port, api_log)
    stream = StreamCollector(url)
    stream.start()
    flow_log = tmp_path / "flow.log"
    flow = start_flow(flow_env(
        broker.bootstrap, topics, api_url=url, api_token=TOKEN, api_score_interval="1s",
        api_heartbeat_stale="4s", **ONE_HZ,
    ), flow_log)
    try:
        replay = subprocess.Popen(
            [sys.executable, "-m", "flows.replay", str(SKAB_FILE), "--brokers",
             broker.bootstrap, "--topic", topics["readings"], "--speed", "60", "--no-progress"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        time.sleep(4)
        kill(api)  # SIGKILL mid-replay: the flow must hold its alerts and retry
        down_at = time.monotonic()
        time.sleep(10)
        api = _start_api(db, port, api_log)
        assert replay.wait(timeout=120) == 0, replay.stdout.read()  # type: ignore[union-attr]

        def topic_alerts() -> list[Alert]:
            return [a for _, a in read_decoded(broker.bootstrap, topics["alerts"], Alert,
                                               timeout=5)]

        def api_has_all() -> bool:
            on_topic = topic_alerts()
            stored = httpx.get(f"{url}/v1/alerts", params={"limit": 500}).json()["items"]
            final = {a.alert_id: a.status for a in on_topic if a.status == "resolved"}
            return bool(on_topic) and {a["alert_id"] for a in stored} == {
                a.alert_id for a in on_topic
            } and all(s["status"] == "resolved" for s in stored if s["alert_id"] in final)

        assert wait_for(api_has_all, 60, interval=1), flow_log.read_text()[-3000:]
        on_topic = topic_alerts()
        ids = {a.alert_id for a in on_topic}
        assert "push of alerts to" in flow_log.read_text(), "no alert was pending in the outage"
        assert time.monotonic() - down_at > 10
        # the SSE stream, reconnecting across the outage, saw every alert with no gap in ids
        assert wait_for(lambda: {e[2] for e in stream.events} == ids, 10)
        event_ids = [e[0] for e in stream.events]
        assert event_ids == list(range(1, len(event_ids) + 1))
        assert stream.connects >= 2
        ready = httpx.get(f"{url}/ready").json()
        assert ready["status"] == "ready" and not ready["flow"]["stale"]
        sensor = httpx.get(f"{url}/v1/sensors/skab-valve1-0").json()
        assert sensor["last_score"] is not None and sensor["model_version"]
    finally:
        stream.stop.set()
        if flow.poll() is None:
            flow.send_signal(signal.SIGTERM)
            try:
                flow.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kill(flow)
        if api.poll() is None:
            api.terminate()
            api.wait(timeout=10)
