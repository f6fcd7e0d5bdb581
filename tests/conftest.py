"""Shared fixtures: one Kafka-compatible broker per test session.

By default an in-memory tansu broker is started (no Docker needed). Set
``VIGIL_TEST_BROKERS=host:port`` to run the integration tests against a broker that already
runs, such as Redpanda. Either way each test makes its own topics with
``broker.unique_topics(...)``, so tests never see each other's messages.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bench.broker import ExternalBroker, TestBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[TestBroker | ExternalBroker]:
    """The session's broker: ``VIGIL_TEST_BROKERS`` if set, else a fresh tansu."""
    external = os.environ.get("VIGIL_TEST_BROKERS", "").strip()
    if external:
        ext = ExternalBroker(external)
        yield ext
        ext.delete_unique_topics()  # a shared broker should not collect test topics
        return
    with TestBroker() as tansu:
        yield tansu
