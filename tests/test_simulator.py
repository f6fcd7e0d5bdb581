"""The simulated fleet: deterministic, random-access, labeled; and its command line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import flows.simulator as simulator
from flows.schemas import Reading, encoder, reading_decoder
from flows.settings import Settings
from flows.simulator import (
    ANOMALY_KINDS,
    DEFAULT_METRICS,
    Fleet,
    InjectedAnomaly,
)

ROOT = Path(__file__).resolve().parents[1]
DAY = timedelta(days=1)


def _matrix(fleet: Fleet, sensor: int, ticks: range) -> np.ndarray:
    """(ticks, metrics) values of one sensor; NaN where it sent nothing."""
    sid = fleet.sensor_ids[sensor]
    out = np.full((len(ticks), len(fleet.metrics)), np.nan)
    for row, i in enumerate(ticks):
        for r in fleet.tick(i):
            if r.sensor_id == sid:
                out[row] = [r.values[m] for m in fleet.metrics]
    return out


def _noise_sigma(sensor: int, fleet: Fleet) -> np.ndarray:
    """Per-metric noise std of a sensor, estimated from an anomaly-free copy of the fleet."""
    clean = Fleet(fleet.sensors, fleet.metrics, fleet.seed, fleet.interval, 0.0, fleet.start)
    values = _matrix(clean, sensor, range(0, 400))
    return np.diff(values, axis=0).std(axis=0) / math.sqrt(2)


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet(sensors=20, seed=7)


@pytest.fixture(scope="module")
def day_anomalies(fleet: Fleet) -> list[InjectedAnomaly]:
    return fleet.anomalies(fleet.tick_time(0), fleet.tick_time(0) + DAY)


def _first(anomalies: list[InjectedAnomaly], kind: str) -> InjectedAnomaly:
    return next(
        a for a in anomalies if a.kind == kind and a.start > datetime(2024, 1, 1, 1, tzinfo=UTC)
    )


def _ticks_of(fleet: Fleet, a: InjectedAnomaly) -> range:
    return range(fleet.tick_index(a.start), fleet.tick_index(a.end))


# --- determinism and random access ---------------------------------------------------------
def test_same_seed_gives_identical_readings() -> None:
    a, b = Fleet(sensors=5, seed=3), Fleet(sensors=5, seed=3)
    for i in (0, 1, 777, 20_000):
        assert a.tick(i) == b.tick(i)
    assert a.anomalies(a.start, a.start + 2 * DAY) == b.anomalies(b.start, b.start + 2 * DAY)


def test_different_seed_gives_different_readings() -> None:
    a, b = Fleet(sensors=5, seed=3), Fleet(sensors=5, seed=4)
    assert all(x.values != y.values for x, y in zip(a.tick(0), b.tick(0), strict=True))
    assert a.anomalies(a.start, a.start + DAY) != b.anomalies(b.start, b.start + DAY)


def test_tick_is_random_access_regardless_of_call_history() -> None:
    cold = Fleet(sensors=8, anomaly_rate=30.0)
    targets = [500, 8639, 8640, 3 * 8640 + 17]  # includes both sides of a block edge
    expected = {i: cold.tick(i) for i in reversed(targets)}
    warm = Fleet(sensors=8, anomaly_rate=30.0)
    for i in range(0, 501):
        warm.tick(i)
    warm.anomalies(warm.start, warm.start + 5 * DAY)
    for i in targets:
        assert warm.tick(i) == expected[i]
        assert warm.tick_labels(i) == cold.tick_labels(i)


def test_readings_are_ordered_by_sensor_id_and_stamped_at_tick_time() -> None:
    fleet = Fleet(
        sensors=12, interval=timedelta(seconds=30), start=datetime(2024, 5, 1, tzinfo=UTC)
    )
    readings = fleet.tick(10)
    ids = [r.sensor_id for r in readings]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert fleet.sensor_ids[:2] == ["sim-0000", "sim-0001"]
    assert all(r.ts == datetime(2024, 5, 1, 0, 5, tzinfo=UTC) for r in readings)
    assert fleet.tick_time(10) == datetime(2024, 5, 1, 0, 5, tzinfo=UTC)


def test_sensor_id_order_matches_numeric_order_for_large_fleets() -> None:
    ids = Fleet(sensors=10_001, anomaly_rate=0).sensor_ids
    assert ids == sorted(ids) and ids[-1] == "sim-10000" and ids[0] == "sim-00000"


def test_tick_index_inverts_tick_time() -> None:
    fleet = Fleet(interval=timedelta(seconds=10))
    for i in (0, 1, 12345):
        assert fleet.tick_index(fleet.tick_time(i)) == i
        assert fleet.tick_index(fleet.tick_time(i) + timedelta(seconds=1)) == i + 1
    assert fleet.tick_index(fleet.start - timedelta(hours=1)) == 0


# --- values ----------------------------------------------------------------------------------
def test_values_are_finite_python_floats_for_every_metric() -> None:
    fleet = Fleet(sensors=30, metrics=("a", "temperature"), anomaly_rate=40.0)
    for i in range(0, 8640, 37):
        for r in fleet.tick(i):
            assert list(r.values) == ["a", "temperature"]
            assert all(type(v) is float and math.isfinite(v) for v in r.values.values())


def test_readings_round_trip_through_the_wire_codec(fleet: Fleet) -> None:
    for r in fleet.tick(123):
        back = reading_decoder.decode(encoder.encode(r))
        assert back == r and isinstance(back, Reading)


def test_signal_has_daily_seasonality() -> None:
    fleet = Fleet(sensors=10, anomaly_rate=0, interval=timedelta(minutes=10))
    day = np.array([[r.values["temperature"] for r in fleet.tick(i)] for i in range(144)])
    sigma = np.diff(day, axis=0).std(axis=0)  # dominated by noise at 10-minute spacing
    assert ((day.max(axis=0) - day.min(axis=0)) > 2 * sigma).all()


# --- injected anomalies ----------------------------------------------------------------------
def test_every_anomaly_kind_appears_within_a_day(day_anomalies: list[InjectedAnomaly]) -> None:
    assert set(Counter(a.kind for a in day_anomalies)) == set(ANOMALY_KINDS)


def test_anomaly_count_follows_the_rate() -> None:
    fleet = Fleet(sensors=20, anomaly_rate=6.0)
    n = len(fleet.anomalies(fleet.start, fleet.start + 5 * DAY))
    assert 0.8 * 600 < n < 1.2 * 600
    assert Fleet(sensors=20, anomaly_rate=0).anomalies(fleet.start, fleet.start + 5 * DAY) == []


def test_anomalies_are_well_formed_and_never_overlap_per_sensor(
    fleet: Fleet, day_anomalies: list[InjectedAnomaly]
) -> None:
    last_end: dict[str, datetime] = {}
    for a in sorted(day_anomalies, key=lambda x: (x.sensor_id, x.start)):
        assert a.start < a.end and a.metrics and set(a.metrics) <= set(fleet.metrics)
        assert a.start.tzinfo is not None
        if a.kind == "dropout":
            assert a.metrics == list(fleet.metrics)
        if a.kind == "spike":
            assert a.end - a.start <= 3 * fleet.interval
        else:
            assert timedelta(minutes=5) <= a.end - a.start <= timedelta(hours=1)
        assert a.start > last_end.get(a.sensor_id, fleet.start - DAY)
        last_end[a.sensor_id] = a.end


def test_anomalies_query_returns_those_overlapping_the_half_open_span(
    fleet: Fleet, day_anomalies: list[InjectedAnomaly]
) -> None:
    a = _first(day_anomalies, "level_shift")
    assert a in fleet.anomalies(a.end - fleet.interval, a.end)
    assert a in fleet.anomalies(a.start - timedelta(hours=2), a.start + fleet.interval)
    assert a not in fleet.anomalies(a.end, a.end + timedelta(hours=1))
    assert a not in fleet.anomalies(a.start - timedelta(hours=1), a.start)
    assert fleet.anomalies(a.end, a.start) == []


def test_tick_labels_match_the_anomalies_list() -> None:
    fleet = Fleet(sensors=10, interval=timedelta(minutes=1), anomaly_rate=24.0)
    ticks = 2 * 1440
    expected: dict[tuple[int, str], str] = {}
    for a in fleet.anomalies(fleet.start, fleet.tick_time(ticks)):
        for i in _ticks_of(fleet, a):
            expected[i, a.sensor_id] = a.kind
    assert expected
    for i in range(ticks):
        labels, kinds = fleet.tick_labels(i), fleet.tick_kinds(i)
        assert list(labels) == fleet.sensor_ids  # every sensor, dropouts included as True
        for sid in fleet.sensor_ids:
            assert labels[sid] == ((i, sid) in expected)
            assert kinds[sid] == expected.get((i, sid))


def test_readings_outside_anomalies_equal_the_anomaly_free_fleet(fleet: Fleet) -> None:
    clean = Fleet(sensors=20, seed=7, anomaly_rate=0.0)
    changed = 0
    for i in range(0, 8640, 7):
        labels = fleet.tick_labels(i)
        noisy = {r.sensor_id: r.values for r in fleet.tick(i)}
        for r in clean.tick(i):
            if not labels[r.sensor_id]:
                assert noisy[r.sensor_id] == r.values
            elif noisy.get(r.sensor_id) != r.values:
                changed += 1
    assert changed > 0


def test_dropout_removes_the_sensors_readings_for_its_span(
    fleet: Fleet, day_anomalies: list[InjectedAnomaly]
) -> None:
    a = _first(day_anomalies, "dropout")
    ticks = _ticks_of(fleet, a)
    for i in (ticks[0], ticks[len(ticks) // 2], ticks[-1]):
        assert a.sensor_id not in {r.sensor_id for r in fleet.tick(i)}
        assert len(fleet.tick(i)) < fleet.sensors
        assert fleet.tick_labels(i)[a.sensor_id] is True
    for i in (ticks[0] - 1, ticks[-1] + 1):
        assert a.sensor_id in {r.sensor_id for r in fleet.tick(i)}


def test_stuck_values_are_constant_over_the_span(
    fleet: Fleet, day_anomalies: list[InjectedAnomaly]
) -> None:
    stuck = [a for a in day_anomalies if a.kind == "stuck"]
    assert stuck
    for a in stuck[:3]:
        k = fleet.sensor_ids.index(a.sensor_id)
        ticks = _ticks_of(fleet, a)
        values = _matrix(fleet, k, range(ticks[0] - 1, ticks[-1] + 2))
        for j, metric in enumerate(fleet.metrics):
            inside = values[1:-1, j]
            if metric in a.metrics:
                assert (inside == inside[0]).all()
                assert values[0, j] != inside[0] and values[-1, j] != inside[0]
            else:
                assert len(set(inside.tolist())) == len(inside)


def test_spikes_deviate_strongly_from_the_sensors_normal(
    fleet: Fleet, day_anomalies: list[InjectedAnomaly]
) -> None:
    clean = Fleet(sensors=20, seed=7, anomaly_rate=0.0)
    spikes = [a for a in day_anomalies if a.kind == "spike"]
    assert spikes
    for a in spikes[:5]:
        k = fleet.sensor_ids.index(a.sensor_id)
        sigma = _noise_sigma(k, fleet)
        for i in _ticks_of(fleet, a):
            dev = (_matrix(fleet, k, range(i, i + 1)) - _matrix(clean, k, range(i, i + 1)))[0]
            for j, metric in enumerate(fleet.metrics):
                if metric in a.metrics:
                    assert abs(dev[j]) / sigma[j] > 6  # injected at 8..15 sigma
                else:
                    assert dev[j] == 0


def test_level_shift_moves_the_level_by_a_constant_several_sigma(
    fleet: Fleet, day_anomalies: list[InjectedAnomaly]
) -> None:
    clean = Fleet(sensors=20, seed=7, anomaly_rate=0.0)
    a = _first(day_anomalies, "level_shift")
    k = fleet.sensor_ids.index(a.sensor_id)
    ticks = _ticks_of(fleet, a)
    dev = _matrix(fleet, k, ticks) - _matrix(clean, k, ticks)
    sigma = _noise_sigma(k, fleet)
    for j, metric in enumerate(fleet.metrics):
        if metric in a.metrics:
            assert np.allclose(dev[:, j], dev[0, j])
            assert 3 < abs(dev[0, j]) / sigma[j] < 10  # injected at 4..8 sigma
        else:
            assert (dev[:, j] == 0).all()


def test_variance_burst_amplifies_the_noise(
    fleet: Fleet, day_anomalies: list[InjectedAnomaly]
) -> None:
    clean = Fleet(sensors=20, seed=7, anomaly_rate=0.0)
    a = _first(day_anomalies, "variance_burst")
    k = fleet.sensor_ids.index(a.sensor_id)
    ticks = _ticks_of(fleet, a)
    dev = _matrix(fleet, k, ticks) - _matrix(clean, k, ticks)
    sigma = _noise_sigma(k, fleet)
    for j, metric in enumerate(fleet.metrics):
        if metric in a.metrics:
            assert 2.5 < dev[:, j].std() / sigma[j] < 13  # extra noise x4..9
            assert abs(dev[:, j].mean()) < dev[:, j].std()  # no level change
        else:
            assert (dev[:, j] == 0).all()


def test_long_intervals_still_get_anomalies_at_the_daily_rate() -> None:
    fleet = Fleet(sensors=20, interval=timedelta(hours=1), anomaly_rate=2.0)
    found = fleet.anomalies(fleet.start, fleet.start + 20 * DAY)
    assert 0.6 * 800 < len(found) < 1.4 * 800
    assert all(a.end - a.start >= fleet.interval for a in found)


# --- construction ----------------------------------------------------------------------------
def test_from_settings_uses_the_sim_settings() -> None:
    settings = Settings(
        sim_sensors=3, sim_seed=11, sim_interval=timedelta(seconds=1), sim_anomaly_rate=2.5
    )
    start = datetime(2024, 2, 1, tzinfo=UTC)
    fleet = Fleet.from_settings(settings, start)
    assert (fleet.sensors, fleet.seed, fleet.interval, fleet.anomaly_rate, fleet.start) == (
        3,
        11,
        timedelta(seconds=1),
        2.5,
        start,
    )
    assert fleet.metrics == DEFAULT_METRICS
    assert fleet.tick(5) == Fleet(3, DEFAULT_METRICS, 11, timedelta(seconds=1), 2.5, start).tick(5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sensors": 0},
        {"metrics": ()},
        {"metrics": ("a", "a")},
        {"seed": -1},
        {"interval": timedelta(0)},
        {"anomaly_rate": -1.0},
        {"anomaly_rate": math.nan},
        {"start": datetime(2024, 1, 1)},
    ],
)
def test_constructor_rejects_invalid_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Fleet(**kwargs)  # type: ignore[arg-type]


def test_negative_tick_is_rejected() -> None:
    with pytest.raises(ValueError):
        Fleet().tick(-1)


# --- Kafka sink (no broker: a fake producer records what would be sent) ---------------------
class _FakeProducer:
    """Records produce() calls; raises BufferError every ``full_every`` calls like librdkafka."""

    def __init__(self, config: dict[str, object], full_every: int = 0) -> None:
        self.config = config
        self.full_every = full_every
        self.calls = 0
        self.polls = 0
        self.messages: list[tuple[str, bytes, bytes, float]] = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: object) -> None:
        self.calls += 1
        if self.full_every and self.calls % self.full_every == 0:
            raise BufferError("Local: Queue full")
        self.messages.append((topic, key, value, time.perf_counter()))

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0


def _fake_sink(monkeypatch: pytest.MonkeyPatch, rate: float, full_every: int = 0):
    import confluent_kafka

    made: list[_FakeProducer] = []

    def factory(config: dict[str, object]) -> _FakeProducer:
        made.append(_FakeProducer(config, full_every))
        return made[-1]

    monkeypatch.setattr(confluent_kafka, "Producer", factory)
    sink = simulator._KafkaSink({"bootstrap.servers": "x:9092"}, "readings", rate)
    return sink, made[0]


def test_produce_sends_json_readings_keyed_by_sensor_and_retries_a_full_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink, producer = _fake_sink(monkeypatch, rate=0, full_every=7)
    fleet = Fleet(sensors=50)
    readings = [r for i in range(10) for r in fleet.tick(i)]
    sink.send(readings)
    assert sink.close() == 0
    assert producer.config["linger.ms"] == 5
    assert [reading_decoder.decode(m[2]) for m in producer.messages] == readings
    assert [m[1] for m in producer.messages] == [r.sensor_id.encode() for r in readings]
    assert {m[0] for m in producer.messages} == {"readings"}
    assert producer.polls > 0


def test_produce_paces_to_the_requested_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    sink, producer = _fake_sink(monkeypatch, rate=20_000)
    fleet = Fleet(sensors=100, anomaly_rate=0)  # no dropouts: exactly 100 readings a tick
    t0 = time.perf_counter()
    for i in range(60):
        sink.send(fleet.tick(i))
    elapsed = time.perf_counter() - t0
    assert len(producer.messages) == 6000
    assert 0.27 < elapsed < 0.6  # 6000 readings at 20k/s = 0.3 s (slack for busy CI)
    stamps = np.array([m[3] for m in producer.messages]) - producer.messages[0][3]
    ideal = np.arange(len(stamps)) / 20_000
    assert np.abs(stamps - ideal).max() < 0.05  # evenly spread, not one burst per tick


# --- command line ----------------------------------------------------------------------------
def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    return subprocess.run(
        [sys.executable, "-m", "flows.simulator", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_help_describes_the_options() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    for option in ("--sensors", "--duration", "--ticks", "--out", "--produce", "--rate"):
        assert option in result.stdout


def test_cli_writes_parquet_with_documented_columns_and_anomalies_json(tmp_path: Path) -> None:
    out, labels = tmp_path / "fleet.parquet", tmp_path / "anomalies.json"
    result = _cli(
        "--sensors",
        "6",
        "--ticks",
        "400",
        "--seed",
        "3",
        "--anomaly-rate",
        "60",
        "--out",
        str(out),
        "--anomalies-out",
        str(labels),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    df = pl.read_parquet(out)
    assert df.columns == ["sensor_id", "ts", *DEFAULT_METRICS, "anomaly", "anomaly_kind"]
    assert df.schema["ts"] == pl.Datetime("us", "UTC")
    assert df.schema["anomaly_kind"] == pl.String
    fleet = Fleet(sensors=6, seed=3, anomaly_rate=60)
    expected = [r for i in range(400) for r in fleet.tick(i)]
    assert df.height == len(expected)
    assert df["sensor_id"].to_list() == [r.sensor_id for r in expected]
    assert df["ts"].to_list() == [r.ts for r in expected]
    assert df["temperature"].to_list() == [r.values["temperature"] for r in expected]
    kinds = [fleet.tick_kinds(i)[r.sensor_id] for i in range(400) for r in fleet.tick(i)]
    assert df["anomaly_kind"].to_list() == kinds
    assert df["anomaly"].to_list() == [int(k is not None) for k in kinds]
    assert df["anomaly"].sum() > 0
    injected = json.loads(labels.read_text())
    assert injected == json.loads(
        encoder.encode(fleet.anomalies(fleet.start, fleet.tick_time(400)))
    )


def test_cli_writes_csv_with_a_duration_and_custom_metrics(tmp_path: Path) -> None:
    out = tmp_path / "fleet.csv"
    result = _cli(
        "--sensors",
        "2",
        "--metrics",
        "x,y",
        "--interval",
        "1m",
        "--duration",
        "1h",
        "--start",
        "2024-03-01T00:00:00Z",
        "--out",
        str(out),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    df = pl.read_csv(out, try_parse_dates=True)
    assert df.columns == ["sensor_id", "ts", "x", "y", "anomaly", "anomaly_kind"]
    assert df.height <= 2 * 60 and df["ts"].min() == datetime(2024, 3, 1, tzinfo=UTC)


def test_cli_produce_without_a_broker_fails_with_a_clear_message() -> None:
    result = _cli("--produce", "--ticks", "1")
    assert result.returncode == 2
    assert "VIGIL_BROKERS" in result.stderr and "--brokers" in result.stderr


def test_cli_without_an_output_fails_with_a_clear_message() -> None:
    result = _cli("--ticks", "1")
    assert result.returncode == 2 and "--out" in result.stderr


@pytest.mark.integration
def test_cli_produces_every_reading_to_the_broker_keyed_by_sensor(broker) -> None:
    from bench.broker import read_all

    topic = broker.unique_topics("simulator", {"readings": 3})["readings"]
    result = _cli("--produce", "--brokers", broker.bootstrap, "--topic", topic,
                  "--sensors", "10", "--ticks", "30", "--rate", "2000", "--quiet")
    assert result.returncode == 0, result.stderr
    fleet = Fleet(sensors=10)
    expected = [r for i in range(30) for r in fleet.tick(i)]
    got = read_all(broker.bootstrap, topic, timeout=20, min_count=len(expected))
    assert sorted((reading_decoder.decode(m.value()) for m in got),
                  key=lambda r: (r.ts, r.sensor_id)) == expected
    assert all(m.key() == reading_decoder.decode(m.value()).sensor_id.encode() for m in got)
    partitions: dict[bytes, set[int]] = {}
    for m in got:
        partitions.setdefault(m.key(), set()).add(m.partition())
    assert all(len(p) == 1 for p in partitions.values())  # one sensor, one partition
