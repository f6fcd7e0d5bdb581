"""How long from a reading being produced to its score and its alert being on the output topics?

``python -m bench.latency`` runs ``python -m bytewax.run flows.detect`` against a broker, then
produces simulated readings at fixed rates (one step per rate, each for a fixed wall time)
and measures, with a consumer in a separate process, when each score and alert arrives.

What is measured
----------------
A window of sensor *s* ending at *e* is closed by the first reading of *s* whose event time
is at least ``e + allowed lateness`` (``flows/windows.py``): that reading is the one the score
waits for. Latency = wall time the score (or alert) was received by the consumer − wall time
that reading was handed to the producer. This is the pipeline's own delay: broker hops,
batching, decoding, windowing, scoring and producing; not the window length, which is a choice
of event time. The producer's linger (5 ms) and the consumers' ``fetch.wait.max.ms`` are in it.

Event time runs faster than wall time (one tick of every sensor every ``--interval`` of event
time, 10 s by default, paced at ``sensors / rate`` seconds of wall time), so the default 5 m /
1 m windows and the bundled LSTM-AE model apply and the detectors warm up in seconds. A
warm-up step (``--warmup-ticks``, at ``--warmup-rate``) runs first and is not reported.

A rate *holds* when the flow keeps up: the median latency of the step's last quarter of scores
is not more than ``--hold-factor`` × that of its first quarter plus 50 ms, and the flow wrote
its last score within ``1 s + 10 %`` of the step's length after the step's last reading (its
backlog did not grow). After each step the producer waits until the flow has caught up (no
score written for ``--pause`` seconds), so steps do not bleed into each other. The highest
rate that holds is reported.

One broker hop, for comparison
------------------------------
After the flow's steps, ``--hop-seconds`` (default 5) of the same bursts (one message per
sensor per tick, the readings' size, the same producer linger) go through a topic of their
own to a consumer that reads the way the flow's source does (its ``fetch.wait.max.ms``,
``consume`` batches with its poll wait), at each rate, with no flow running. A reading
reaches an alert through two such hops (readings in, alerts out), so the alert latency
minus twice the hop's is roughly what the flow itself adds: decoding, windowing, scoring the
burst of windows a tick closes, producing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from bench.broker import ExternalBroker, TestBroker
from bench.throughput import (
    base_flow_env,
    broker_config,
    git_commit,
    instance_env,
    metric_names,
    open_broker,
    topic_env,
    versions,
)
from flows.cli import positive_float, positive_int
from flows.produce import produce
from flows.schemas import encoder
from flows.settings import Settings, SettingsError, parse_duration
from flows.simulator import Fleet

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RATES = (1000, 10_000, 20_000, 50_000)


class _Out(msgspec.Struct):
    """The fields of a score or alert the measurement needs (both carry them)."""

    sensor_id: str
    window_end: str | None = None
    end: str | None = None
    status: str | None = None


@dataclass
class StepResult:
    """One rate step: what was produced, what came back, and how late."""

    rate: int
    seconds: float
    readings: int
    achieved_rate: float  # what the producer managed (it may fall short at high rates)
    catch_up_s: float  # after the step's last reading, until the flow wrote no more scores
    scores: int
    alerts: int
    score_ms: dict[str, float] = field(default_factory=dict)  # p50/p95/p99/max
    alert_ms: dict[str, float] = field(default_factory=dict)
    first_quarter_p50_ms: float = 0.0
    last_quarter_p50_ms: float = 0.0
    holds: bool = False
    hop_ms: dict[str, float] = field(default_factory=dict)  # one broker hop, no flow


# --- output consumer (separate process, so producing does not delay its clock) ----------------
def _consume(bootstrap: str, kafka: dict[str, str], topics: dict[str, str], out_path: str,
             stop: Any, ready: Any) -> None:
    """Read scores and alerts from offset 0 until ``stop``; save (kind, sensor, end, recv)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({
        **kafka, "bootstrap.servers": bootstrap, "group.id": "bench-latency",
        "enable.auto.commit": False, "fetch.wait.max.ms": 5,
    })
    c.assign([TopicPartition(topics["scores"], 0, OFFSET_BEGINNING),
              TopicPartition(topics["alerts"], 0, OFFSET_BEGINNING)])
    decode = msgspec.json.Decoder(_Out).decode
    kinds: list[int] = []
    sensors: list[str] = []
    ends: list[str] = []
    recv: list[float] = []
    ready.set()
    idle_since = None
    while True:
        msgs = c.consume(1000, 0.005)
        now = time.time()
        if not msgs:
            if stop.is_set():
                idle_since = idle_since or now
                if now - idle_since > 0.5:
                    break
            continue
        idle_since = None
        for m in msgs:
            if m.error() is not None or m.value() is None:
                continue
            rec = decode(m.value())
            if m.topic() == topics["scores"]:
                kinds.append(0)
                ends.append(rec.window_end or "")
            elif rec.status == "open":
                kinds.append(1)
                ends.append(rec.end or "")
            else:
                continue
            sensors.append(rec.sensor_id)
            recv.append(now)
    c.close()
    # "...Z" timestamps: drop the zone so numpy parses them as UTC without a warning
    end_ms = (np.array([e.rstrip("Z").replace("+00:00", "") for e in ends],
                       dtype="datetime64[ms]").astype(np.int64)
              if ends else np.zeros(0, np.int64))
    np.savez(out_path, kind=np.array(kinds, np.int8), sensor=np.array(sensors, dtype=object),
             end_ms=end_ms, recv=np.array(recv))


