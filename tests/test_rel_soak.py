"""The soak's verdict (bench/soak.py): flat memory and bounded lag after warm-up, or fail.
The soak itself runs 10 minutes as a documented command (docs/reliability.md)."""

from __future__ import annotations

import argparse

import pytest

from bench.soak import judge

pytestmark = pytest.mark.reliability
ARGS = argparse.Namespace(warmup=1, max_growth_mb=25.0, rate=500)


def _samples(flow_growth: float = 0.0, lag_growth: float = 0.0) -> list[dict]:
    return [
        {"t": 10.0 * i, "flow_mb": 200 + flow_growth * i / 30, "api_mb": 80.0,
         "lag": 100 + lag_growth * i / 30, "read": 5000.0 * i}
        for i in range(1, 31)
    ]


def test_flat_memory_and_steady_lag_pass():
    v = judge(_samples(), ARGS)
    assert v["pass"] and v["growth_mb"] == {"flow_mb": 0.0, "api_mb": 0.0}
    assert v["read_per_s_after_warmup"] == 500.0


def test_memory_growing_beyond_the_bound_fails():
    assert not judge(_samples(flow_growth=60), ARGS)["pass"]


def test_lag_growing_by_more_than_a_second_of_input_fails():
    assert not judge(_samples(lag_growth=5000), ARGS)["pass"]


def test_a_run_too_short_to_judge_fails():
    assert not judge(_samples()[:8], ARGS)["pass"]
