"""Reliability 7 (flow side): Kafka security settings reach confluent-kafka unchanged, secrets
come only from the environment and never reach a log line.
The API side (tokens on writes and optionally reads, CORS) is in test_rel_api_fuzz.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from integration import ROOT, flow_env, produce, start_flow, wait_exit

from flows import logs
from flows.schemas import Reading, encoder
from flows.settings import Settings, SettingsError

pytestmark = pytest.mark.reliability

PASSWORD = "sasl-Pa55-never-logged"
TOKEN = "api-t0ken-never-logged"
CA = Path("/etc/ssl/certs/ca-certificates.crt")


def test_sasl_and_tls_settings_map_one_to_one_onto_librdkafka_keys():
    env = {
        "VIGIL_BROKERS": "kafka-1:9093,kafka-2:9093",
        "VIGIL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "VIGIL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "VIGIL_KAFKA_SASL_USERNAME": "vigil",
        "VIGIL_KAFKA_SASL_PASSWORD": PASSWORD,
        "VIGIL_KAFKA_SSL_CA_LOCATION": "/etc/vigil/ca.pem",
    }
    assert Settings.from_env(env).kafka_config() == {
        "bootstrap.servers": "kafka-1:9093,kafka-2:9093",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "vigil",
        "sasl.password": PASSWORD,
        "ssl.ca.location": "/etc/vigil/ca.pem",
    }
    assert Settings.from_env({}).kafka_config() == {
        "bootstrap.servers": "", "security.protocol": "plaintext",
    }
    with pytest.raises(SettingsError, match="SECURITY_PROTOCOL"):
        Settings.from_env({"VIGIL_KAFKA_SECURITY_PROTOCOL": "tls"})


@pytest.mark.skipif(not CA.exists(), reason=f"no CA bundle at {CA}")
@pytest.mark.parametrize("protocol", ["ssl", "sasl_plaintext", "sasl_ssl"])
def test_confluent_kafka_accepts_the_mapped_config_for_every_client_kind(protocol):
    settings = Settings(
        brokers=("127.0.0.1:1",), kafka_security_protocol=protocol,
        kafka_sasl_mechanism="SCRAM-SHA-256" if protocol.startswith("sasl") else "",
        kafka_sasl_username="vigil" if protocol.startswith("sasl") else "",
        kafka_sasl_password=PASSWORD if protocol.startswith("sasl") else "",
        kafka_ssl_ca_location=str(CA) if protocol.endswith("ssl") else "",
    )
    cfg = settings.kafka_config()
    # librdkafka validates every key and value at construction (no broker needed)
    Producer(cfg).flush(0)
    Consumer({**cfg, "group.id": "vigil-check"}).close()
    AdminClient(cfg)
    with pytest.raises(KafkaException):
        Producer({**cfg, "security.protocol": "sasl_tls"})


def test_every_kafka_client_in_the_flow_is_built_from_the_one_settings_mapping():
    """A client built from a hand-written config would silently drop SASL/TLS."""
    for path in (ROOT / "flows").glob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"\b(Consumer|Producer|AdminClient)\(", text):
            call = text[m.end(): m.end() + 200]
            assert "kafka_config" in call or "config" in call.split(")")[0], (
                f"{path.name}: {m.group(0)} not built from Settings.kafka_config()"
            )


def test_secrets_are_exactly_the_token_and_the_password_and_are_masked_when_described():
    s = Settings(api_auth_reads=True, api_token=TOKEN, kafka_sasl_password=PASSWORD)
    assert set(s.secrets()) == {TOKEN, PASSWORD}
    shown = s.describe()
    assert shown["api_token"] == shown["kafka_sasl_password"] == "***"
    assert shown["api_auth_reads"] == "True"
    env = {"VIGIL_API_AUTH_READS": "true", "VIGIL_API_TOKEN": TOKEN,
           "VIGIL_KAFKA_SASL_PASSWORD": PASSWORD}
    assert set(logs.env_secrets(env)) == {TOKEN, PASSWORD}


@pytest.mark.integration
def test_a_kafka_flow_with_sasl_password_and_api_token_never_logs_them(broker, tmp_path):
    topics = broker.unique_topics("secrets", {"readings": 1, "alerts": 1, "scores": 1,
                                              "dead": 1})
    records = [Reading("s", 1_700_000_000_000 + i * 1000, {"x": float(i % 7)}) for i in range(300)]
    produce(broker.bootstrap, topics["readings"],
            [(b"s", encoder.encode(r)) for r in records] + [(b"s", b"not json " + TOKEN.encode())])
    env = flow_env(broker.bootstrap, topics, exit_at_end="true", detectors="zscore",
                   window_length="10s", window_hop="10s", log_level="DEBUG",
                   kafka_sasl_password=PASSWORD, kafka_sasl_username="vigil",
                   api_token=TOKEN)
    log = tmp_path / "flow.log"
    wait_exit(start_flow(env, log), log)
    text = log.read_text()
    assert "mode=kafka" in text
    assert PASSWORD not in text and TOKEN not in text