# --- producing -------------------------------------------------------------------------------
@dataclass
class _Produced:
    """Per tick: event time, and per sensor the produce wall time (NaN: not emitted)."""

    tick_ms: list[int] = field(default_factory=list)
    sent_at: list[npt.NDArray[np.float64]] = field(default_factory=list)
    step_of_tick: list[int] = field(default_factory=list)


def _produce_step(producer: Any, topic: str, fleet: Fleet, first_tick: int, rate: float,
                  seconds: float | None, ticks: int | None, step: int, log: _Produced) -> int:
    """Produce ticks paced at ``rate`` readings/s; return the next tick index."""
    s = fleet.sensors
    index = {sid: k for k, sid in enumerate(fleet.sensor_ids)}
    wall_per_tick = s / rate
    encode = encoder.encode
    t0 = time.perf_counter()
    i = first_tick
    n = 0
    while True:
        due = t0 + n * wall_per_tick
        if (ticks is not None and n >= ticks) or (seconds is not None and due - t0 >= seconds):
            break
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        readings = fleet.tick(i)
        sent = np.full(s, np.nan)
        start = time.time()
        for r in readings:
            produce(producer, topic, encode(r), r.sensor_id.encode(), wait_s=0.01)
        stop = time.time()
        producer.poll(0)
        idx = np.array([index[r.sensor_id] for r in readings], dtype=np.int64)
        sent[idx] = np.linspace(start, stop, num=len(readings)) if len(readings) else []
        log.tick_ms.append(round(fleet.tick_time(i).timestamp() * 1000))
        log.sent_at.append(sent)
        log.step_of_tick.append(step)
        i += 1
        n += 1
    producer.flush(30)
    return i


