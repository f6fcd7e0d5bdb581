"""bench.throughput: a small end-to-end run adds up, and its timing maths excludes start-up."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from integration import ROOT

from bench.throughput import _next_poll, _Sample, _span


def _s(t: float, count: int, cpu: float = 0.0) -> _Sample:
    return _Sample(t, count, cpu, None, 0.0)


def test_help_lists_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for option in ("--readings", "--sensors", "--metrics", "--partitions", "--workers",
                   "--processes", "--instances", "--batch-size", "--recovery",
                   "--snapshot-interval", "--repeat", "--brokers", "--json", "--warmup-minutes"):
        assert option in out.stdout


def test_span_starts_at_the_first_poll_that_saw_readings_and_interpolates_the_end() -> None:
    # start-up until t=2 (counter 0), then 1000 readings/s; the counter hits 4000 at t=6.5
    samples = [_s(0.0, 0), _s(1.0, 0), _s(2.5, 500, 1.0), _s(4.5, 2500, 3.0),
               _s(6.5, 4000, 4.5), _s(7.0, 4000, 5.0)]
    first, end = _span(samples, 4000, t_exit=7.2)
    assert first.t == 2.5 and first.count == 500
    assert end.t == pytest.approx(6.5) and end.count == 4000
    assert (end.count - first.count) / (end.t - first.t) == pytest.approx(875.0)
    assert end.flow_cpu == pytest.approx(4.5)


def test_span_of_a_run_that_ended_between_two_polls_ends_at_the_exit() -> None:
    samples = [_s(0.0, 0), _s(0.1, 0), _s(0.2, 600)]
    first, end = _span(samples, 1000, t_exit=0.3)
    assert (first.t, first.count) == (0.1, 0)  # lower bound, so the rate can only be lower
    assert (end.t, end.count) == (0.3, 1000)


def test_after_a_warm_up_the_span_starts_where_the_counter_passed_it() -> None:
    # 1,000 readings/s from t=2; a warm-up of 1,500 readings ends at t=3.5
    samples = [_s(0.0, 0), _s(2.5, 500, 1.0), _s(4.5, 2500, 3.0), _s(6.5, 4500, 5.0),
               _s(7.0, 5000, 5.5)]
    first, end = _span(samples, 4000, t_exit=7.2, skip=1500)
    assert first.t == pytest.approx(3.5) and first.count == 1500
    assert first.flow_cpu == pytest.approx(2.0)  # CPU of the warm-up is not counted
    assert end.t == pytest.approx(6.0) and end.count == 4000
    assert (end.count - first.count) / (end.t - first.t) == pytest.approx(1000.0)
    # no poll before the warm-up's end saw readings: nothing to interpolate from
    assert _span(samples[1:], 4000, 7.2, skip=400)[0].t == 2.5


def test_polls_are_sparse_only_while_no_time_needs_catching() -> None:
    assert _next_poll([_s(0, 0)], 1000, 0.1, 1.0) == 0.1  # waiting for the first reading
    assert _next_poll([_s(0, 0), _s(1, 10)], 1000, 0.1, 1.0) == 0.1  # no rate yet
    mid = [_s(0, 0), _s(1, 10), _s(2, 110)]  # 100/s, 8.9 s to go
    assert _next_poll(mid, 1000, 0.1, 1.0) == 1.0
    near = [_s(0, 0), _s(1, 10), _s(10, 910)]  # 0.9 s to go
    assert _next_poll(near, 1000, 0.1, 1.0) == 0.1
    assert _next_poll([*near, _s(11, 1000)], 1000, 0.1, 1.0) == 0.1  # waiting for the exit
    assert _next_poll(mid, 1000, 0.1, 1.0, skip=150) == 0.1  # a warm-up ends in 0.4 s
    assert _next_poll(mid, 1000, 0.1, 1.0, skip=500) == 1.0  # ... in 3.9 s


@pytest.mark.integration
def test_a_small_benchmark_run_reports_rates_and_consistent_counts(broker, tmp_path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--readings", "20000", "--sensors", "200",
         "--brokers", broker.bootstrap, "--json", str(out), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    (res,) = report["runs"]
    assert report["config"]["readings"] == 20000 and report["produce"]["failed"] == 0
    assert res["readings_per_s"] > 0 and res["e2e_readings_per_s"] > 0
    # e2e spans the consume span, the final flush and the time before the first counted
    # reading (the sustained rate can still be the lower one in a tiny run whose first poll
    # already saw a large share of the readings at a faster start)
    assert res["e2e_readings_per_s"] <= 20000 / (res["consume_s"] + res["drain_s"] - 0.002)
    assert res["wall_s"] >= res["consume_s"] + res["drain_s"] - 0.002  # rounded to ms
    assert res["flow_cpu_s"] > 0 and res["flow_peak_rss_mib"] > 0
    assert res["scores"] > 0
    assert res["dead_letters"] == 0 and res["dead_letter_reasons"] == {}
    # exactly the windows the flow's own FeatureStage computes from the same readings
    cfg = report["config"]
    assert (res["scores"], res["scored_readings"]) == (
        cfg["expected_scores"], cfg["expected_scored_readings"]
    )
    # 5m windows hopping by 1m over ~17 min: most readings sit in five windows, edges in fewer
    assert 3 * 20000 < res["scored_readings"] <= 5 * 20000
    assert res["consistent"] and report["consistent"]
    assert report["readings_per_s"] == res["readings_per_s"]
    assert report["versions"]["bytewax"] and "commit" in report
    assert "readings/s" in run.stdout


@pytest.mark.integration
def test_a_warm_up_is_preloaded_first_read_by_the_flow_and_left_out_of_the_rate(
    broker, tmp_path
) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--readings", "30000", "--sensors", "200",
         "--warmup-minutes", "40", "--brokers", broker.bootstrap, "--json", str(out),
         "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    warm = report["produce"]["warmup_readings"]
    assert 0.8 * 200 * 240 < warm <= 200 * 240  # 40 minutes of 200 sensors, a few dropped
    # every reading was read and scored (the last poll may come before the counter's end)
    assert report["config"]["readings"] == warm + 30000 and report["consistent"]
    assert report["config"]["warmup_readings"] == warm
    (res,) = report["runs"]
    # the timed span covers only the 30,000 after the warm-up
    assert res["readings_per_s"] * res["consume_s"] == pytest.approx(30000, rel=0.02)
    assert "a warm-up not timed" in run.stderr


@pytest.mark.integration
def test_two_detector_sets_alternate_in_one_run_and_each_reaches_the_flow(
    broker, tmp_path
) -> None:
    out, logs = tmp_path / "bench.json", tmp_path / "logs"
    run = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--readings", "20000", "--sensors", "200",
         "--brokers", broker.bootstrap, "--json", str(out), "--no-progress",
         "--detectors", "zscore", "--detectors", "zscore,seasonal", "--log-dir", str(logs)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    variants = report["variants"]
    assert list(variants) == ["zscore", "zscore,seasonal"]
    assert variants["zscore"]["ratio_to_first"] == 1.0
    assert variants["zscore,seasonal"]["ratio_to_first"] > 0
    assert report["config"]["detectors"] == "zscore"
    # the flows really ran those detector sets (their start-up log names them)
    first, second = (logs / "flow-run1-zscore.log"), (logs / "flow-run1-zscore-seasonal.log")
    assert re.search(r"detectors: zscore \(zscore-1\)(?!,)", first.read_text())
    assert "detectors: zscore (zscore-1), seasonal (seasonal-1)" in second.read_text()
    assert "1.00x the first set" in run.stdout


def test_variants_are_every_detector_and_shard_pair_labelled_by_what_varies() -> None:
    from bench.throughput import _variants

    assert _variants([None], [None]) == {None: (None, None)}
    assert _variants(["hst"], [8]) == {None: ("hst", 8)}
    assert _variants(["a", "b"], [None]) == {"a": ("a", None), "b": ("b", None)}
    assert _variants(["a"], [8, 64]) == {"shards=8": ("a", 8), "shards=64": ("a", 64)}
    assert list(_variants(["a", "b"], [8, 64])) == [
        "a shards=8", "a shards=64", "b shards=8", "b shards=64"]


@pytest.mark.integration
def test_two_independent_instances_split_the_partitions_and_score_every_window_once(
    broker, tmp_path
) -> None:
    """--instances 2: two flows, each reading only its partitions (VIGIL_INSTANCE), with
    their own recovery stores. Every window is scored exactly once: if both read every
    partition the scores would double, if one read none they would fall short."""
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--readings", "20000", "--sensors", "200",
         "--partitions", "2", "--instances", "2", "--recovery", "--snapshot-interval", "2",
         "--brokers", broker.bootstrap, "--json", str(out), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    (res,) = report["runs"]
    cfg = report["config"]
    assert cfg["instances"] == 2 and cfg["partitions"] == 2
    assert (res["scores"], res["scored_readings"]) == (
        cfg["expected_scores"], cfg["expected_scored_readings"]
    )
    assert res["consistent"] and res["dead_letters"] == 0


@pytest.mark.integration
def test_an_instance_left_without_partitions_says_how_many_instances_the_topic_allows(
    broker,
) -> None:
    from flows.kafka import instance_partitions
    from flows.settings import Settings

    topic = broker.unique_topics("instances", {"readings": 1})["readings"]
    env = {"VIGIL_BROKERS": broker.bootstrap, "VIGIL_INSTANCES": "2"}
    first = Settings.from_env({**env, "VIGIL_INSTANCE": "0"})
    assert instance_partitions(first, topic) == [0]
    second = Settings.from_env({**env, "VIGIL_INSTANCE": "1"})
    with pytest.raises(RuntimeError, match=r"no partition to read: topic .* has 1; run at most 1"):
        instance_partitions(second, topic)


def test_instance_settings_are_validated_with_the_range_allowed() -> None:
    from flows.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match=r"VIGIL_INSTANCE must be 0..1 with VIGIL_INSTANCES=2"):
        Settings.from_env({"VIGIL_INSTANCES": "2", "VIGIL_INSTANCE": "2"})
    with pytest.raises(SettingsError, match="VIGIL_INSTANCES must be at least 1"):
        Settings.from_env({"VIGIL_INSTANCES": "0"})
