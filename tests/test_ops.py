"""Prometheus alert rules and the Grafana dashboard in ops/: they parse, use only metrics the
flow and the API export, cover what operators need, and (with promtool) fire when they should.

That the names are really served is checked against live /metrics in tests/test_stack.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bench import compose_check as cc

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "ops/prometheus/rules/vigil.rules.yml"
PROM_CONFIG = ROOT / "ops/prometheus/prometheus.yml"
DASHBOARD = ROOT / "ops/grafana/dashboards/vigil.json"
DATASOURCES = ROOT / "ops/grafana/provisioning/datasources/prometheus.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed "
                                    "(apt-get install prometheus)")


def _rules() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"]}


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_alert_rules_cover_flow_down_lag_latency_dead_letters_and_api_not_ingesting():
    assert set(_rules()) == {
        "VigilFlowDown", "VigilApiDown", "VigilConsumerLagGrowing", "VigilLatencyP95OverBudget",
        "VigilDeadLetterSpike", "VigilApiNotIngestingAlerts",
    }
    assert all(r["labels"]["severity"] in ("warning", "critical") for r in _rules().values())


def test_alert_rules_parse_and_use_only_exported_metrics():
    assert cc.check_rules(RULES) == []


def test_the_dashboard_queries_only_exported_metrics_of_the_provisioned_datasource():
    uids = {d["uid"] for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    assert uids == {"vigil-prometheus"}
    assert cc.check_dashboard(DASHBOARD, uids) == []


def test_the_dashboard_shows_throughput_lag_latency_quantiles_dead_letters_alerts_score_model():
    exprs = {title: [] for title, _, _ in cc.dashboard_queries(_dashboard())}
    for title, _, expr in cc.dashboard_queries(_dashboard()):
        exprs[title].append(expr)
    text = "\n".join(e for es in exprs.values() for e in es)
    for name in ("vigil_readings_total", "vigil_consumer_lag_messages",
                 "vigil_dead_letters_total", "vigil_alerts_total", "vigil_api_sensor_score",
                 "vigil_model_info"):
        assert name in text, name
    latency = exprs["Scoring latency (Kafka timestamp -> scored)"]
    assert [re.search(r"histogram_quantile\((0\.\d+)", e)[1] for e in latency] == [
        "0.5", "0.95", "0.99"
    ]
    assert any("by (severity)" in e for e in exprs["Alerts by severity"])
    (sensor,) = _dashboard()["templating"]["list"]
    assert sensor["name"] == "sensor"
    assert sensor["query"]["query"] == "label_values(vigil_api_sensor_score, sensor_id)"
    assert any("$sensor" in e for e in exprs["Score of sensor $sensor"])


def test_a_dashboard_with_an_unknown_metric_or_datasource_is_reported(tmp_path):
    dash = _dashboard()
    dash["panels"][0]["targets"][0]["expr"] = "rate(vigil_readingz_total[5m])"
    dash["panels"][1]["targets"][0]["datasource"] = {"type": "prometheus", "uid": "other"}
    path = tmp_path / "d.json"
    path.write_text(json.dumps(dash))
    text = "\n".join(cc.check_dashboard(path, {"vigil-prometheus"}))
    assert "Throughput: uses metric 'vigil_readingz_total'" in text
    assert "Consumer lag: datasource uid 'other' is not provisioned" in text


def test_rules_without_summary_or_with_unknown_metrics_are_reported(tmp_path):
    path = tmp_path / "r.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"alert": "X", "expr": "vigil_nope_total > 0"},
        {"alert": "Y"},
    ]}]}))
    text = "\n".join(cc.check_rules(path))
    assert "X: no summary annotation" in text
    assert "X: uses metric 'vigil_nope_total'" in text
    assert "Y: needs `alert` (or `record`) and `expr`" in text


# --- promtool: syntax, config, and unit tests of every rule --------------------------------------


@needs_promtool
def test_promtool_accepts_the_rules_and_the_config_with_its_rule_paths(tmp_path):
    ok = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    config = yaml.safe_load(PROM_CONFIG.read_text())
    # the container path of each rule file, mapped back to the repository as compose mounts it
    compose = cc.resolve(cc.load_compose(ROOT / "compose.yaml"), {"VIGIL_API_TOKEN": "x"})
    mounts = cc.bind_mounts(compose, ROOT)
    config["rule_files"] = [str(cc.host_path(mounts, "prometheus", p)) for p in
                            config["rule_files"]]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    ok = subprocess.run([PROMTOOL, "check", "config", str(local)], capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr


FLOW = 'job="vigil-flow",instance="detect:9100"'
CASES = [
    # (alert, input series, eval time, labels of the expected alert or None for "no alert")
    ("VigilFlowDown", [(f"up{{{FLOW}}}", "0x10")], "5m",
     {"job": "vigil-flow", "instance": "detect:9100"}),
    ("VigilFlowDown", [(f"up{{{FLOW}}}", "1x10")], "5m", None),
    ("VigilApiDown", [('up{job="vigil-api",instance="api:8000"}', "0x10")], "5m",
     {"job": "vigil-api", "instance": "api:8000"}),
    ("VigilConsumerLagGrowing",
     [(f'vigil_consumer_lag_messages{{{FLOW},topic="readings",partition="0"}}', "0+500x40")],
     "30m", {"job": "vigil-flow", "topic": "readings"}),
    ("VigilConsumerLagGrowing",  # a large but shrinking backlog is being worked off
     [(f'vigil_consumer_lag_messages{{{FLOW},topic="readings",partition="0"}}',
       "50000-500x40")], "30m", None),
    ("VigilLatencyP95OverBudget", [
        (f'vigil_scoring_latency_seconds_bucket{{{FLOW},le="5.0"}}', "0x40"),
        (f'vigil_scoring_latency_seconds_bucket{{{FLOW},le="10.0"}}', "0+60x40"),
        (f'vigil_scoring_latency_seconds_bucket{{{FLOW},le="+Inf"}}', "0+60x40"),
    ], "25m", {"job": "vigil-flow"}),
    ("VigilLatencyP95OverBudget", [
        (f'vigil_scoring_latency_seconds_bucket{{{FLOW},le="1.0"}}', "0+60x40"),
        (f'vigil_scoring_latency_seconds_bucket{{{FLOW},le="+Inf"}}', "0+60x40"),
    ], "25m", None),
    ("VigilDeadLetterSpike", [
        (f"vigil_readings_total{{{FLOW}}}", "0+600x40"),
        (f'vigil_dead_letters_total{{{FLOW},reason="malformed_json"}}', "0+60x40"),
    ], "20m", {"job": "vigil-flow"}),
    ("VigilDeadLetterSpike", [  # 0.1% late readings is normal
        (f"vigil_readings_total{{{FLOW}}}", "0+60000x40"),
        (f'vigil_dead_letters_total{{{FLOW},reason="late"}}', "0+60x40"),
    ], "20m", None),
    ("VigilApiNotIngestingAlerts", [
        (f'vigil_alerts_total{{{FLOW},severity="warning",status="open"}}', "0+1x40"),
        ('vigil_api_ingested_total{job="vigil-api",kind="alerts",outcome="created"}', "0x40"),
    ], "30m", {}),
    ("VigilApiNotIngestingAlerts", [  # the API never exported the series at all
        (f'vigil_alerts_total{{{FLOW},severity="warning",status="open"}}', "0+1x40"),
    ], "30m", {}),
    ("VigilApiNotIngestingAlerts", [
        (f'vigil_alerts_total{{{FLOW},severity="warning",status="open"}}', "0+1x40"),
        ('vigil_api_ingested_total{job="vigil-api",kind="alerts",outcome="created"}',
         "0+1x40"),
    ], "30m", None),
]


def _expected(rule: dict, labels: dict[str, str]) -> dict:
    def render(text: str) -> str:
        return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), text)

    return {
        "exp_labels": {**labels, "severity": rule["labels"]["severity"]},
        "exp_annotations": {k: render(v) for k, v in rule["annotations"].items()},
    }


@needs_promtool
def test_promtool_unit_tests_show_each_rule_fires_when_it_should_and_not_otherwise(tmp_path):
    rules = _rules()
    tests = []
    for alert, series, at, labels in CASES:
        tests.append({
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series],
            "alert_rule_test": [{
                "eval_time": at, "alertname": alert,
                "exp_alerts": [] if labels is None else [_expected(rules[alert], labels)],
            }],
        })
    spec = tmp_path / "vigil.rules.test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m",
                                    "tests": tests}))
    out = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