def _wait_caught_up(bootstrap: str, kafka: dict[str, str], topic: str, quiet: float,
                    limit: float) -> float:
    """Wait until the flow stops writing scores (it has caught up); return seconds waited."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**kafka, "bootstrap.servers": bootstrap, "group.id": "bench-latency-wm"})
    t0 = time.monotonic()
    last, since = -1, t0
    try:
        while time.monotonic() - t0 < limit:
            _, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
            now = time.monotonic()
            if high != last:
                last, since = high, now
            elif now - since >= quiet:
                break
            time.sleep(0.1)
    finally:
        c.close()
    return time.monotonic() - t0


# --- one broker hop, no flow (module docstring) ---------------------------------------------
_STAMP = struct.Struct("<d")


def _hop_consume(bootstrap: str, kafka: dict[str, str], topic: str, fetch_wait_ms: int,
                 poll_ms: int, batch: int, expect: int, out_path: str, ready: Any) -> None:
    """Read ``expect`` stamped messages as the flow's source reads; save latencies in ms."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({
        **kafka, "bootstrap.servers": bootstrap, "group.id": "bench-latency-hop",
        "enable.auto.commit": False, "fetch.wait.max.ms": fetch_wait_ms,
    })
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    ready.set()
    lat: list[float] = []
    last = time.monotonic()
    while len(lat) < expect and time.monotonic() - last < 10:
        msgs = c.consume(batch, poll_ms / 1000)
        now = time.time()
        for m in msgs:
            value = m.value()
            if m.error() is None and value:
                lat.append((now - _STAMP.unpack_from(value)[0]) * 1000)
        if msgs:
            last = time.monotonic()
    c.close()
    np.save(out_path, np.array(lat))


def broker_hop(broker: TestBroker | ExternalBroker, kafka: dict[str, str], rate: float,
               seconds: float, burst: int, size: int, settings: Settings) -> dict[str, float]:
    """Latency percentiles (ms) of one hop: ``burst`` messages of ``size`` bytes per tick at
    ``rate`` messages/s, producer linger 5 ms, consumed with the flow's source settings."""
    from confluent_kafka import Producer

    topic = broker.unique_topics("bench-latency-hop", {"hop": 1})["hop"]
    ticks = max(1, round(seconds * rate / burst))
    out_path = str(Path(tempfile.mkdtemp(prefix="vigil-hop-")) / "hop.npy")
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    consumer = ctx.Process(target=_hop_consume, daemon=True, args=(
        broker.bootstrap, kafka, topic, settings.fetch_wait_max_ms, settings.consumer_poll_ms,
        settings.consumer_batch_size, ticks * burst, out_path, ready))
    consumer.start()
    if not ready.wait(30):
        raise RuntimeError("the hop consumer did not start")
    time.sleep(0.5)  # its first fetch is in flight
    producer = Producer({**kafka, "bootstrap.servers": broker.bootstrap, "linger.ms": 5,
                         "queue.buffering.max.messages": 1_000_000})
    pad = b"x" * max(0, size - _STAMP.size)
    t0 = time.perf_counter()
    for n in range(ticks):
        delay = t0 + n * burst / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        for _ in range(burst):
            produce(producer, topic, _STAMP.pack(time.time()) + pad, wait_s=0.01)
        producer.poll(0)
    producer.flush(30)
    consumer.join(60)
    lat = np.load(out_path) if os.path.exists(out_path) else np.zeros(0)
    return _percentiles(lat)


# --- analysis --------------------------------------------------------------------------------
def _percentiles(values: npt.NDArray[np.float64]) -> dict[str, float]:
    if values.size == 0:
        return {}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1),
            "p99": round(float(p99), 1), "max": round(float(values.max()), 1)}


