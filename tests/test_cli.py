"""The shared argparse value parsers in flows.cli: what each accepts, what it rejects and why."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from flows.cli import (
    non_negative_float,
    non_negative_int,
    positive_duration,
    positive_duration_text,
    positive_float,
    positive_int,
    utc_time,
)


def _rejects(parse, text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as err:
        parse(text)
    assert str(err.value) == message


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("42", 42), (" 7 ", 7), ("+3", 3)])
def test_positive_int_accepts_whole_numbers_from_1(text: str, value: int) -> None:
    assert positive_int(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "'0' must be at least 1"),
        ("-2", "'-2' must be at least 1"),
        ("1.5", "'1.5' is not a whole number"),
        ("ten", "'ten' is not a whole number"),
        ("", "'' is not a whole number"),
    ],
)
def test_positive_int_rejects(text: str, message: str) -> None:
    _rejects(positive_int, text, message)


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("7", 7), ("123456789", 123456789)])
def test_non_negative_int_accepts_whole_numbers_from_0(text: str, value: int) -> None:
    assert non_negative_int(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-1", "'-1' must be at least 0"),
        ("2.0", "'2.0' is not a whole number"),
        ("seven", "'seven' is not a whole number"),
    ],
)
def test_non_negative_int_rejects(text: str, message: str) -> None:
    _rejects(non_negative_int, text, message)


@pytest.mark.parametrize(("text", "value"), [("0.1", 0.1), ("2", 2.0), ("1e3", 1000.0)])
def test_positive_float_accepts_finite_numbers_above_0(text: str, value: float) -> None:
    assert positive_float(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "'0' must be positive"),
        ("-0.5", "'-0.5' must be positive"),
        ("nan", "'nan' must be positive"),
        ("inf", "'inf' must be a finite number"),
        ("fast", "'fast' is not a number"),
    ],
)
def test_positive_float_rejects(text: str, message: str) -> None:
    _rejects(positive_float, text, message)


@pytest.mark.parametrize(("text", "value"), [("0", 0.0), ("0.25", 0.25), ("20", 20.0)])
def test_non_negative_float_accepts_finite_numbers_from_0(text: str, value: float) -> None:
    assert non_negative_float(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-1", "'-1' must be a finite number >= 0"),
        ("inf", "'inf' must be a finite number >= 0"),
        ("nan", "'nan' must be a finite number >= 0"),
        ("x2", "'x2' is not a number"),
    ],
)
def test_non_negative_float_rejects(text: str, message: str) -> None:
    _rejects(non_negative_float, text, message)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("10s", timedelta(seconds=10)),
        ("5m", timedelta(minutes=5)),
        ("2d", timedelta(days=2)),
        ("30", timedelta(seconds=30)),
    ],
)
def test_positive_duration_accepts_durations_above_0(text: str, value: timedelta) -> None:
    assert positive_duration(text) == value
    assert positive_duration_text(text) == text


@pytest.mark.parametrize("parse", [positive_duration, positive_duration_text])
def test_positive_durations_reject_zero_and_garbage(parse) -> None:
    _rejects(parse, "0s", "'0s' must be positive")
    with pytest.raises(argparse.ArgumentTypeError, match=r"'soon' is not a duration; use a"):
        parse("soon")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        (" 2024-05-01 ", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-01T15:00:00+03:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ],
)
def test_utc_time_reads_iso_8601_as_aware_utc(text: str, value: datetime) -> None:
    ts = utc_time(text)
    assert ts == value and ts.utcoffset() == timedelta(0)


def test_utc_time_puts_a_naive_time_in_the_given_zone_and_keeps_an_explicit_offset() -> None:
    moscow = ZoneInfo("Europe/Moscow")  # UTC+3 all year
    assert utc_time("2024-05-01T15:00:00", moscow) == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert utc_time("2024-05-01T15:00:00Z", moscow) == datetime(2024, 5, 1, 15, tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "", "0001-01-01T00:00:00+01:00"])
def test_utc_time_rejects(text: str) -> None:
    _rejects(utc_time, text, f"{text!r} is not an ISO 8601 time, e.g. 2024-01-01T00:00:00Z")


def test_argparse_reports_the_message_against_the_option(capsys) -> None:
    ap = argparse.ArgumentParser(prog="vigil-test")
    ap.add_argument("--limit", type=positive_int)
    with pytest.raises(SystemExit) as exit_:
        ap.parse_args(["--limit", "0"])
    assert exit_.value.code == 2
    assert "argument --limit: '0' must be at least 1" in capsys.readouterr().err


def test_replay_shift_to_takes_now_or_a_time_naive_in_the_files_zone() -> None:
    from flows.replay import _parse_shift

    before = datetime.now(UTC)
    assert before <= _parse_shift(" NOW ", "UTC") <= datetime.now(UTC)
    assert _parse_shift("2024-05-01T15:00:00", "Europe/Moscow") == datetime(
        2024, 5, 1, 12, tzinfo=UTC
    )
    _rejects(
        lambda text: _parse_shift(text, "UTC"),
        "later",
        "--shift-to 'later': expected 'now' or a timestamp like 2024-05-01T12:00:00Z",
    )
