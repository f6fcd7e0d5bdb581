"""Structured logs: one JSON object per line from the flow and the API, secrets never written."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys

import httpx
from apikit import free_port
from integration import ROOT, wait_for

from flows import logs
from flows.settings import Settings

TOKEN = "tok-3f9a1c77e2b54d"
PASSWORD = "pw-91bd22c0aa"


def _logger(settings: Settings) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter(settings.log_format, settings.secrets()))
    log = logging.getLogger(f"vigil.test.{settings.log_format}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    return log, stream


def test_json_lines_carry_level_logger_message_and_sensor_and_alert_ids():
    log, stream = _logger(Settings(log_format="json"))
    log.info("alert %s", "opened", extra={"alert_id": "a1", "sensor_id": "pump-7", "score": 0.9})
    log.warning("line one\nline two")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "INFO" and first["logger"] == "vigil.test.json"
    assert first["msg"] == "alert opened"
    assert (first["alert_id"], first["sensor_id"], first["score"]) == ("a1", "pump-7", 0.9)
    assert first["ts"].endswith("Z")
    assert second["msg"] == "line one\nline two"  # a newline in a message stays inside one line


def test_secrets_are_masked_in_messages_fields_and_tracebacks():
    settings = Settings(log_format="json", api_token=TOKEN, kafka_sasl_password=PASSWORD)
    log, stream = _logger(settings)
    log.info("connecting with %s", TOKEN, extra={"url": f"http://x?token={TOKEN}"})
    try:
        raise RuntimeError(f"auth failed for password {PASSWORD}")
    except RuntimeError:
        log.exception("push failed")
    text = stream.getvalue()
    assert TOKEN not in text and PASSWORD not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["msg"] == "connecting with ***"
    assert lines[0]["url"] == "http://x?token=***"
    assert "auth failed for password ***" in lines[1]["exc"]


def test_text_format_is_one_readable_line_with_fields_and_masks_secrets():
    log, stream = _logger(Settings(log_format="text", api_token=TOKEN))
    log.info("token is %s", TOKEN, extra={"sensor_id": "s1"})
    line = stream.getvalue().strip()
    assert " INFO vigil.test.text token is *** sensor_id=s1" in line
    assert TOKEN not in line


def test_an_unknown_log_format_is_a_clear_settings_error():
    import pytest

    from flows.settings import SettingsError

    with pytest.raises(SettingsError, match="VIGIL_LOG_FORMAT must be json or text"):
        Settings.from_env({"VIGIL_LOG_FORMAT": "xml"})


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update({f"VIGIL_{k.upper()}": v for k, v in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "no log lines"
    bad = []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            bad.append(line)
    assert not bad, f"lines that are not JSON: {bad[:5]}"
    return out


def test_the_flow_logs_json_lines_with_alert_ids_and_never_its_secrets():
    env = _env(
        sim_limit="30000", sim_sensors="10", sim_anomaly_rate="200", sim_interval="1s",
        detectors="zscore", window_length="30s", window_hop="10s", allowed_lateness="5s",
        alert_likelihood="0.9", alert_open_after="1", calibration_warmup="10",
        log_level="DEBUG", api_token=TOKEN, kafka_sasl_password=PASSWORD,
    )
    out = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows.detect"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert TOKEN not in out.stderr + out.stdout and PASSWORD not in out.stderr + out.stdout
    lines = _json_lines(out.stderr)  # logs (and embedded-mode dead letters) on stderr
    records = [r for r in lines if "level" in r]
    assert any(r["msg"].startswith("mode=embedded") for r in records)
    opened = [r for r in records if r["msg"] == "alert opened"]
    assert opened, "no alert was logged"
    assert all(r["alert_id"] and r["sensor_id"].startswith("sim-") for r in opened)


def test_the_api_logs_json_lines_and_never_the_token(tmp_path):
    port = free_port()
    env = _env(api_db=str(tmp_path / "api.sqlite3"), api_port=str(port), api_token=TOKEN,
               log_level="DEBUG")
    log_path = tmp_path / "api.log"
    proc = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env,
                            stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(up, 20), log_path.read_text()[-2000:]
        bad = httpx.post(f"{url}/v1/alerts", json=[], headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        ok = httpx.post(f"{url}/v1/alerts", json=[],
                        headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    text = log_path.read_text()
    assert TOKEN not in text
    records = _json_lines(text)
    assert any(r["logger"] == "vigil.api" and "serving on" in r["msg"] for r in records)
    refused = [r for r in records if r["msg"] == "write refused: invalid bearer token"]
    assert refused and refused[0]["path"] == "/v1/alerts"
    # a 401 is the client's mistake: one warning above, no "Uncaught exception" ERROR
    assert not [r for r in records if r["level"] == "ERROR"], text[-2000:]
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's own lines too