def latencies(
    kind: npt.NDArray[np.int8], sensor_idx: npt.NDArray[np.int64], end_ms: npt.NDArray[np.int64],
    recv: npt.NDArray[np.float64], tick_ms: npt.NDArray[np.int64],
    sent_at: npt.NDArray[np.float64], lateness_ms: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Latency (ms) of each output and the tick whose reading closed its window (-1: none).

    The closing reading of a window ``[.., e)`` of sensor ``s`` is the first reading of ``s``
    with event time ``>= e + lateness`` (ticks are in event-time order, every sensor per tick
    unless it dropped out).
    """
    out = np.full(kind.size, np.nan)
    trig = np.full(kind.size, -1, dtype=np.int64)
    first = np.searchsorted(tick_ms, end_ms + lateness_ms, side="left")
    for j in range(kind.size):
        t, s = int(first[j]), int(sensor_idx[j])
        if s < 0:
            continue
        while t < tick_ms.size and np.isnan(sent_at[t, s]):
            t += 1  # the sensor dropped out at that tick: the next reading closes it
        if t < tick_ms.size:
            trig[j] = t
            out[j] = (recv[j] - sent_at[t, s]) * 1000.0
    return out, trig


def analyse(
    data: dict[str, Any], fleet: Fleet, produced: _Produced, steps: list[tuple[int, float, int]],
    catch_up: list[float], lateness_ms: int, hold_factor: float,
) -> list[StepResult]:
    """Per measured step: latency percentiles, counts, and whether the rate held."""
    tick_ms = np.array(produced.tick_ms, dtype=np.int64)
    sent_at = np.stack(produced.sent_at) if produced.sent_at else np.zeros((0, fleet.sensors))
    step_of_tick = np.array(produced.step_of_tick, dtype=np.int64)
    index = {sid: k for k, sid in enumerate(fleet.sensor_ids)}
    sensor_idx = np.array([index.get(s, -1) for s in data["sensor"]], dtype=np.int64)
    lat, trig = latencies(data["kind"], sensor_idx, data["end_ms"], data["recv"], tick_ms,
                          sent_at, lateness_ms)
    step_of = np.where(trig >= 0, step_of_tick[np.maximum(trig, 0)], -1)
    results: list[StepResult] = []
    for step, (rate, seconds, readings) in enumerate(steps):
        if step == 0:
            continue  # warm-up
        ticks = np.flatnonzero(step_of_tick == step)
        produced_s = (np.nanmax(sent_at[ticks]) - np.nanmin(sent_at[ticks])) if ticks.size else 0
        sc = (data["kind"] == 0) & (step_of == step)
        al = (data["kind"] == 1) & (step_of == step)
        order = np.argsort(trig[sc], kind="stable")
        s_lat = lat[sc][order]
        q = max(1, s_lat.size // 4)
        first_q = float(np.median(s_lat[:q])) if s_lat.size else 0.0
        last_q = float(np.median(s_lat[-q:])) if s_lat.size else 0.0
        res = StepResult(
            rate=rate, seconds=seconds, readings=readings,
            achieved_rate=round(readings / produced_s, 1) if produced_s else 0.0,
            catch_up_s=round(catch_up[step], 2),
            scores=int(sc.sum()), alerts=int(al.sum()),
            score_ms=_percentiles(s_lat), alert_ms=_percentiles(lat[al]),
            first_quarter_p50_ms=round(first_q, 1), last_quarter_p50_ms=round(last_q, 1),
        )
        res.holds = bool(
            s_lat.size and last_q <= hold_factor * first_q + 50.0
            and res.catch_up_s <= 1.0 + 0.1 * seconds
        )
        results.append(res)
    return results


# --- the run ---------------------------------------------------------------------------------
def _flow_env(bootstrap: str, topics: dict[str, str], args: argparse.Namespace) -> dict[str, str]:
    env = base_flow_env()
    env.update(topic_env(bootstrap, topics))
    env.update({
        "VIGIL_METRICS_PORT": "0",
        "VIGIL_LOG_FORMAT": "text",
        "PYTHONUNBUFFERED": "1",
    })
    if args.detectors:
        env["VIGIL_DETECTORS"] = args.detectors
    for var, value in _flow_overrides(args).items():
        env[var] = value
    return env


def _flow_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The VIGIL_* settings this run sets for the flow from its flags."""
    return {
        var: str(value) for var, value in (
            ("VIGIL_CONSUMER_POLL_MS", args.poll_ms),
            ("VIGIL_STATE_SHARDS", args.shards),
            ("VIGIL_PRODUCER_LINGER_MS", args.linger_ms),
            ("VIGIL_FETCH_WAIT_MAX_MS", args.fetch_wait_ms),
            ("VIGIL_WINDOW_STAGGER", args.stagger),
        ) if value is not None
    }


def run(args: argparse.Namespace, broker: TestBroker | ExternalBroker,
        kafka: dict[str, str]) -> dict[str, Any]:
    """Start the flow and the consumer, produce every step, drain, and analyse."""
    from confluent_kafka import Producer

    settings = Settings.from_env(_flow_overrides(args))
    lateness_ms = round(settings.allowed_lateness.total_seconds() * 1000)
    fleet = Fleet(args.sensors, metric_names(args.metrics), args.seed,
                  interval=parse_duration(args.interval), anomaly_rate=args.anomaly_rate)
    topics = broker.unique_topics("bench-latency", {
        "readings": args.instances, "alerts": 1, "scores": 1, "dead": 1,
    })
    tmp = Path(tempfile.mkdtemp(prefix="vigil-latency-"))
    log_path = (args.log_dir or tmp) / "flow.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Event()
    out_path = str(tmp / "outputs.npz")
    consumer = ctx.Process(target=_consume, args=(broker.bootstrap, kafka, topics, out_path,
                                                  stop, ready), daemon=True)
    consumer.start()
    flows: list[subprocess.Popen] = []
    with open(log_path, "wb") as log:
        for i in range(args.instances):  # one flow, or one per instance and partition
            env = {**_flow_env(broker.bootstrap, topics, args), **instance_env(i, args.instances)}
            flows.append(subprocess.Popen(
                [sys.executable, "-m", "bytewax.run", "flows.detect"],
                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            ))
    produced = _Produced()
    steps: list[tuple[int, float, int]] = []
    catch_up: list[float] = []
    try:
        if not ready.wait(30):
            raise RuntimeError("the output consumer did not start")
        time.sleep(args.settle)  # the flow connects and assigns its partition
        for flow in flows:
            if flow.poll() is not None:
                raise RuntimeError(f"the flow exited at start (code {flow.returncode}); "
                                   f"see {log_path}")
        producer = Producer({**kafka, "bootstrap.servers": broker.bootstrap, "linger.ms": 5,
                             "queue.buffering.max.messages": 1_000_000})
        tick = 0
        plan = [(args.warmup_rate, None, args.warmup_ticks)] + [
            (r, args.seconds, None) for r in args.rates
        ]
        for step, (rate, seconds, ticks) in enumerate(plan):
            before = tick
            label = "warm-up" if step == 0 else f"{rate:,} readings/s"
            print(f"step {step}: {label} ...", file=sys.stderr, flush=True)
            tick = _produce_step(producer, topics["readings"], fleet, tick, rate, seconds,
                                 ticks, step, produced)
            n = int(sum(np.sum(~np.isnan(produced.sent_at[t])) for t in range(before, tick)))
            steps.append((int(rate), float(seconds or 0.0), n))
            # let the flow catch up, so one step's backlog does not bleed into the next
            waited = _wait_caught_up(broker.bootstrap, kafka, topics["scores"], args.pause, 120)
            catch_up.append(max(0.0, waited - args.pause))
            print(f"  {n:,} readings; flow caught up {waited:.1f} s after the step",
                  file=sys.stderr, flush=True)
        # close the last windows: one more tick far enough ahead, then drain
        tick = _produce_step(producer, topics["readings"], fleet, tick, args.warmup_rate, None,
                             max(1, lateness_ms // max(1, round(fleet.interval.total_seconds()
                                                                * 1000)) + 2), -1, produced)
        time.sleep(args.drain)
    finally:
        stop.set()
        consumer.join(60)
        for flow in flows:
            if flow.poll() is None:
                os.killpg(flow.pid, signal.SIGTERM)
        for flow in flows:
            try:
                flow.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(flow.pid, signal.SIGKILL)
        broker.delete_unique_topics()
    raw = np.load(out_path, allow_pickle=True)
    data = {k: raw[k] for k in raw.files}
    results = analyse(data, fleet, produced, steps, catch_up, lateness_ms, args.hold_factor)
    if args.hop_seconds > 0:
        size = round(float(np.mean([len(encoder.encode(r)) for r in fleet.tick(0)])))
        try:
            for res in results:
                print(f"one broker hop at {res.rate:,}/s ...", file=sys.stderr, flush=True)
                res.hop_ms = broker_hop(broker, kafka, res.rate, args.hop_seconds,
                                        fleet.sensors, size, settings)
        finally:
            broker.delete_unique_topics()
    held = [r.rate for r in results if r.holds]
    return {
        "config": {
            "rates": list(args.rates), "seconds": args.seconds, "sensors": args.sensors,
            "metrics": args.metrics, "interval": args.interval, "anomaly_rate": args.anomaly_rate,
            "warmup_ticks": args.warmup_ticks, "warmup_rate": args.warmup_rate,
            "detectors": args.detectors or settings.detectors,
            "window": str(settings.window_length), "hop": str(settings.window_hop),
            "allowed_lateness": str(settings.allowed_lateness),
            "window_stagger": str(settings.window_stagger),
            "instances": args.instances,
            "fetch_wait_max_ms": settings.fetch_wait_max_ms,
            "consumer_poll_ms": settings.consumer_poll_ms,
            "state_shards": settings.state_shards,
            "producer_linger_ms": settings.producer_linger_ms,
            "hop_seconds": args.hop_seconds,
            "broker": "external" if isinstance(broker, ExternalBroker) else "tansu",
            "cpus": os.cpu_count(),
        },
        "steps": [asdict(r) for r in results],
        "highest_rate_that_holds": max(held) if held else None,
        "flow_log": str(log_path),
        **git_commit(), "versions": versions(),
    }


