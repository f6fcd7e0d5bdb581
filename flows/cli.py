"""Shared argparse value parsers, so every Vigil CLI rejects bad input with the same clear messages.

Each function takes the option's text and returns the parsed value, or raises
:class:`argparse.ArgumentTypeError`, which argparse reports as ``argument --x: <message>`` with
exit status 2. Use them as ``type=``::

    ap.add_argument("--limit", type=positive_int)
"""

from __future__ import annotations

import argparse
import math
from datetime import UTC, datetime, timedelta, tzinfo

from flows.settings import parse_duration

__all__ = [
    "non_negative_float",
    "non_negative_int",
    "positive_duration",
    "positive_duration_text",
    "positive_float",
    "positive_int",
    "utc_time",
]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_int(text: str) -> int:
    """A whole number >= 1, e.g. a count or a limit."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0, e.g. a seed or a number of ticks."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 0")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0, e.g. seconds between two polls."""
    value = _float(text)
    if not value > 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    if math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0, e.g. a rate where 0 means "as fast as possible"."""
    value = _float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def positive_duration(text: str) -> timedelta:
    """A duration > 0 in :func:`flows.settings.parse_duration` form: ``500ms``, ``10s``, ``5m``."""
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= timedelta(0):
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def positive_duration_text(text: str) -> str:
    """Like :func:`positive_duration`, but return the text itself, e.g. to pass on as VIGIL_*."""
    positive_duration(text)
    return text


def utc_time(text: str, tz: tzinfo = UTC) -> datetime:
    """An ISO 8601 time as an aware UTC datetime; one without an offset is in ``tz`` (UTC)."""
    try:
        ts = datetime.fromisoformat(text.strip())
        return (ts if ts.tzinfo else ts.replace(tzinfo=tz)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time, e.g. 2024-01-01T00:00:00Z"
        ) from None
