"""Settings come only from VIGIL_* variables, are validated together, and are documented."""

import re
from datetime import timedelta
from pathlib import Path

import pytest

from flows.settings import Settings, SettingsError, parse_duration, settings_table

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_defaults_run_the_embedded_simulator():
    s = Settings.from_env({})
    assert s.embedded and s.window_length == timedelta(minutes=5)


def test_values_are_parsed_from_the_environment():
    s = Settings.from_env({
        "VIGIL_BROKERS": "localhost:9092, redpanda:29092",
        "VIGIL_WINDOW_LENGTH": "30s",
        "VIGIL_WINDOW_HOP": "10s",
        "VIGIL_ZSCORE_THRESHOLD": "4.5",
    })
    assert s.brokers == ("localhost:9092", "redpanda:29092") and not s.embedded
    assert s.window_length == timedelta(seconds=30) and s.zscore_threshold == 4.5
    assert s.kafka_config()["bootstrap.servers"] == "localhost:9092,redpanda:29092"


def test_every_problem_is_reported_at_once_with_the_variable_name():
    with pytest.raises(SettingsError) as err:
        Settings.from_env({
            "VIGIL_WINDOW_LENGTH": "-5m",
            "VIGIL_BROKERS": "localhost",
            "VIGIL_STATE_SHARDS": "many",
            "VIGIL_WINDOW_SIZE": "5m",
        })
    text = str(err.value)
    assert "VIGIL_WINDOW_LENGTH must be positive, got -5m" in text
    assert "VIGIL_BROKERS='localhost': cannot parse broker(s) 'localhost'" in text
    assert "VIGIL_STATE_SHARDS='many': expected a whole number" in text
    assert "VIGIL_WINDOW_SIZE: unknown setting" in text
    assert len(err.value.problems) == 4


def test_window_length_must_be_a_multiple_of_the_hop():
    with pytest.raises(SettingsError, match="whole multiple of VIGIL_WINDOW_HOP"):
        Settings.from_env({"VIGIL_WINDOW_LENGTH": "5m", "VIGIL_WINDOW_HOP": "7s"})


def test_durations_accept_units_and_reject_words():
    assert parse_duration("250ms") == timedelta(milliseconds=250)
    assert parse_duration("2h") == timedelta(hours=2)
    assert parse_duration("90") == timedelta(seconds=90)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("five minutes")


def test_passwords_are_masked_when_settings_are_described():
    s = Settings.from_env({"VIGIL_KAFKA_SASL_PASSWORD": "hunter2"})
    assert s.kafka_config()["sasl.password"] == "hunter2"
    assert "hunter2" not in str(s.describe())


def test_configuration_doc_lists_every_variable_with_its_default():
    doc = DOCS.read_text()
    rows = dict(re.findall(r"^\| `(VIGIL_[A-Z_]+)` \| `([^`]*)` \|", doc, re.M))
    for var, default, _ in settings_table():
        assert var in rows, f"{var} missing from docs/configuration.md"
        assert rows[var] == default, f"{var}: doc says {rows[var]!r}, code says {default!r}"
    assert set(rows) == {v for v, _, _ in settings_table()}


def test_api_settings_are_real_fields_validated_and_the_token_is_masked():
    s = Settings.from_env({
        "VIGIL_API_URL": "http://api:8000", "VIGIL_API_TOKEN": "s3cret", "VIGIL_API_PORT": "9000",
    })
    assert s.api_url == "http://api:8000" and s.api_port == 9000
    assert "s3cret" not in str(s.describe())
    with pytest.raises(SettingsError) as err:
        Settings.from_env({
            "VIGIL_API_URL": "api:8000", "VIGIL_API_WORKERS": "0", "VIGIL_API_SINK_BATCH": "0",
            "VIGIL_API_TYPO": "1",
        })
    text = str(err.value)
    assert "VIGIL_API_URL must be an http:// or https:// URL" in text
    assert "VIGIL_API_WORKERS must be at least 1" in text
    assert "VIGIL_API_SINK_BATCH must be at least 1" in text
    assert "VIGIL_API_TYPO: unknown setting" in text