def table(report: dict[str, Any]) -> str:
    """The steps as a Markdown table, for docs/benchmarks.md."""
    lines = [
        "| rate (asked) | produced/s | scores | score p50 / p95 / p99 / max ms | alerts | "
        "alert p50 / p95 / p99 / max ms | first → last quarter p50 ms | catch-up s | holds | "
        "one broker hop p50 / p95 / p99 / max ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["steps"]:
        def fmt(d: dict[str, float]) -> str:
            return " / ".join(f"{d[k]:,.0f}" for k in ("p50", "p95", "p99", "max")) if d else "–"
        lines.append(
            f"| {s['rate']:,} | {s['achieved_rate']:,.0f} | {s['scores']:,} | "
            f"{fmt(s['score_ms'])} | {s['alerts']:,} | {fmt(s['alert_ms'])} | "
            f"{s['first_quarter_p50_ms']:,.0f} → {s['last_quarter_p50_ms']:,.0f} | "
            f"{s['catch_up_s']:.1f} | {'yes' if s['holds'] else 'no'} | "
            f"{fmt(s.get('hop_ms', {}))} |"
        )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Latency percentiles against the asked rate (log scale), scores and alerts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s in report["steps"] if s["score_ms"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    rates = [s["rate"] for s in steps]
    for key, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^-")):
        ax.plot(rates, [s["score_ms"][key] for s in steps], style, label=f"score {key}")
        alerts = [s["alert_ms"].get(key, np.nan) for s in steps]
        ax.plot(rates, alerts, style, alpha=0.5, label=f"alert {key}")
    hops = [2 * s["hop_ms"]["p50"] if s.get("hop_ms") else np.nan for s in steps]
    if not np.all(np.isnan(hops)):
        ax.plot(rates, hops, "k:", marker="x", label="2 broker hops p50 (no flow)")
    ax.axhline(50, color="red", lw=0.8, ls=":", label="50 ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("readings/s produced")
    ax.set_ylabel("reading → output latency (ms)")
    ax.set_title("bench.latency: reading → score / alert")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.latency",
        description="Measure reading -> score and reading -> alert latency of the detection "
                    "flow through a real broker at fixed produce rates, and the highest rate "
                    "it sustains without growing lag.",
    )
    p.add_argument("--rates", type=positive_int, nargs="+", default=list(DEFAULT_RATES),
                   metavar="R", help="readings/s per step (default 1000 10000 20000 50000)")
    p.add_argument("--seconds", type=positive_float, default=20.0, metavar="S",
                   help="wall time of each step (default 20)")
    p.add_argument("--sensors", type=positive_int, default=500)
    p.add_argument("--metrics", type=positive_int, default=4)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--interval", default="10s", metavar="DURATION",
                   help="event time between two readings of a sensor (default 10s)")
    p.add_argument("--anomaly-rate", type=float, default=24.0, metavar="R",
                   help="injected anomalies per sensor per simulated day (default 24)")
    p.add_argument("--warmup-ticks", type=positive_int, default=420, metavar="N",
                   help="ticks of every sensor before measuring (default 420: 70 windows)")
    p.add_argument("--warmup-rate", type=positive_float, default=20_000.0, metavar="R")
    p.add_argument("--pause", type=positive_float, default=1.0, metavar="S",
                   help="after each step, wait until no score was written for S seconds, so "
                        "one step's backlog does not bleed into the next (default 1)")
    p.add_argument("--drain", type=positive_float, default=5.0, metavar="S",
                   help="seconds to wait for the last outputs (default 5)")
    p.add_argument("--settle", type=positive_float, default=3.0, metavar="S",
                   help="seconds between starting the flow and producing (default 3)")
    p.add_argument("--hold-factor", type=positive_float, default=2.0, metavar="F")
    p.add_argument("--detectors", metavar="NAMES",
                   help="VIGIL_DETECTORS for the flow (default: its own)")
    p.add_argument("--poll-ms", type=int, metavar="MS",
                   help="VIGIL_CONSUMER_POLL_MS for the flow (default: its own, 0)")
    p.add_argument("--shards", type=positive_int, metavar="N",
                   help="VIGIL_STATE_SHARDS for the flow (default: its own)")
    p.add_argument("--linger-ms", type=int, metavar="MS",
                   help="VIGIL_PRODUCER_LINGER_MS for the flow's output producer (default: its "
                        "own)")
    p.add_argument("--fetch-wait-ms", type=int, metavar="MS",
                   help="VIGIL_FETCH_WAIT_MAX_MS for the flow's consumer (default: its own)")
    p.add_argument("--instances", type=positive_int, default=1, metavar="N",
                   help="run N independent flows (VIGIL_INSTANCES), the readings topic with N "
                        "partitions keyed by sensor (default 1)")
    p.add_argument("--stagger", metavar="DURATION",
                   help="VIGIL_WINDOW_STAGGER for the flow, e.g. 10s: spread the sensors' window "
                        "closings over the hop (default: its own, 0 = aligned)")
    p.add_argument("--hop-seconds", type=float, default=5.0, metavar="S",
                   help="after the flow's steps, time one broker hop with no flow for S seconds "
                        "per rate, for comparison (default 5; 0 skips it)")
    p.add_argument("--brokers", metavar="HOST:PORT",
                   help="use this broker instead of starting the test broker")
    p.add_argument("--json", type=Path, metavar="OUT.json")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="latency vs rate plot")
    p.add_argument("--log-dir", type=Path, metavar="DIR", help="keep the flow log here")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        parse_duration(args.interval)
        brokers, kafka = broker_config(args.brokers)
    except (ValueError, SettingsError) as exc:
        p.error(str(exc))
    with open_broker(brokers, kafka) as (broker, _pid):
        report = run(args, broker, kafka)
    print(table(report))
    held = report["highest_rate_that_holds"]
    print(f"\nhighest rate that holds: {held:,} readings/s" if held else
          "\nno rate held (see the table)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
