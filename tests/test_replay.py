"""Replaying files into the readings topic: formats, reading building, pacing, the CLI."""

from __future__ import annotations

import csv
import itertools
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from bench.broker import read_all
from flows.replay import (
    DeliveryFailed,
    Pacer,
    ReplayError,
    detect_format,
    encode_reading,
    iter_readings,
    load_frame,
    plan_replay,
    produce,
)
from flows.schemas import reading_decoder

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
SKAB_VALVE1_0 = DATASETS / "skab" / "valve1" / "0.csv"
NAB_MACHINE = (
    DATASETS / "nab" / "data" / "realKnownCause" / "machine_temperature_system_failure.csv"
)
SKAB_METRICS = [
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
]


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"shared dataset {path} is not present (expected next to the repository)")
    return path


@pytest.fixture
def skab() -> Path:
    return _need(SKAB_VALVE1_0)


@pytest.fixture
def nab() -> Path:
    return _need(NAB_MACHINE)


def _skab_rows(path: Path) -> list[dict[str, str]]:
    """The file read with the csv module: an independent reference for the replay."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter=";"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _env_without_vigil() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.replay", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env if env is not None else _env_without_vigil(),
    )


# --- format detection -------------------------------------------------------------------------


def test_skab_and_nab_files_are_recognised_from_their_headers(skab: Path, nab: Path) -> None:
    assert detect_format(skab) == "skab"
    assert detect_format(nab) == "nab"


def test_a_file_with_sensor_id_and_ts_columns_is_vigil_format(tmp_path: Path) -> None:
    f = _write(tmp_path / "fleet.csv", "sensor_id,ts,temp,anomaly,anomaly_kind\n")
    assert detect_format(f) == "vigil"


def test_an_unknown_header_is_refused_naming_its_columns(tmp_path: Path) -> None:
    f = _write(tmp_path / "x.csv", "when,reading\n2024-01-01,1\n")
    with pytest.raises(ReplayError, match=r"cannot tell the format.*'when', 'reading'"):
        detect_format(f)


def test_forcing_a_format_the_file_lacks_columns_for_fails_clearly(nab: Path) -> None:
    with pytest.raises(ReplayError, match=r"not a skab file, missing column\(s\) \['datetime'\]"):
        load_frame(nab, "skab")


# --- building readings from the real datasets ---------------------------------------------------


def test_skab_file_gives_one_reading_per_row_with_every_sensor_column(skab: Path) -> None:
    rows = _skab_rows(skab)
    readings = list(iter_readings(skab))
    assert len(readings) == len(rows) == 1147
    assert {r.sensor_id for r in readings} == {"skab-valve1-0"}
    for row, r in zip(rows, readings, strict=True):
        assert r.ts == datetime.fromisoformat(row["datetime"]).replace(tzinfo=UTC)
        assert list(r.values) == SKAB_METRICS  # labels anomaly/changepoint are not metrics
        assert r.values == {m: float(row[m]) for m in SKAB_METRICS}


def test_nab_file_gives_value_readings_named_after_category_and_file(nab: Path) -> None:
    readings = list(iter_readings(nab))
    assert len(readings) == 22695
    assert {r.sensor_id for r in readings} == {
        "nab-realKnownCause-machine_temperature_system_failure"
    }
    assert readings[0].ts == datetime(2013, 12, 2, 21, 15, tzinfo=UTC)
    assert readings[0].values == {"value": 73.96732207}
    assert all(list(r.values) == ["value"] for r in readings)


def test_sensor_id_option_replaces_the_id_derived_from_the_path(skab: Path) -> None:
    assert {r.sensor_id for r in iter_readings(skab, sensor_id="pump-7")} == {"pump-7"}


def test_parquet_input_gives_the_same_readings_as_the_csv(skab: Path, tmp_path: Path) -> None:
    pq = tmp_path / "valve1" / "0.parquet"
    pq.parent.mkdir()
    pl.read_csv(skab, separator=";").write_parquet(pq)
    assert detect_format(pq) == "skab"
    assert list(iter_readings(pq)) == list(iter_readings(skab))


def test_naive_timestamps_are_read_in_the_given_time_zone(skab: Path) -> None:
    utc = next(iter_readings(skab))
    moscow = next(iter_readings(skab, tz="Europe/Moscow"))
    assert utc.ts - moscow.ts == timedelta(hours=3)
    assert moscow.ts.utcoffset() == timedelta(0)


def test_an_unknown_time_zone_is_refused(skab: Path) -> None:
    with pytest.raises(ReplayError, match="not an IANA time zone"):
        load_frame(skab, tz="Mars/Olympus")


def test_limit_keeps_the_first_rows_and_shift_puts_the_last_at_the_given_end(skab: Path) -> None:
    original = list(iter_readings(skab))[:10]
    end = datetime(2030, 1, 1, tzinfo=UTC)
    plan = plan_replay(skab, limit=10, shift_to=end)
    shifted = list(plan.readings())
    assert len(shifted) == 10 and shifted[-1].ts == end
    assert [b.ts - a.ts for a, b in itertools.pairwise(shifted)] == [
        b.ts - a.ts for a, b in itertools.pairwise(original)
    ]
    assert [r.values for r in shifted] == [r.values for r in original]


# --- the vigil (simulator) format and untidy rows ---------------------------------------------


def test_vigil_rows_keep_their_sensor_ids_and_drop_label_columns(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "sim.csv",
        "sensor_id,ts,temp,flow,anomaly,anomaly_kind\n"
        "s1,2024-05-01T12:00:00Z,20.5,3.1,false,\n"
        "s2,2024-05-01T14:00:01+02:00,21.0,2.9,true,spike\n",
    )
    readings = list(iter_readings(f))
    assert [r.sensor_id for r in readings] == ["s1", "s2"]
    assert [r.ts for r in readings] == [
        datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC),
        datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC),
    ]
    assert readings[1].values == {"temp": 21.0, "flow": 2.9}


def test_epoch_millisecond_ts_column_is_read_as_utc(tmp_path: Path) -> None:
    f = _write(tmp_path / "ms.csv", "sensor_id,ts,temp\na,1717200000000,1.5\n")
    (r,) = iter_readings(f)
    assert r.ts == datetime(2024, 6, 1, tzinfo=UTC)


def test_missing_values_are_left_out_and_rows_without_any_are_skipped_and_counted(
    tmp_path: Path,
) -> None:
    f = _write(
        tmp_path / "gaps.csv",
        "sensor_id,ts,temp,flow\n"
        "a,2024-05-01T12:00:00Z,1.0,\n"  # flow missing: reading keeps temp only
        "a,2024-05-01T12:00:01Z,,\n"  # nothing: skipped
        "a,2024-05-01T12:00:02Z,NaN,inf\n"  # nothing finite: skipped
        "a,,3.0,3.0\n"  # no time: skipped
        ",2024-05-01T12:00:03Z,4.0,4.0\n"  # no sensor: skipped
        "a,2024-05-01T12:00:04Z,5.0,5.0\n",
    )
    plan = plan_replay(f)
    assert [r.values for r in plan.readings()] == [{"temp": 1.0}, {"temp": 5.0, "flow": 5.0}]
    assert plan.skipped == {"no values": 2, "no timestamp": 1, "no sensor_id": 1}


def test_a_sensor_id_the_wire_schema_would_reject_is_refused_up_front(skab: Path) -> None:
    with pytest.raises(ReplayError, match="sensor ids over 200 characters"):
        plan_replay(skab, sensor_id="x" * 201)


def test_rows_are_replayed_in_file_order_even_when_time_goes_back(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "late.csv",
        "sensor_id,ts,x\na,2024-05-01 12:00:05,1\na,2024-05-01 12:00:01,2\n",
    )
    assert [r.values["x"] for r in iter_readings(f)] == [1.0, 2.0]


def test_encoded_reading_carries_rfc3339_utc_and_decodes_back(skab: Path) -> None:
    reading = next(iter_readings(skab))
    raw = encode_reading(reading)
    assert b'"ts":"2020-03-09T10:14:33Z"' in raw
    assert reading_decoder.decode(raw) == reading


# --- pacing -----------------------------------------------------------------------------------


class _FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_speed_divides_event_time_gaps_and_never_waits_for_older_readings() -> None:
    clock = _FakeClock()
    pacer = Pacer(10.0, clock=clock, wait=clock.wait)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    pacer.pace(t0)
    pacer.pace(t0 + timedelta(seconds=10))  # due 1 s of wall time after the first
    assert clock.now == pytest.approx(101.0)
    pacer.pace(t0 + timedelta(seconds=5))  # older than one already sent: due at once
    assert clock.now == pytest.approx(101.0)
    pacer.pace(t0 + timedelta(seconds=30))
    assert clock.now == pytest.approx(103.0)
    assert max(clock.waits) <= 0.5  # long gaps are waited in short chunks


def test_speed_zero_sends_as_fast_as_possible() -> None:
    clock = _FakeClock()
    pacer = Pacer(0, clock=clock, wait=clock.wait)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for h in range(5):
        pacer.pace(t0 + timedelta(hours=h))
    assert clock.waits == []


class _FakeProducer:
    """Stands in for confluent_kafka.Producer: a bounded queue and scripted delivery results.

    Like librdkafka under load, a ``poll(0)`` does not drain the queue here; only a poll
    that waits (or a flush) does, so a small queue fills up and produce() must retry.
    """

    def __init__(self, capacity: int, fail: set[int] | None = None, unacked: int = 0) -> None:
        self.capacity = capacity
        self.fail = fail or set()
        self.unacked = unacked
        self.queue: list[tuple[str, bytes, Callable[[object, object], None]]] = []
        self.sent: list[tuple[str, bytes]] = []
        self.buffer_errors = 0

    def produce(
        self, topic: str, value: bytes, key: str, on_delivery: Callable[[object, object], None]
    ) -> None:
        if len(self.queue) >= self.capacity:
            self.buffer_errors += 1
            raise BufferError("Local: Queue full")
        self.queue.append((key, value, on_delivery))

    def _serve(self) -> None:
        for key, value, cb in self.queue:
            failed = len(self.sent) in self.fail
            self.sent.append((key, value))
            cb("Broker: Not enough in-sync replicas" if failed else None, None)
        self.queue.clear()

    def poll(self, timeout: float = 0) -> int:
        if timeout > 0 and not self.unacked:
            self._serve()
        return 0

    def flush(self, timeout: float = 0) -> int:
        if self.unacked:
            return self.unacked
        self._serve()
        return 0


def test_a_full_producer_queue_is_waited_out_and_nothing_is_dropped(skab: Path) -> None:
    plan = plan_replay(skab, limit=50)
    fake = _FakeProducer(capacity=3)
    result = produce(fake, "readings", plan, Pacer(0))  # type: ignore[arg-type]
    assert fake.buffer_errors > 0
    assert result.produced == 50
    assert {k for k, _ in fake.sent} == {"skab-valve1-0"}
    assert [reading_decoder.decode(v) for _, v in fake.sent] == list(plan.readings())


def test_rejected_deliveries_fail_the_replay_loudly(skab: Path) -> None:
    plan = plan_replay(skab, limit=20)
    fake = _FakeProducer(capacity=100, fail={3, 7})
    with pytest.raises(DeliveryFailed, match=r"20 readings sent .* 2 rejected \(Broker: Not"):
        produce(fake, "readings", plan, Pacer(0))  # type: ignore[arg-type]


def test_readings_not_acknowledged_by_the_flush_timeout_fail_the_replay(skab: Path) -> None:
    plan = plan_replay(skab, limit=5)
    fake = _FakeProducer(capacity=100, unacked=2)
    with pytest.raises(DeliveryFailed, match="2 not acknowledged within"):
        produce(fake, "readings", plan, Pacer(0), flush_timeout=0.1)  # type: ignore[arg-type]


# --- command line ------------------------------------------------------------------------------


def test_help_lists_every_option() -> None:
    out = _cli("--help")
    assert out.returncode == 0
    for opt in (
        "--format",
        "--sensor-id",
        "--speed",
        "--brokers",
        "--topic",
        "--limit",
        "--shift-to",
        "--tz",
    ):
        assert opt in out.stdout


def test_cli_without_any_broker_says_how_to_give_one(skab: Path) -> None:
    out = _cli(str(skab))
    assert out.returncode == 2
    assert "pass --brokers or set VIGIL_BROKERS" in out.stderr


def test_cli_reports_an_unreadable_file_without_a_traceback(tmp_path: Path) -> None:
    out = _cli(str(tmp_path / "missing.csv"), "--brokers", "127.0.0.1:1")
    assert out.returncode == 2
    assert "no such file" in out.stderr and "Traceback" not in out.stderr


# --- against a broker -------------------------------------------------------------------------


@pytest.mark.integration
def test_replaying_skab_valve1_puts_every_reading_on_the_topic_in_order(broker, skab) -> None:
    topic = broker.unique_topics("replay-skab", {"readings": 2})["readings"]
    out = _cli(str(skab), "--brokers", broker.bootstrap, "--topic", topic, "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "produced:  1147 readings" in out.stdout
    assert "skab-valve1-0" in out.stdout

    messages = read_all(broker.bootstrap, topic, timeout=30, min_count=1147)
    assert len(messages) == 1147
    assert {m.key() for m in messages} == {b"skab-valve1-0"}
    assert len({m.partition() for m in messages}) == 1  # one key, one partition
    messages.sort(key=lambda m: m.offset())
    readings = [reading_decoder.decode(m.value()) for m in messages]
    stamps = [r.ts for r in readings]
    assert stamps == sorted(stamps)
    assert readings == list(iter_readings(skab))


@pytest.mark.integration
def test_replay_to_a_missing_topic_fails_fast_with_a_message(broker, skab) -> None:
    out = _cli(str(skab), "--brokers", broker.bootstrap, "--topic", "no-such-topic-here")
    assert out.returncode == 1
    assert "'no-such-topic-here' does not exist" in out.stderr


@pytest.mark.integration
def test_speed_and_shift_to_now_pace_a_live_replay(broker, skab) -> None:
    topic = broker.unique_topics("replay-speed", {"readings": 1})["readings"]
    out = _cli(
        str(skab),
        *("--brokers", broker.bootstrap, "--topic", topic, "--no-progress"),
        *("--limit", "11", "--speed", "20", "--shift-to", "now"),
    )
    assert out.returncode == 0, out.stderr
    elapsed = float(out.stdout.split("elapsed:")[1].split("s")[0])
    assert elapsed >= 0.45  # 10 one-second gaps at 20x real time = 0.5 s
    readings = [
        reading_decoder.decode(m.value())
        for m in read_all(broker.bootstrap, topic, timeout=10, min_count=11)
    ]
    assert len(readings) == 11
    assert abs(datetime.now(UTC) - readings[-1].ts) < timedelta(seconds=60)
