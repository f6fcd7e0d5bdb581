"""The alerts API over HTTP (Litestar's TestClient) against a real SQLite file."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import timedelta

import pytest
from apikit import AUTH, T0, TOKEN, alert, body, score
from litestar.testing import TestClient

from api import create_app
from api._store import Store
from detectors.defaults import DEFAULT_REGISTRY
from detectors.registry import ModelRegistry
from flows.settings import Settings


def _settings(tmp_path, **kw) -> Settings:
    base = {"api_db": str(tmp_path / "api.sqlite3"), "api_token": TOKEN}
    return Settings(**{**base, **kw})


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(_settings(tmp_path))) as c:
        yield c


def _post(client, records, path="/v1/alerts", headers=AUTH):
    return client.post(path, content=body(records),
                       headers={**headers, "content-type": "application/json"})


# --- ingest, idempotency, lifecycle merge -----------------------------------------------------

def test_ingest_stores_each_alert_once_and_a_resent_batch_changes_nothing(client, tmp_path):
    batch = [alert(i) for i in range(5)]
    first = _post(client, batch)
    assert first.status_code == 200
    assert first.json() == {"received": 5, "created": 5, "updated": 0, "unchanged": 0}
    again = _post(client, batch + batch)
    assert again.json() == {"received": 10, "created": 0, "updated": 0, "unchanged": 10}
    db = sqlite3.connect(tmp_path / "api.sqlite3")
    assert db.execute("SELECT count(*) FROM alerts").fetchone()[0] == 5
    assert db.execute("SELECT count(*) FROM alert_events").fetchone()[0] == 5


def test_a_stale_open_after_its_resolved_does_not_reopen_the_alert(client):
    _post(client, [alert(1, status="resolved", end_minutes=5, score=4.0)])
    r = _post(client, [alert(1, status="open", end_minutes=1, score=2.0)])
    assert r.json()["unchanged"] == 1
    a = client.get("/v1/alerts/a00001").json()
    assert (a["status"], a["flow_status"], a["resolved_by"]) == ("resolved", "resolved", "flow")
    assert a["score"] == 4.0 and a["end"] == "2024-05-01T00:06:00Z"


def test_resolved_after_open_resolves_and_widens_the_span(client):
    _post(client, [alert(1, end_minutes=1)])
    r = _post(client, [alert(1, status="resolved", end_minutes=9, severity="critical")])
    assert r.json() == {"received": 1, "created": 0, "updated": 1, "unchanged": 0}
    a = client.get("/v1/alerts/a00001").json()
    assert a["status"] == "resolved" and a["severity"] == "critical"
    assert a["end"] == "2024-05-01T00:10:00Z" and a["resolved_at"] is not None


# --- auth, size, validation -------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/alerts"), ("POST", "/v1/scores"), ("PATCH", "/v1/alerts/a00001"),
    ("POST", "/v1/models/v1/activate"), ("POST", "/v1/heartbeat"),
])
def test_every_write_endpoint_needs_the_bearer_token(client, method, path):
    for headers, why in (({}, "missing bearer token"),
                         ({"Authorization": "Bearer nope"}, "invalid bearer token"),
                         ({"Authorization": f"Basic {TOKEN}"}, "missing bearer token")):
        r = client.request(method, path, content=b"[]", headers=headers)
        assert r.status_code == 401, (path, headers)
        assert why in r.json()["detail"]
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_an_api_without_a_configured_token_refuses_all_writes(tmp_path):
    with TestClient(create_app(_settings(tmp_path, api_token=""))) as c:
        r = _post(c, [alert(1)], headers={"Authorization": "Bearer "})
        assert r.status_code == 401 and "no VIGIL_API_TOKEN" in r.json()["detail"]
        assert c.get("/v1/alerts").status_code == 200


READS = ["/v1/alerts", "/v1/alerts/a00001", "/v1/alerts/stream", "/v1/sensors",
         "/v1/sensors/pump-1", "/v1/sensors/pump-1/scores", "/v1/models"]


@pytest.mark.parametrize("path", READS)
def test_with_auth_reads_every_v1_read_needs_the_token_and_probes_stay_open(tmp_path, path):
    with TestClient(create_app(_settings(tmp_path, api_auth_reads=True))) as c:
        _post(c, [alert(1)])
        _post(c, [score("pump-1", 1)], path="/v1/scores")
        for headers, why in (({}, "missing bearer token"),
                             ({"Authorization": "Bearer nope"}, "invalid bearer token")):
            r = c.get(path, headers=headers)
            assert r.status_code == 401 and why in r.json()["detail"], (path, headers)
            assert r.headers["www-authenticate"] == 'Bearer realm="vigil"'
        if path.endswith("/stream"):
            return  # an open stream never ends; its guard is the one checked above
        assert c.get(path, headers=AUTH).status_code == 200
        for open_path in ("/health", "/ready", "/metrics", "/ui/", "/ui/app.js"):
            assert c.get(open_path).status_code == 200, open_path


@pytest.mark.parametrize("path", [p for p in READS if not p.endswith("/stream")])
def test_without_auth_reads_reads_are_open(client, path):
    _post(client, [alert(1)])
    _post(client, [score("pump-1", 1)], path="/v1/scores")
    assert client.get(path).status_code == 200


def test_python_m_api_refuses_auth_reads_without_a_token(monkeypatch, capsys):
    from api.__main__ import main

    monkeypatch.setenv("VIGIL_API_AUTH_READS", "true")
    monkeypatch.delenv("VIGIL_API_TOKEN", raising=False)
    assert main([]) == 2
    assert "VIGIL_API_AUTH_READS needs VIGIL_API_TOKEN" in capsys.readouterr().err


def test_a_body_above_the_size_limit_gets_413(tmp_path):
    with TestClient(create_app(_settings(tmp_path, api_max_body_bytes=4096))) as c:
        big = [alert(i) for i in range(40)]
        assert len(body(big)) > 4096
        assert _post(c, big).status_code == 413
        assert _post(c, big[:5]).status_code == 200


def test_an_invalid_alert_gets_422_naming_the_field(client):
    bad = json.loads(body([alert(1), alert(2)]))
    bad[1]["score"] = "high"
    r = client.post("/v1/alerts", json=bad, headers=AUTH)
    assert r.status_code == 422
    assert "Expected `float`, got `str` - at `$[1].score`" in r.json()["detail"]
    del bad[1]["score"]
    bad[0]["severity"] = "meh"
    r = client.post("/v1/alerts", json=bad, headers=AUTH)
    assert r.status_code == 422 and "$[0].severity" in r.json()["detail"]
    assert client.get("/v1/alerts").json()["items"] == []  # nothing of a bad batch is stored
    r = client.post("/v1/alerts", content=b'[{"alert_id": ', headers=AUTH)
    assert r.status_code == 422 and "not valid JSON: Input data was truncated" in r.json()["detail"]


def test_page_size_above_the_hard_limit_and_foreign_cursors_get_422(client):
    r = client.get("/v1/alerts", params={"limit": 501})
    assert r.status_code == 422 and "<= 500" in r.json()["detail"]
    r = client.get("/v1/alerts", params={"cursor": "bm90LWEtY3Vyc29y"})
    assert r.status_code == 422 and "next_cursor" in r.json()["detail"]
    r = client.get("/v1/alerts", params={"since": "2024-05-02T00:00:00Z",
                                         "until": "2024-05-01T00:00:00Z"})
    assert r.status_code == 422 and "earlier than" in r.json()["detail"]


# --- queries and pagination -------------------------------------------------------------------

def _walk(client, params, limit):
    seen, cursor, pages = [], None, 0
    while True:
        q = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/alerts", params=q).json()
        seen += [a["alert_id"] for a in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return seen, pages


def test_pages_cover_every_alert_once_newest_first_even_with_ties_and_concurrent_ingest(client):
    # 137 alerts, many sharing a start time, so the tie-break on alert_id matters
    batch = [alert(i, minutes=i // 4) for i in range(137)]
    _post(client, batch)
    seen, cursor = [], None
    while True:
        q = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/alerts", params=q).json()
        seen += [a["alert_id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if len(seen) == 50:  # newer alerts and updates arrive mid-walk
            _post(client, [alert(1000 + i, minutes=500) for i in range(5)])
            _post(client, [alert(3, status="resolved")])
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 137
    assert set(seen) == {a.alert_id for a in batch}
    keys = [(b.start, b.alert_id) for b in sorted(batch, key=lambda a: (a.start, a.alert_id),
                                                  reverse=True)]
    assert seen == [k[1] for k in keys]


def test_filters_by_sensor_severity_status_detector_and_time_range(client):
    _post(client, [
        alert(1, sensor="a", severity="critical"), alert(2, sensor="b"),
        alert(3, sensor="a", detectors=("lstm_ae",)), alert(4, sensor="a", status="resolved"),
        alert(5, sensor="b", detectors=("lstm_ae", "zscore"), minutes=120),
    ])

    def ids(**params):
        return sorted(a["alert_id"][-1] for a in
                      client.get("/v1/alerts", params=params).json()["items"])

    assert ids(sensor_id="a") == ["1", "3", "4"]
    assert ids(severity="critical") == ["1"]
    assert ids(status="resolved") == ["4"]
    assert ids(status="open", sensor_id="b") == ["2", "5"]
    assert ids(detector="lstm_ae") == ["3", "5"]
    assert ids(since="2024-05-01T01:00:00Z") == ["5"]
    assert ids(until="2024-05-01T00:03:00Z") == ["1", "2"]
    assert ids(since="2024-05-01T00:03:30Z", until="2024-05-01T00:05:00Z") == ["3", "4"]
    walked, pages = _walk(client, {"sensor_id": "a"}, 2)
    assert sorted(walked) == ["a00001", "a00003", "a00004"] and pages == 2


@pytest.mark.parametrize("path", [
    "/v1/alerts?until=2024-05-01T00:03:00Z&until=1714564800",  # a number past the RFC 3339 check
    "/v1/alerts?sensor_id=a&sensor_id=b",
    "/v1/sensors/pump-1/scores?since=2024-05-01T00:00:00Z&since=2024-05-02T00:00:00Z",
])
def test_a_query_parameter_given_twice_is_refused_with_its_name(client, path):
    """Every query parameter takes one value; Litestar would silently keep one of two."""
    r = client.get(path)
    assert r.status_code == 422, r.text
    assert "is given 2 times; give it once" in r.json()["detail"]


def test_get_one_alert_and_404_for_an_unknown_id(client):
    _post(client, [alert(7)])
    a = client.get("/v1/alerts/a00007").json()
    assert a["sensor_id"] == "pump-1" and a["status"] == "open" and a["detectors"] == ["zscore"]
    r = client.get("/v1/alerts/nope")
    assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_patch_acknowledges_then_resolves_and_a_resolved_alert_cannot_be_acknowledged(client):
    _post(client, [alert(1)])
    r = client.patch("/v1/alerts/a00001", json={"status": "acknowledged", "by": "alice"},
                     headers=AUTH)
    assert r.status_code == 200
    assert r.json()["status"] == "acknowledged" and r.json()["acknowledged_by"] == "alice"
    _post(client, [alert(1, end_minutes=3)])  # the flow's update keeps the acknowledgement
    assert client.get("/v1/alerts/a00001").json()["status"] == "acknowledged"
    r = client.patch("/v1/alerts/a00001",
                     json={"status": "resolved", "by": "bob", "note": "valve replaced"},
                     headers=AUTH)
    a = r.json()
    assert (a["status"], a["resolved_by"], a["note"]) == ("resolved", "bob", "valve replaced")
    r = client.patch("/v1/alerts/a00001", json={"status": "acknowledged", "by": "c"},
                     headers=AUTH)
    assert r.status_code == 409 and "already resolved" in r.json()["detail"]
    r = client.patch("/v1/alerts/zzz", json={"status": "resolved", "by": "c"}, headers=AUTH)
    assert r.status_code == 404
    r = client.patch("/v1/alerts/a00001", json={"status": "resolved"}, headers=AUTH)
    assert r.status_code == 422 and "`by`" in r.json()["detail"]


# --- sensors and scores -----------------------------------------------------------------------

def test_sensors_show_last_seen_last_score_open_alerts_and_model_version(client):
    _post(client, [score("s1", m, 0.1 * m) for m in range(1, 11)] + [score("s2", 5)],
          path="/v1/scores")
    _post(client, [alert(1, sensor="s1"), alert(2, sensor="s1", status="resolved"),
                   alert(3, sensor="s3")])
    page = client.get("/v1/sensors").json()
    assert [s["sensor_id"] for s in page["items"]] == ["s1", "s2", "s3"]
    s1 = client.get("/v1/sensors/s1").json()
    assert s1["last_seen"] == "2024-05-01T00:10:00Z" and s1["last_score"] == pytest.approx(1.0)
    assert s1["open_alerts"] == 1 and s1["model_version"] == "zscore-1" and s1["anomalous"]
    assert client.get("/v1/sensors/s3").json()["last_score"] is None
    assert client.get("/v1/sensors/nope").status_code == 404
    first = client.get("/v1/sensors", params={"limit": 2}).json()
    rest = client.get("/v1/sensors", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [s["sensor_id"] for s in first["items"] + rest["items"]] == ["s1", "s2", "s3"]
    assert rest["next_cursor"] is None


def test_score_history_is_filtered_by_time_and_pruned_to_the_retention(tmp_path):
    with TestClient(create_app(_settings(tmp_path, api_score_retention=timedelta(hours=1)))) as c:
        _post(c, [score("s1", m) for m in range(0, 181)], path="/v1/scores")
        _post(c, [score("s1", 100)], path="/v1/scores")  # a re-sent window is stored once
        all_ = c.get("/v1/sensors/s1/scores").json()
        ends = [p["window_end"] for p in all_["items"]]
        assert len(ends) == 61 and ends[0] == "2024-05-01T02:00:00Z" and not all_["truncated"]
        part = c.get("/v1/sensors/s1/scores", params={
            "since": "2024-05-01T02:30:00Z", "until": "2024-05-01T02:40:00Z", "limit": 5,
        }).json()
        assert [p["window_end"][11:16] for p in part["items"]] == [
            "02:30", "02:31", "02:32", "02:33", "02:34"]
        assert part["truncated"]
        assert c.get("/v1/sensors/zz/scores").status_code == 404
        r = c.get("/v1/sensors/s1/scores", params={"limit": 5001})
        assert r.status_code == 422 and "<= 5000" in r.json()["detail"]


# --- models -----------------------------------------------------------------------------------

def test_models_lists_versions_and_activation_switches_the_registry_pointer(tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(DEFAULT_REGISTRY, root)
    reg = ModelRegistry(root)
    v1 = reg.active_version()
    src = tmp_path / "candidate"
    shutil.copytree(reg.active().path, src)
    v2 = reg.add(src).version
    with TestClient(create_app(_settings(tmp_path, model_registry=str(root)))) as c:
        listed = c.get("/v1/models").json()
        assert listed["active"] == v1 and listed["writable"]
        assert [v["version"] for v in listed["versions"]] == [v1, v2]
        assert listed["versions"][0]["validation"]["p99"] > 0
        r = c.post(f"/v1/models/{v2}/activate", headers=AUTH)
        assert r.status_code == 200 and r.json()["active"] == v2
        assert reg.active_version() == v2  # what the flow's hot reload polls
        r = c.post("/v1/models/v0099-deadbeef/activate", headers=AUTH)
        assert r.status_code == 404 and "does not exist" in r.json()["detail"]


def test_activating_in_the_bundled_read_only_registry_is_refused(client):
    assert client.get("/v1/models").json()["writable"] is False
    r = client.post("/v1/models/v0001-2334da8e/activate", headers=AUTH)
    assert r.status_code == 409 and "VIGIL_MODEL_REGISTRY" in r.json()["detail"]


# --- health, readiness, metrics, schema -------------------------------------------------------

def test_health_ready_with_heartbeat_age_and_metrics_by_route(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["flow"]["stale"] is True
    assert client.post("/v1/heartbeat", json={"source": "flow-0"}, headers=AUTH).status_code == 204
    flow = client.get("/ready").json()["flow"]
    assert flow["source"] == "flow-0" and flow["age_seconds"] < 5 and not flow["stale"]
    _post(client, [alert(1), alert(2)])
    _post(client, [alert(1)])
    client.get("/v1/alerts/a00001")
    text = client.get("/metrics").text
    assert 'vigil_api_requests_total{method="GET",route="/v1/alerts/{alert_id}",status="200"} 1.0' \
        in text
    assert 'vigil_api_ingested_total{kind="alerts",outcome="created"} 2.0' in text
    assert 'vigil_api_ingested_total{kind="alerts",outcome="unchanged"} 1.0' in text
    assert "vigil_api_request_seconds_bucket" in text and "vigil_api_stream_subscribers 0.0" in text


def test_ready_reports_the_throughput_the_newest_heartbeat_carried(client):
    beat = {"source": "flow-1", "readings_per_s": 812.5, "dead_letters_per_s": 0.25,
            "lag_messages": 12}
    assert client.post("/v1/heartbeat", json=beat, headers=AUTH).status_code == 204
    flow = client.get("/ready").json()["flow"]
    assert {k: flow[k] for k in beat} == beat and not flow["stale"]
    assert client.post("/v1/heartbeat", json={"source": "flow-1"}, headers=AUTH).status_code == 204
    flow = client.get("/ready").json()["flow"]
    assert (flow["readings_per_s"], flow["dead_letters_per_s"], flow["lag_messages"]) == (
        None, None, None)  # a bare heartbeat says nothing about throughput: not a stale figure
    r = client.post("/v1/heartbeat", json={**beat, "lag_messages": -1}, headers=AUTH)
    assert r.status_code == 422 and "lag_messages" in r.json()["detail"]
    r = client.post("/v1/heartbeat", json={**beat, "cpu": 1}, headers=AUTH)
    assert r.status_code == 422 and "cpu" in r.json()["detail"]


def test_the_web_page_is_served_at_ui_with_a_strict_content_security_policy(client):
    for path in ("/", "/ui"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code in (301, 302, 307, 308) and r.headers["location"] == "/ui/", path
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset in ("app.js", "style.css", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css",
                  "favicon.svg"):
        assert f'"{asset}"' in page.text, asset
        r = client.get(f"/ui/{asset}")
        assert r.status_code == 200 and r.content, asset
    assert "text/javascript" in client.get("/ui/app.js").headers["content-type"]
    assert "MIT" in client.get("/ui/vendor/uPlot.LICENSE").text
    assert client.get("/ui/../api/app.py").status_code == 404
    assert "/ui/" not in client.get("/schema/openapi.json").json()["paths"]


def test_ready_is_503_when_the_database_does_not_answer(tmp_path):
    store = Store(tmp_path / "api.sqlite3")
    with TestClient(create_app(_settings(tmp_path), store=store)) as c:
        store._db.close()
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["database"].startswith("error")


def test_openapi_schema_documents_every_route_with_examples(client):
    spec = client.get("/schema/openapi.json").json()
    for path in ("/v1/alerts", "/v1/alerts/{alert_id}", "/v1/alerts/stream", "/v1/sensors",
                 "/v1/sensors/{sensor_id}", "/v1/sensors/{sensor_id}/scores", "/v1/models",
                 "/v1/models/{version}/activate", "/health", "/ready", "/metrics"):
        assert path in spec["paths"], path
    ingest = spec["paths"]["/v1/alerts"]["post"]["requestBody"]["content"]["application/json"]
    assert ingest["schema"]["examples"][0][0]["alert_id"]


def test_migrations_run_once_and_the_database_is_in_wal_mode(tmp_path):
    path = tmp_path / "db.sqlite3"
    s1 = Store(path)
    assert s1.schema_version() == 2
    s1.close()
    s2 = Store(path)
    assert s2.migrate() == []
    s2.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert T0.tzinfo is not None


def test_a_version_1_database_keeps_its_heartbeats_when_migrated(tmp_path, monkeypatch):
    from api import _store

    path = tmp_path / "db.sqlite3"
    monkeypatch.setattr(_store, "MIGRATIONS", _store.MIGRATIONS[:1])
    old = Store(path)
    old._db.execute("INSERT INTO heartbeats VALUES ('flow-old', 1700000000000)")
    old.close()
    monkeypatch.undo()
    new = Store(path)
    assert new.schema_version() == 2
    beat, at_ms = new.last_heartbeat()
    assert (beat.source, at_ms, beat.readings_per_s, beat.lag_messages) == (
        "flow-old", 1700000000000, None, None)
    new.close()


def test_python_m_api_explains_itself_and_refuses_bad_settings(monkeypatch, capsys):
    from api.__main__ import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "VIGIL_API_TOKEN" in capsys.readouterr().out
    monkeypatch.setenv("VIGIL_API_WORKERS", "none")
    assert main([]) == 2
    assert "VIGIL_API_WORKERS='none': expected a whole number" in capsys.readouterr().err
    monkeypatch.delenv("VIGIL_API_WORKERS")
    with pytest.raises(SystemExit) as done:
        main(["--port", "70000"])
    assert done.value.code == 2 and "not a port number" in capsys.readouterr().err
