"""The flow's Prometheus metrics, updated by the real dataflow (in process, bytewax.testing).

The end-to-end check over HTTP, against the real processes, is tests/test_stack.py.
"""

from __future__ import annotations

import time

from flowkit import encode_all, run_flow, synthetic_readings, to_batches
from prometheus_client import REGISTRY

from flows import metrics
from flows.decode import RawBatch


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _stamped(batches: list[RawBatch], produced_ms: int) -> list[RawBatch]:
    return [RawBatch(b.topic, b.partition, b.offsets, b.values, produced_ms) for b in batches]


def test_a_run_counts_readings_windows_scores_alerts_and_times_latency_and_inference():
    names = [
        ("vigil_readings_total", {}), ("vigil_windows_total", {}),
        ("vigil_scores_total", {"anomalous": "true"}),
        ("vigil_alert_latency_seconds_count", {}), ("vigil_alert_latency_seconds_sum", {}),
        ("vigil_alert_event_lag_seconds_count", {}),
        ("vigil_scoring_latency_seconds_count", {}),
        ("vigil_inference_seconds_count", {"detector": "zscore"}),
        ("vigil_snapshot_seconds_count", {"step": "score_windows"}),
    ]
    before = {n: _value(n, **lb) for n, lb in names}
    alerts_before = sum(
        _value("vigil_alerts_total", severity=s, status="open") for s in ("warning", "critical")
    )
    records = encode_all(synthetic_readings())
    produced = round(time.time() * 1000) - 3000  # produced 3 s ago
    got = run_flow(_stamped(to_batches(records), produced))
    assert got.alerts
    delta = {n: _value(n, **lb) - before[n] for n, lb in names}
    assert delta["vigil_readings_total"] == len(records)
    assert delta["vigil_windows_total"] == len(got.windows)
    assert delta["vigil_scores_total"] == sum(1 for s in got.scores if s.anomalous)
    opened = sum(
        _value("vigil_alerts_total", severity=s, status="open") for s in ("warning", "critical")
    ) - alerts_before
    assert opened == sum(1 for a in got.alerts if a.status == "open")
    assert delta["vigil_alert_latency_seconds_count"] == len(got.alerts)
    assert delta["vigil_alert_event_lag_seconds_count"] == len(got.alerts)
    assert delta["vigil_scoring_latency_seconds_count"] > 0
    assert delta["vigil_inference_seconds_count"] > 0
    assert delta["vigil_snapshot_seconds_count"] > 0
    # produced 3 s before the run: every alert's latency is at least that
    assert delta["vigil_alert_latency_seconds_sum"] >= 3.0 * len(got.alerts)
    assert _value("vigil_model_info", version="zscore-1") == 1.0


def test_batches_without_a_kafka_timestamp_add_no_latency_observation():
    before = _value("vigil_scoring_latency_seconds_count")
    run_flow(to_batches(encode_all(synthetic_readings(sensors=2, seconds=300))))
    assert _value("vigil_scoring_latency_seconds_count") == before


def test_dead_letters_are_counted_by_reason_once_per_batch():
    before = {r: _value("vigil_dead_letters_total", reason=r)
              for r in ("malformed_json", "empty_record")}
    run_flow([RawBatch("readings", 0, [0, 1, 2], [b"{nope", b"", b"{also bad"])])
    assert _value("vigil_dead_letters_total", reason="malformed_json") - before[
        "malformed_json"] == 2
    assert _value("vigil_dead_letters_total", reason="empty_record") - before["empty_record"] == 1


def test_the_model_gauge_follows_hot_reloads_across_shards():
    metrics.model_switched("m-1", None)
    metrics.model_switched("m-1", None)
    assert _value("vigil_model_info", version="m-1") == 1.0
    metrics.model_switched("m-2", "m-1")  # one shard switched: both versions in use
    assert _value("vigil_model_info", version="m-1") == 1.0
    assert _value("vigil_model_info", version="m-2") == 1.0
    metrics.model_switched("m-2", "m-1")  # the last shard switched: m-1 disappears
    assert REGISTRY.get_sample_value("vigil_model_info", {"version": "m-1"}) is None
    assert _value("vigil_model_info", version="m-2") == 1.0


def test_a_timed_detector_keeps_the_wrapped_detectors_name_version_and_state():
    from detectors.zscore import RobustZScore

    inner = RobustZScore(6.0, 60, 10)
    (timed,) = metrics.timed([inner])
    assert metrics.timed([timed])[0] is timed  # never wrapped twice
    assert (timed.name, timed.version) == (inner.name, inner.version)
    assert timed.snapshot() == inner.snapshot()
    before = _value("vigil_inference_seconds_count", detector=inner.name)
    assert timed.score_and_learn([]) == []
    assert _value("vigil_inference_seconds_count", detector=inner.name) == before + 1
    assert timed.score_batch([]).to_list() == []  # the columns the ensemble asks for
    assert _value("vigil_inference_seconds_count", detector=inner.name) == before + 2
