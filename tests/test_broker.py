"""The test broker: it starts, makes topics as asked, carries messages, and stops for good."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from bench.broker import (
    BrokerError,
    ExternalBroker,
    TestBroker,
    free_port,
    parse_topics,
    read_all,
    topic_partitions,
)

REPO = Path(__file__).resolve().parents[1]


def test_parse_topics_reads_names_and_partition_counts() -> None:
    assert parse_topics("readings:4, alerts:1,scores") == {"readings": 4, "alerts": 1, "scores": 1}
    with pytest.raises(ValueError, match="at least 1"):
        parse_topics("readings:0")
    with pytest.raises(ValueError, match="letters"):
        parse_topics("bad name:2")


def test_broker_cli_help_lists_its_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.broker", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "--port" in out and "--topics" in out and "readings:4" in out


@pytest.mark.integration
def test_own_broker_starts_creates_topics_round_trips_and_stops() -> None:
    with TestBroker() as b:
        proc = b.process
        assert proc is not None and b.running
        assert b.bootstrap == f"127.0.0.1:{b.port}"
        assert b.create_topics({"readings": 4, "alerts": 1}) == {"readings": 4, "alerts": 1}
        assert topic_partitions(b.bootstrap, "readings") == 4
        assert topic_partitions(b.bootstrap, "alerts") == 1

        producer = Producer({"bootstrap.servers": b.bootstrap})
        sent = {(f"k{i % 5}", f"v{i}") for i in range(50)}
        for key, value in sorted(sent):
            producer.produce("readings", key=key, value=value)
        assert producer.flush(10) == 0
        got = read_all(b.bootstrap, "readings", timeout=10)
        assert {(m.key().decode(), m.value().decode()) for m in got} == sent
        # keyed messages land on one partition per key
        parts_by_key: dict[str, set[int]] = {}
        for m in got:
            parts_by_key.setdefault(m.key().decode(), set()).add(m.partition())
        assert all(len(p) == 1 for p in parts_by_key.values())
        del producer
    assert proc.poll() is not None, "the broker process is still running after stop()"
    assert not b.running
    b.stop()  # a second stop is harmless


@pytest.mark.integration
def test_recreating_a_topic_with_another_partition_count_is_refused(broker) -> None:
    name = broker.unique_topics("recreate", {"t": 2})["t"]
    assert broker.create_topics({name: 2}) == {name: 2}  # same count: accepted, idempotent
    with pytest.raises(BrokerError, match="different partition count"):
        broker.create_topics({name: 3})


@pytest.mark.integration
def test_unique_topics_gives_each_caller_fresh_topics(broker) -> None:
    a = broker.unique_topics("test_x[param]", {"readings": 2, "alerts": 1})
    b = broker.unique_topics("test_x[param]", {"readings": 2, "alerts": 1})
    assert set(a) == {"readings", "alerts"}
    assert not set(a.values()) & set(b.values())
    assert topic_partitions(broker.bootstrap, a["readings"]) == 2
    assert topic_partitions(broker.bootstrap, a["alerts"]) == 1
    assert read_all(broker.bootstrap, a["readings"], timeout=10) == []


@pytest.mark.integration
def test_read_all_waits_for_min_count_while_messages_are_still_coming(broker) -> None:
    topic = broker.unique_topics("late", {"t": 1})["t"]
    producer = Producer({"bootstrap.servers": broker.bootstrap})

    def produce_later() -> None:
        time.sleep(1.0)
        producer.produce(topic, value=b"late")
        producer.flush(10)

    t = threading.Thread(target=produce_later)
    t.start()
    got = read_all(broker.bootstrap, topic, timeout=15, min_count=1)
    t.join()
    assert [m.value() for m in got] == [b"late"]


@pytest.mark.integration
def test_external_broker_creates_topics_on_a_running_broker(broker) -> None:
    ext = ExternalBroker(broker.bootstrap)
    names = ext.unique_topics("external", {"readings": 3})
    assert topic_partitions(broker.bootstrap, names["readings"]) == 3
    ext.delete_unique_topics()


@pytest.mark.integration
def test_starting_on_a_taken_port_fails_clearly_instead_of_sharing_it() -> None:
    with TestBroker() as first:
        second = TestBroker(port=first.port, start_timeout=5)
        with pytest.raises(BrokerError, match="already in use"):
            second.start()
        assert second.process is None and first.running


@pytest.mark.integration
def test_broker_cli_serves_vigils_topics_until_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.broker", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("export "):
                break
        assert lines and lines[-1].strip() == f"export VIGIL_BROKERS=127.0.0.1:{port}", lines
        bootstrap = f"127.0.0.1:{port}"
        counts = {
            t: topic_partitions(bootstrap, t)
            for t in ("readings", "alerts", "scores", "readings-dead-letter")
        }
        assert counts == {"readings": 4, "alerts": 1, "scores": 1, "readings-dead-letter": 1}
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "broker stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
