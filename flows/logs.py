"""Structured logs for every Vigil process: one JSON object per line, secrets scrubbed.

Log collectors (Loki, Elasticsearch, CloudWatch) index JSON lines without parsing rules, so
``VIGIL_LOG_FORMAT=json`` (the default) writes each event as::

    {"ts": "2024-05-01T12:00:00.123Z", "level": "INFO", "logger": "vigil.flow",
     "msg": "alert opened", "alert_id": "015f...", "sensor_id": "pump-7", "severity": "warning"}

Fields given with ``log.info(..., extra={"sensor_id": ...})`` become top-level keys, which is
how alert and sensor ids reach the line. ``text`` gives the same events as readable lines.

Whatever the format, every value of a secret setting (``VIGIL_API_TOKEN``,
``VIGIL_KAFKA_SASL_PASSWORD``) is replaced by ``***`` in the message, the extra fields and
tracebacks, so a token echoed by an exception message cannot leak into the logs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from flows.settings import PREFIX, Settings

MASK = "***"
# Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def env_secrets(env: dict[str, str] | None = None) -> tuple[str, ...]:
    """Secret values from ``VIGIL_*TOKEN*``/``*PASSWORD*`` variables, for processes (uvicorn
    workers) that build their formatter before or without a Settings object."""
    env = dict(os.environ) if env is None else env
    values = {
        v for k, v in env.items()
        if k.startswith(PREFIX) and ("TOKEN" in k or "PASSWORD" in k) and v.strip()
    }
    return tuple(sorted(values, key=len, reverse=True))


class _Scrubber:
    def __init__(self, secrets: Iterable[str] | None) -> None:
        self.secrets = tuple(secrets) if secrets is not None else env_secrets()

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, extra fields, exc (traceback)."""

    def __init__(self, secrets: Iterable[str] | None = None) -> None:
        super().__init__()
        self._scrubber = _Scrubber(secrets)

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (no newline inside, whatever the message holds)."""
        scrub = self._scrubber.scrub
        ts = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_") or key in out:
                continue
            if isinstance(value, str):
                value = scrub(value)
            elif not isinstance(value, int | float | bool | type(None)):
                value = scrub(str(value))
            out[key] = value
        if record.exc_info:
            out["exc"] = scrub(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = scrub(record.exc_text)
        if record.stack_info:
            out["stack"] = scrub(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...``, secrets scrubbed."""

    def __init__(self, secrets: Iterable[str] | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self._scrubber = _Scrubber(secrets)

    def format(self, record: logging.LogRecord) -> str:
        """The standard line plus the extra fields."""
        line = super().format(record)
        extras = [
            f"{k}={v}" for k, v in vars(record).items()
            if k not in _STANDARD and not k.startswith("_")
        ]
        if extras:
            first, nl, rest = line.partition("\n")
            line = f"{first} {' '.join(extras)}{nl}{rest}"
        return self._scrubber.scrub(line)


def formatter(kind: str, secrets: Iterable[str] | None = None) -> logging.Formatter:
    """The formatter for ``VIGIL_LOG_FORMAT`` (``json`` or ``text``)."""
    return TextFormatter(secrets) if kind.lower() == "text" else JsonFormatter(secrets)


def configure(settings: Settings, stream: Any = None) -> None:
    """Route every logger (Vigil's and libraries') through one stderr handler.

    Replaces handlers set up earlier, so calling it twice does not double lines.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(settings.log_format, settings.secrets()))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    logging.captureWarnings(True)


def uvicorn_log_config(settings: Settings) -> dict[str, Any]:
    """``logging.config.dictConfig`` for uvicorn: its loggers in Vigil's format.

    uvicorn applies this in every worker process it spawns, where the formatter reads the
    secrets to scrub from the inherited environment.
    """
    factory = "flows.logs.TextFormatter" if settings.log_format.lower() == "text" else (
        "flows.logs.JsonFormatter"
    )
    level = settings.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"vigil": {"()": factory}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler", "formatter": "vigil",
                "stream": "ext://sys.stderr",
            },
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            name: {"handlers": [], "level": level, "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
