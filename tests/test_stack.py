"""``python -m bench.stack up`` end to end: broker, topics, API, flow and simulator as real
processes; readings in -> alerts in the API and on the topic -> the flow's /metrics counts
them (parsed with prometheus-client's own parser) -> SIGTERM stops every process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import msgspec
import pytest
import yaml
from integration import ONE_HZ, ROOT, wait_for
from prometheus_client.parser import text_string_to_metric_families
from stackkit import stack_env, stack_up

from bench.broker import port_in_use, read_all
from bench.compose_check import dashboard_queries
from flows.schemas import Alert

pytestmark = pytest.mark.integration


def _samples(text: str) -> dict[str, list]:
    """Metric family name -> its samples, from the Prometheus text format."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _total(samples: list, suffix: str = "", **labels: str) -> float:
    return sum(
        s.value for s in samples
        if s.name.endswith(suffix) and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _served_names(*texts: str) -> set[str]:
    """Every sample name a /metrics text can carry, labelled metrics without samples included
    (their `# TYPE` line is there)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",), "summary": ("_sum", "_count"), "info": ("_info",)}
    names: set[str] = set()
    for text in texts:
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                base = name.removesuffix("_total") if kind == "counter" else name
                names |= {base + s for s in suffixes.get(kind, ("",))}
            elif line and not line.startswith("#"):
                names.add(line.split("{")[0].split()[0])
    return names


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie of an exited child still answers kill(0); its state says it is dead
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][:1] in ("Z", "X")


def test_stack_up_gets_readings_to_alerts_in_the_api_and_topic_and_metrics_then_stops(tmp_path):
    state = tmp_path / "stack"
    with stack_up(
        state, "--sensors", "10", "--rate", "3000", "--interval", "1s", "--anomaly-rate", "150",
        "--snapshot-interval", "1", **ONE_HZ, api_score_interval="1s", log_format="json",
    ) as stack:
        info = stack.info
        api, metrics_url = info["api_url"], info["metrics_url"]
        assert set(info["topics"]) == {"readings", "alerts", "scores", "readings-dead-letter"}

        def api_alerts() -> list[dict]:
            return httpx.get(f"{api}/v1/alerts", params={"limit": 500}).json()["items"]

        assert wait_for(lambda: len(api_alerts()) > 0, 45, interval=0.5), (
            Path(info["logs"]["flow"]).read_text()[-3000:]
        )
        in_api = {a["alert_id"] for a in api_alerts()}
        on_topic = {
            msgspec.json.decode(m.value(), type=Alert).alert_id
            for m in read_all(info["brokers"], "alerts", timeout=10)
        }
        assert in_api and in_api <= on_topic  # the API has what the flow wrote to the topic

        flow = _samples(httpx.get(metrics_url).text)
        assert _total(flow["vigil_readings"], "_total") > 0
        assert _total(flow["vigil_alerts"], "_total") >= len(in_api)
        assert _total(flow["vigil_windows"], "_total") > 0
        buckets = [s for s in flow["vigil_alert_latency_seconds"] if s.name.endswith("_bucket")]
        assert buckets and max(s.value for s in buckets) > 0
        assert _total(flow["vigil_scoring_latency_seconds"], "_count") > 0
        assert _total(flow["vigil_inference_seconds"], "_count", detector="zscore") > 0
        lag = {s.labels["partition"] for s in flow["vigil_consumer_lag_messages"]}
        assert lag == {"0", "1", "2", "3"}
        assert [s.labels["version"] for s in flow["vigil_model_info"]] == ["zscore-1"]
        assert _total(flow["vigil_snapshot_seconds"], "_count", step="score_windows") > 0

        api_text = httpx.get(f"{api}/metrics").text
        api_metrics = _samples(api_text)
        # every metric the dashboard and the alert rules use is really served
        served = _served_names(httpx.get(metrics_url).text, api_text)
        dashboard = json.loads((ROOT / "ops/grafana/dashboards/vigil.json").read_text())
        rules = yaml.safe_load((ROOT / "ops/prometheus/rules/vigil.rules.yml").read_text())
        exprs = [e for _, _, e in dashboard_queries(dashboard)] + [
            r["expr"] for g in rules["groups"] for r in g["rules"]
        ]
        used = {n for e in exprs for n in re.findall(r"\b(vigil_[a-z0-9_]+)", e)}
        assert used and used <= served, used - served
        assert _total(api_metrics["vigil_api_ingested"], "_total", kind="alerts",
                      outcome="created") >= len(in_api)
        assert wait_for(lambda: _samples(httpx.get(f"{api}/metrics").text).get(
            "vigil_api_sensor_score"), 10)
    out = stack.output
    assert stack.proc.returncode == 0, out
    assert "Vigil stack is up" in out and info["api_token"] in out
    assert "stopped; logs are in" in out
    assert all(_gone(pid) for pid in info["pids"].values()), info["pids"]
    for name in ("api", "flow"):  # their logs are JSON lines and hold no token
        text = Path(info["logs"][name]).read_text()
        assert info["api_token"] not in text
        first = text.splitlines()[0]
        assert json.loads(first)["level"]


def test_stack_refuses_a_port_in_use_with_a_clear_message_and_starts_nothing(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "bench.stack", "up", "--state-dir", str(tmp_path / "s"),
             "--api-port", str(taken), "--broker-port", "0", "--metrics-port", "0"],
            cwd=ROOT, env=stack_env(), capture_output=True, text=True, timeout=60,
        )
        assert port_in_use(taken)
    assert out.returncode == 2
    assert f"port {taken} (API) is already in use" in out.stderr
    assert "--api-port" in out.stderr
    assert not (tmp_path / "s").exists()


def test_stack_refuses_a_non_empty_folder_it_did_not_make(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    out = subprocess.run(
        [sys.executable, "-m", "bench.stack", "up", "--state-dir", str(tmp_path),
         "--api-port", "0", "--broker-port", "0", "--metrics-port", "0"],
        cwd=ROOT, env=stack_env(), capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "was not made by `python -m bench.stack`" in out.stderr
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_stack_reports_invalid_settings_before_starting_anything(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "bench.stack", "up", "--state-dir", str(tmp_path / "s")],
        cwd=ROOT, env=stack_env(window_hop="7m"), capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "VIGIL_WINDOW_LENGTH (5m) must be a whole multiple" in (
        out.stderr
    )
    assert not (tmp_path / "s").exists()


def test_stack_help_describes_the_up_command():
    out = subprocess.run([sys.executable, "-m", "bench.stack", "up", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--state-dir", "--brokers", "--api-port", "--metrics-port", "--no-simulator"):
        assert flag in out.stdout
