"""The detection flow's throughput end to end through a real broker: ``python -m bench.throughput``.

What is measured
    Readings per second that ``python -m bytewax.run flows.detect`` consumes from a Kafka
    topic while doing all of its work: decoding, windowing, scoring, and producing scores,
    alerts and dead letters to their topics. The readings are preloaded before the flow
    starts, so the producer never limits the flow and the flow never waits for data.

How
    1. A broker: a fresh in-memory tansu (``bench.broker.TestBroker``), or an existing one
       (``--brokers`` / ``VIGIL_TEST_BROKERS``, e.g. Redpanda). Topics get unique names.
    2. ``--readings`` readings from the deterministic simulator (``flows.simulator.Fleet``),
       tick after tick so event time advances as in production, encoded with
       ``flows.schemas.encoder`` and keyed by sensor_id, are produced as fast as possible.
    3. The flow runs as operators run it, with ``VIGIL_EXIT_AT_END=true`` so it stops once
       the topic is read and every open window is flushed. Each flow process exposes its
       Prometheus endpoint on a free port and its counter ``vigil_readings_total`` is polled:
       every 100 ms until the first reading and again close to the last, every 1 s in
       between. A scrape costs the flow CPU and GIL time (py-spy put the flow's metrics
       threads at ~4 % of its samples when scraped at 10 Hz throughout), so the middle of
       the run, where no moment needs catching, is scraped sparingly.
    4. ``readings/s`` = readings consumed between the first poll that saw readings and the
       moment the counter reached N (interpolated between polls), divided by that time. So
       interpreter start, imports, Bytewax start-up and the connection to the broker are not
       counted, and neither is anything after the last reading. ``e2e readings/s`` is the
       stricter figure N / (first reading consumed .. flow process exit), which includes the
       final flush of all open windows, the producers' flush and shutdown.
    5. Flow CPU seconds and peak RSS come from ``os.wait4`` (exact, whole process life, start-up
       included) plus ``/proc`` samples during the run (CPU during the consume span only).
       The broker's CPU seconds during the flow run are read from ``/proc`` too: on a small
       machine the broker competes with the flow for the same cores. So may anything else:
       ``other CPU%`` is the CPU that every other process on the machine used during the
       consume span (``/proc/stat``), in % of one core; well above 0 means a noisy run.
    6. After the flow exits, the scores, alerts and dead-letter topics are read back and
       counted; every reading lies in length/hop windows, so the score records must account
       for exactly ``readings x length/hop`` readings when nothing was dead-lettered.

``--warmup-minutes M`` preloads M simulated minutes before the ``--readings`` and starts the
timed span where the counter passes them (interpolated between polls, like the end): every
run reads the warm-up first, so the timed readings meet warm detectors and full calibration
histories, the steady state, which costs about twice the CPU per reading of a fleet's first
hour (``bench.pipeline``). ``e2e readings/s`` still spans the whole run.

``--repeat K`` runs the flow K times over the same preloaded topic (fresh output topics and
recovery store each time) and reports every run and the median.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from bench.broker import ExternalBroker, TestBroker, free_port, read_all
from flows.cli import positive_duration_text, positive_float, positive_int
from flows.produce import produce
from flows.schemas import encoder
from flows.settings import Settings, SettingsError, parse_brokers, parse_duration
from flows.simulator import DEFAULT_METRICS, DEFAULT_START, Fleet
from flows.stages import FeatureStage
from flows.windows import WindowSpec

ROOT = Path(__file__).resolve().parents[1]
POLL_S = 0.1
MID_POLL_S = 1.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_COUNTER = re.compile(rb"^vigil_readings_total\s+([0-9.eE+]+)\s*$", re.MULTILINE)
# VIGIL_* variables passed through to the flow: how to reach the broker, nothing else, so
# a developer's shell cannot change what is measured.
_PASS_THROUGH = ("VIGIL_KAFKA_",)


class _ScoreReadings(msgspec.Struct):
    """Only the field of a ScoreRecord the consistency check needs (decodes fast)."""

    readings: int


class _DeadReason(msgspec.Struct):
    reason: str


# --- measurements ----------------------------------------------------------------------------
@dataclass
class ProduceResult:
    """How the readings got onto the topic."""

    readings: int
    ticks: int
    seconds: float
    readings_per_s: float
    failed: int
    event_time_start: str
    event_time_end: str
    warmup_readings: int = 0  # the first ticks' readings, read but not timed


@dataclass
class RunResult:
    """One flow run; times in seconds, rates in readings per second."""

    run: int
    exit_codes: list[int]
    readings_counted: int
    readings_per_s: float
    e2e_readings_per_s: float
    consume_s: float
    drain_s: float
    startup_s: float
    wall_s: float
    flow_cpu_s: float
    flow_cpu_consume_s: float
    flow_cpu_pct_consume: float
    flow_peak_rss_mib: float
    flow_peak_rss_mib_total: float
    broker_cpu_s: float | None
    broker_cpu_consume_s: float | None
    other_cpu_pct_consume: float
    alerts: int
    scores: int
    scored_readings: int
    dead_letters: int
    dead_letter_reasons: dict[str, int]
    consistent: bool
    polls: int
    end_from_exit: bool
    log: str | None = None


@dataclass
class _Proc:
    """One flow process and what is known about it."""

    popen: subprocess.Popen[bytes]
    metrics_port: int
    count: int = 0
    exit_code: int | None = None
    exit_t: float | None = None
    cpu_s: float = 0.0
    maxrss_kib: int = 0
    hwm_kib: int = 0


@dataclass
class _Sample:
    """One poll: the readings counter and cumulative CPU seconds at time ``t``."""

    t: float
    count: int
    flow_cpu: float
    broker_cpu: float | None
    other_cpu: float  # every other process on the machine, this one excluded

    def lerp(self, b: _Sample, w: float) -> _Sample:
        """The sample a fraction ``w`` of the way from this one to ``b``."""
        def mix(x: float | None, y: float | None) -> float | None:
            return None if x is None or y is None else x + w * (y - x)
        return _Sample(
            self.t + w * (b.t - self.t), round(self.count + w * (b.count - self.count)),
            self.flow_cpu + w * (b.flow_cpu - self.flow_cpu), mix(self.broker_cpu, b.broker_cpu),
            self.other_cpu + w * (b.other_cpu - self.other_cpu),
        )


@dataclass
class _Config:
    """Everything a run needs besides the broker."""

    bootstrap: str
    kafka: dict[str, str]
    readings_topic: str
    readings: int
    window: str
    hop: str
    workers: int
    processes: int
    batch_size: int | None
    shards: int | None
    recovery: bool
    snapshot_interval: float
    flow_prefix: list[str] = field(default_factory=list)
    instances: int = 1
    log_dir: Path | None = None
    timeout: float = 900.0
    progress: bool = True
    poll_s: float = POLL_S
    mid_poll_s: float = MID_POLL_S
    expected: tuple[int, int] = (0, 0)  # (scores, readings summed over scored windows)
    measure_after: int = 0  # readings each run reads before its timed span starts
    detectors: str | None = None  # VIGIL_DETECTORS for this run; None: the flow's default


# --- /proc helpers ---------------------------------------------------------------------------
def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process (all threads), or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw.rsplit(b")", 1)[1].split()  # comm may contain spaces; fields from `state`
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_hwm_kib(pid: int) -> int:
    """Peak resident set size (VmHWM) of a live process in KiB, 0 if unknown."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(r"^VmHWM:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(m.group(1)) if m else 0


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent busy since boot (``/proc/stat``)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = ticks[:7]
    return (user + nice + system + irq + softirq) / _CLK_TCK


def own_cpu_seconds() -> float:
    """CPU seconds of this benchmark process (the poller, not the flow)."""
    t = os.times()
    return t.user + t.system


def scrape_readings(port: int, timeout: float = 0.5) -> int | None:
    """``vigil_readings_total`` from a flow's /metrics; None while the endpoint is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            body = r.read()
    except (urllib.error.URLError, OSError, TimeoutError):
        return None
    m = _COUNTER.search(body)
    return int(float(m.group(1))) if m else 0


# --- preload ---------------------------------------------------------------------------------
def metric_names(count: int) -> tuple[str, ...]:
    """The first ``count`` default metric names, then ``metric_4``, ``metric_5``..."""
    return tuple(DEFAULT_METRICS[:count]) + tuple(
        f"metric_{i}" for i in range(len(DEFAULT_METRICS), count)
    )


def preload(
    bootstrap: str, kafka: dict[str, str], topic: str, fleet: Fleet, n: int, progress: bool,
    warmup_ticks: int = 0,
) -> ProduceResult:
    """Produce ``warmup_ticks`` whole ticks, then ``n`` readings more, tick by tick as fast as
    the broker takes them; wait for acks.

    The time includes simulating and encoding, so it is a floor for the broker's intake.
    """
    from confluent_kafka import Producer
    from tqdm import tqdm

    producer = Producer({
        **kafka,
        "bootstrap.servers": bootstrap,
        "linger.ms": 10,
        "batch.size": 1_000_000,
        "batch.num.messages": 100_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
    })
    failed: list[int] = [0]

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed[0] += 1

    encode = encoder.encode
    sent, tick, warm = 0, 0, 0
    t0 = time.perf_counter()
    with tqdm(total=n, unit="reading", unit_scale=True, desc="produce", disable=not progress,
              file=sys.stderr, dynamic_ncols=True) as bar:
        while tick < warmup_ticks or sent < warm + n:
            readings = fleet.tick(tick)
            if tick < warmup_ticks:
                warm += len(readings)
                bar.total = warm + n
            else:
                readings = readings[: warm + n - sent]
            for r in readings:
                produce(producer, topic, encode(r), r.sensor_id.encode(), delivered)
            producer.poll(0)
            sent += len(readings)
            tick += 1
            bar.update(len(readings))
        left = producer.flush(120)
    secs = time.perf_counter() - t0
    return ProduceResult(
        readings=sent,
        ticks=tick,
        seconds=round(secs, 3),
        readings_per_s=round(sent / secs, 1),
        failed=failed[0] + left,
        event_time_start=fleet.tick_time(0).isoformat(),
        event_time_end=fleet.tick_time(max(tick - 1, 0)).isoformat(),
        warmup_readings=warm,
    )


def _variants(
    detectors: list[str | None], shards: list[int | None]
) -> dict[str | None, tuple[str | None, int | None]]:
    """Every (detectors, shards) pair to run, by label; one pair of defaults has no label."""
    out: dict[str | None, tuple[str | None, int | None]] = {}
    for det in detectors:
        for n in shards:
            parts = ([det] if det is not None and len(detectors) > 1 else []) + (
                [f"shards={n}"] if n is not None and len(shards) > 1 else [])
            out[" ".join(parts) or None] = (det, n)
    return out


# --- broker and environment, shared by the bench scripts that run the flow ------------------
def broker_config(flag: str | None) -> tuple[str | None, dict[str, str]]:
    """The brokers to measure against and the client config for them.

    Brokers: the ``--brokers`` flag, else ``VIGIL_TEST_BROKERS``, else None (start the test
    broker). Config: librdkafka keys from the ``VIGIL_KAFKA_*`` settings (security), without
    ``bootstrap.servers``. Raises ValueError or SettingsError with a message for the user.
    """
    brokers = flag or os.environ.get("VIGIL_TEST_BROKERS", "").strip() or None
    if brokers:
        brokers = ",".join(parse_brokers(brokers))
    kafka_env = {k: v for k, v in os.environ.items() if k.startswith(_PASS_THROUGH)}
    kafka = Settings.from_env(kafka_env).kafka_config()
    kafka.pop("bootstrap.servers", None)
    return brokers, kafka


def base_flow_env() -> dict[str, str]:
    """The parent's environment minus VIGIL_* (bar credentials): a run sets its own."""
    return {
        k: v for k, v in os.environ.items()
        if not k.startswith("VIGIL_") or k.startswith(_PASS_THROUGH)
    }


def topic_env(bootstrap: str, topics: dict[str, str]) -> dict[str, str]:
    """The flow's broker and topic settings, from topics keyed readings/alerts/scores/dead."""
    return {
        "VIGIL_BROKERS": bootstrap,
        "VIGIL_READINGS_TOPIC": topics["readings"],
        "VIGIL_ALERTS_TOPIC": topics["alerts"],
        "VIGIL_SCORES_TOPIC": topics["scores"],
        "VIGIL_DEAD_LETTER_TOPIC": topics["dead"],
    }


# --- one flow run ----------------------------------------------------------------------------
def flow_env(
    cfg: _Config, topics: dict[str, str], metrics_port: int, instance: int = 0
) -> dict[str, str]:
    """The flow's environment: the parent's minus VIGIL_* (bar credentials), plus this run's."""
    env = base_flow_env()
    env.update(topic_env(cfg.bootstrap, {**topics, "readings": cfg.readings_topic}))
    env.update({
        "VIGIL_EXIT_AT_END": "true",
        "VIGIL_WINDOW_LENGTH": cfg.window,
        "VIGIL_WINDOW_HOP": cfg.hop,
        "VIGIL_METRICS_PORT": str(metrics_port),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(instance_env(instance, cfg.instances))
    if cfg.batch_size is not None:
        env["VIGIL_CONSUMER_BATCH_SIZE"] = str(cfg.batch_size)
    if cfg.shards is not None:
        env["VIGIL_STATE_SHARDS"] = str(cfg.shards)
    if cfg.detectors is not None:
        env["VIGIL_DETECTORS"] = cfg.detectors
    return env


def instance_env(instance: int, instances: int) -> dict[str, str]:
    """``VIGIL_INSTANCES``/``VIGIL_INSTANCE`` for one of ``instances`` independent flows
    (nothing when there is one)."""
    if instances == 1:
        return {}
    return {"VIGIL_INSTANCES": str(instances), "VIGIL_INSTANCE": str(instance)}


def flow_commands(cfg: _Config, recovery_dirs: list[Path] | None) -> list[list[str]]:
    """One ``bytewax.run`` command line per process: ``-i``/``-a`` when a Bytewax cluster of
    several processes, or one independent flow per instance (``VIGIL_INSTANCES``), each with
    its own recovery store (``recovery_dirs``, one per instance)."""
    base = [*cfg.flow_prefix, sys.executable, "-m", "bytewax.run", "flows.detect"]
    if cfg.workers > 1:
        base += ["-w", str(cfg.workers)]

    def recovery(i: int) -> list[str]:
        if recovery_dirs is None:
            return []
        return ["-r", str(recovery_dirs[i]), "-s", f"{cfg.snapshot_interval:g}", "-b", "0"]

    if cfg.instances > 1:
        return [[*base, *recovery(i)] for i in range(cfg.instances)]
    base += recovery(0)
    if cfg.processes == 1:
        return [base]
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(cfg.processes))
    return [[*base, "-i", str(i), "-a", addresses] for i in range(cfg.processes)]


def _reap(proc: _Proc, now: float) -> None:
    """Collect an exited process's status and exact rusage (CPU, peak RSS) via wait4."""
    if proc.exit_code is not None:
        return
    try:
        pid, status, usage = os.wait4(proc.popen.pid, os.WNOHANG)
    except ChildProcessError:
        return
    if pid == 0:
        return
    proc.exit_code = os.waitstatus_to_exitcode(status)
    proc.popen.returncode = proc.exit_code
    proc.exit_t = now
    proc.cpu_s = usage.ru_utime + usage.ru_stime
    proc.maxrss_kib = usage.ru_maxrss


def _stop(procs: Sequence[_Proc]) -> None:
    """Stop flow processes that are still running (interrupt, failure): INT, then KILL."""
    for p in procs:
        if p.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.popen.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 5
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.popen.wait(max(0.1, deadline - time.monotonic()))
        if p.popen.poll() is None:
            p.popen.kill()
            p.popen.wait()


def _span(
    samples: list[_Sample], n: int, t_exit: float, skip: int = 0
) -> tuple[_Sample, _Sample]:
    """The samples that bound the consume span: (first that saw readings, counter at n).

    The end sample is interpolated between polls. A flow that reached n and exited between
    two polls ends at its exit instead. When the first sample that saw readings already saw
    them all (a tiny run), the span starts at the last poll that still saw zero. Both
    fallbacks can only make the rate look lower, never higher. With ``skip`` (a warm-up read
    first) the span starts where the counter reached ``skip``, interpolated like the end.
    """
    if skip:
        start_i = next((i for i, s in enumerate(samples) if s.count >= skip), None)
        if start_i is not None and start_i > 0 and samples[start_i].count < n:
            a, b = samples[start_i - 1], samples[start_i]
            _, end = _span(samples[start_i - 1 :], n, t_exit)  # the end, found as without
            return a.lerp(b, (skip - a.count) / (b.count - a.count)), end
    first_i = next(i for i, s in enumerate(samples) if s.count > 0)
    end_i = next((i for i, s in enumerate(samples) if s.count >= n), None)
    if end_i is None:  # exited before a poll saw n: end at the exit
        last = samples[-1]
        end = _Sample(t_exit, n, last.flow_cpu, last.broker_cpu, last.other_cpu)
    else:
        a, b = samples[end_i - 1], samples[end_i]
        w = (n - a.count) / (b.count - a.count) if b.count > a.count else 1.0
        end = a.lerp(b, w)
    first = samples[first_i]
    if end_i == first_i or (end_i is None and first_i == len(samples) - 1):
        first = samples[first_i - 1] if first_i else _Sample(end.t, 0, 0.0, None, 0.0)
    return first, end


def _next_poll(
    samples: list[_Sample], n: int, fast: float, slow: float, skip: int = 0
) -> float:
    """Seconds to the next poll: ``fast`` where a time must be caught (the first reading,
    the end of a warm-up of ``skip`` readings, reaching n, the exit), ``slow`` in between.

    Every scrape costs the flow CPU and GIL time (a thread, the exposition text);
    scraping slowly while nothing needs timing disturbs what is measured less.
    """
    last = samples[-1]
    if last.count == 0 or last.count >= n:
        return fast
    first = next(s for s in samples if s.count > 0)
    if last.t <= first.t or last.count <= first.count:
        return fast  # no rate yet
    rate = (last.count - first.count) / (last.t - first.t)
    if last.count < skip and (skip - last.count) / rate < 2 * slow:
        return fast
    return fast if (n - last.count) / rate < 2 * slow else slow


def expected_windows(fleet: Fleet, n: int, window: str, hop: str) -> tuple[int, int]:
    """(windows, readings summed over windows) the flow must score for the preloaded data.

    Computed by the flow's own ``FeatureStage`` over the same readings in the same per-sensor
    order, so the check follows whatever the window rules are instead of restating them.
    """
    lateness = Settings().allowed_lateness
    stage = FeatureStage(WindowSpec(
        round(parse_duration(window).total_seconds() * 1000),
        round(parse_duration(hop).total_seconds() * 1000),
        round(lateness.total_seconds() * 1000),
    ))
    windows = readings = sent = tick = 0
    while sent < n:
        batch = fleet.tick(tick)[: n - sent]
        out = stage.process([batch])
        windows += len(out.windows)
        readings += sum(w.readings for _, w in out.windows)
        sent += len(batch)
        tick += 1
    out = stage.flush()
    return windows + len(out.windows), readings + sum(w.readings for _, w in out.windows)


def run_flow(
    cfg: _Config, broker: TestBroker | ExternalBroker, run: int, broker_pid: int | None
) -> RunResult:
    """Run the flow once over the preloaded topic and measure it (see the module docstring)."""
    from tqdm import tqdm

    topics = broker.unique_topics(f"bench-run{run}", {"alerts": 1, "scores": 1, "dead": 1})
    tmp = Path(tempfile.mkdtemp(prefix=f"vigil-bench-run{run}-"))
    recovery_dirs: list[Path] | None = None
    if cfg.recovery:
        recovery_dirs = [tmp / f"recovery{i}" for i in range(cfg.instances)]
        for d in recovery_dirs:
            d.mkdir()
            subprocess.run(
                [sys.executable, "-m", "bytewax.recovery", str(d), "1"],
                check=True, cwd=ROOT, capture_output=True,
            )
    log_dir = cfg.log_dir or tmp
    log_dir.mkdir(parents=True, exist_ok=True)
    tag = "" if cfg.detectors is None else "-" + re.sub(r"[^a-z0-9_]+", "-", cfg.detectors)
    log_path = log_dir / f"flow-run{run}{tag}.log"
    n = cfg.readings
    procs: list[_Proc] = []
    samples: list[_Sample] = []
    broker_cpu0 = proc_cpu_seconds(broker_pid) if broker_pid else None
    t_start = time.perf_counter()
    ok = False
    try:
        with log_path.open("ab") as log:
            for i, cmd in enumerate(flow_commands(cfg, recovery_dirs)):
                port = free_port()
                procs.append(_Proc(
                    subprocess.Popen(cmd, env=flow_env(cfg, topics, port, i), cwd=ROOT,
                                     stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT),
                    port,
                ))
        bar = tqdm(total=n, unit="reading", unit_scale=True, desc=f"flow run {run}",
                   disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True)
        with bar:
            while True:
                t_before = time.perf_counter()
                if t_before - t_start > cfg.timeout:
                    raise TimeoutError(f"flow run {run} did not finish in {cfg.timeout:g}s")
                reached = bool(samples) and samples[-1].count >= n
                for p in procs:
                    if p.exit_code is None:
                        if not reached:  # after n only the exit matters: stop scraping
                            got = scrape_readings(p.metrics_port)
                            if got is not None:
                                p.count = got
                        p.hwm_kib = max(p.hwm_kib, proc_hwm_kib(p.popen.pid))
                t = (t_before + time.perf_counter()) / 2
                for p in procs:
                    _reap(p, t)
                # a process is only gone from /proc once reaped, and then cpu_s is exact
                cpu = sum(
                    p.cpu_s if p.exit_code is not None else (proc_cpu_seconds(p.popen.pid) or 0)
                    for p in procs
                )
                bcpu = proc_cpu_seconds(broker_pid) if broker_pid else None
                other = machine_busy_seconds() - cpu - (bcpu or 0.0) - own_cpu_seconds()
                count = sum(p.count for p in procs)
                samples.append(_Sample(t, count, cpu, bcpu, other))
                bar.update(count - bar.n)
                if all(p.exit_code is not None for p in procs):
                    break
                if any(p.exit_code not in (None, 0) for p in procs):
                    break  # one process failed: the others would wait for it forever
                wait = _next_poll(samples, n, cfg.poll_s, cfg.mid_poll_s, cfg.measure_after)
                time.sleep(max(0.0, wait - (time.perf_counter() - t_before)))
        t_exit = max(p.exit_t or time.perf_counter() for p in procs)
        ok = all(p.exit_code == 0 for p in procs)
    finally:
        _stop(procs)
        for p in procs:
            if p.exit_code is None:
                p.exit_code = p.popen.returncode
    broker_cpu_total = None
    if broker_pid and broker_cpu0 is not None:
        now = proc_cpu_seconds(broker_pid)
        broker_cpu_total = None if now is None else now - broker_cpu0
    if not ok:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(
            f"flow run {run} exited with {[p.exit_code for p in procs]}; log {log_path}:\n{tail}"
        )
    if not any(s.count for s in samples):
        raise RuntimeError(
            f"flow run {run} exited without its readings counter ever rising above 0 "
            f"(metrics endpoint unreachable, nothing read, or the whole run took less than "
            f"one --poll-interval ({cfg.poll_s:g} s): give more --readings); log {log_path}"
        )
    counted = samples[-1].count
    # a flow that reached n and exited between two polls: the score records confirm below
    end_from_exit = counted < n
    first, end = _span(samples, n, t_exit, cfg.measure_after)
    consume_s = max(end.t - first.t, 1e-9)
    rate = (end.count - first.count) / consume_s
    # e2e: from the first reading (extrapolated back at the measured rate, but not before
    # the last poll that still saw zero) to the last exit
    last_zero_t = max((s.t for s in samples if s.count == 0), default=t_start)
    t_first = max(first.t - first.count / rate, last_zero_t) if rate > 0 else first.t
    cpu_consume = end.flow_cpu - first.flow_cpu
    broker_consume = (
        end.broker_cpu - first.broker_cpu
        if end.broker_cpu is not None and first.broker_cpu is not None else None
    )

    counts = count_outputs(cfg, topics)
    result = RunResult(
        run=run,
        exit_codes=[p.exit_code or 0 for p in procs],
        readings_counted=counted,
        readings_per_s=round(rate, 1),
        e2e_readings_per_s=round(n / max(t_exit - t_first, 1e-9), 1),
        consume_s=round(consume_s, 3),
        drain_s=round(t_exit - end.t, 3),
        startup_s=round(t_first - t_start, 3),
        wall_s=round(t_exit - t_start, 3),
        flow_cpu_s=round(sum(p.cpu_s for p in procs), 3),
        flow_cpu_consume_s=round(cpu_consume, 3),
        flow_cpu_pct_consume=round(100 * cpu_consume / consume_s, 1),
        flow_peak_rss_mib=round(max(max(p.maxrss_kib, p.hwm_kib) for p in procs) / 1024, 1),
        flow_peak_rss_mib_total=round(sum(max(p.maxrss_kib, p.hwm_kib) for p in procs) / 1024, 1),
        broker_cpu_s=None if broker_cpu_total is None else round(broker_cpu_total, 3),
        broker_cpu_consume_s=None if broker_consume is None else round(broker_consume, 3),
        # clock-tick granularity can make a quiet machine read slightly negative
        other_cpu_pct_consume=max(
            0.0, round(100 * (end.other_cpu - first.other_cpu) / consume_s, 1)
        ),
        alerts=counts["alerts"],
        scores=counts["scores"],
        scored_readings=counts["scored_readings"],
        dead_letters=counts["dead"],
        dead_letter_reasons=counts["reasons"],
        consistent=(counted == n or end_from_exit)
        and counts["dead"] == 0
        and (counts["scores"], counts["scored_readings"]) == cfg.expected,
        polls=len(samples),
        end_from_exit=end_from_exit,
        log=str(log_path) if cfg.log_dir else None,
    )
    if cfg.log_dir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def count_outputs(cfg: _Config, topics: dict[str, str]) -> dict[str, Any]:
    """Read back the run's output topics: how many alerts, scores and dead letters, and how
    many readings the score records account for."""
    timeout = 60 + cfg.readings / 5000
    scores = read_all(cfg.bootstrap, topics["scores"], timeout=timeout, config=cfg.kafka)
    decode = msgspec.json.Decoder(_ScoreReadings).decode
    scored = sum(decode(m.value()).readings for m in scores)
    alerts = read_all(cfg.bootstrap, topics["alerts"], timeout=timeout, config=cfg.kafka)
    dead = read_all(cfg.bootstrap, topics["dead"], timeout=timeout, config=cfg.kafka)
    reason = msgspec.json.Decoder(_DeadReason).decode
    reasons = Counter(reason(m.value()).reason for m in dead)
    return {
        "scores": len(scores), "scored_readings": scored, "alerts": len(alerts),
        "dead": len(dead), "reasons": dict(reasons),
    }


# --- reporting -------------------------------------------------------------------------------
_COLUMNS = (
    ("readings/s", "readings_per_s", "{:,.0f}"),
    ("e2e/s", "e2e_readings_per_s", "{:,.0f}"),
    ("consume s", "consume_s", "{:.2f}"),
    ("drain s", "drain_s", "{:.2f}"),
    ("start s", "startup_s", "{:.2f}"),
    ("flow CPU s", "flow_cpu_s", "{:.2f}"),
    ("CPU% consume", "flow_cpu_pct_consume", "{:.0f}"),
    ("peak RSS MiB", "flow_peak_rss_mib", "{:.0f}"),
    ("broker CPU s", "broker_cpu_s", "{:.2f}"),
    ("other CPU%", "other_cpu_pct_consume", "{:.0f}"),
    ("alerts", "alerts", "{:,.0f}"),
    ("scores", "scores", "{:,.0f}"),
    ("dead", "dead_letters", "{:,.0f}"),
    ("wall s", "wall_s", "{:.2f}"),
)


def median_of(runs: Sequence[RunResult]) -> dict[str, float | None]:
    """Median of every numeric figure over the runs."""
    out: dict[str, float | None] = {}
    keys = [key for _, key, _ in _COLUMNS] + ["flow_cpu_consume_s", "broker_cpu_consume_s"]
    for key in keys:
        values = [getattr(r, key) for r in runs if getattr(r, key) is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    return out


def table(runs: Sequence[RunResult], median: dict[str, float | None]) -> str:
    """The runs (and their median when there are several) as an aligned text table."""
    rows = [["run", *(c[0] for c in _COLUMNS)]]

    def fmt(value: Any, pattern: str) -> str:
        return "-" if value is None else pattern.format(value)

    for r in runs:
        rows.append([str(r.run), *(fmt(getattr(r, k), f) for _, k, f in _COLUMNS)])
    if len(runs) > 1:
        rows.append(["median", *(fmt(median[k], f) for _, k, f in _COLUMNS)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True))
                     for row in rows)


def git_commit() -> dict[str, Any]:
    """The commit measured, and whether the working tree differed from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def versions() -> dict[str, str]:
    """Versions of what decides the result."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("bytewax", "confluent-kafka", "msgspec", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# --- command line ----------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    """The ``python -m bench.throughput`` argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description=(
            "Measure the detection flow's throughput end to end through a real broker: preload "
            "simulated readings into a topic, run `python -m bytewax.run flows.detect` over them "
            "until it exits at the end, and report readings/s (start-up excluded), the flow's "
            "CPU and peak RSS, the broker's CPU and the alerts/scores/dead letters written."
        ),
        epilog=(
            "examples:\n"
            "  python -m bench.throughput\n"
            "  python -m bench.throughput --readings 500000 --sensors 10000 --repeat 3 "
            "--json out/bench.json\n"
            "  python -m bench.throughput --recovery --snapshot-interval 10\n"
            "  python -m bench.throughput --brokers localhost:9092 --partitions 4 "
            "--processes 2\n"
            "  python -m bench.throughput --flow-prefix 'py-spy record -o flow.svg --'"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument("--readings", type=positive_int, default=500_000, metavar="N",
                   help="readings to preload and process (default 500000)")
    d.add_argument("--sensors", type=positive_int, default=10_000,
                   help="simulated sensors (default 10000)")
    d.add_argument("--metrics", type=positive_int, default=4, metavar="M",
                   help="metrics per reading: the simulator's defaults, then generated names "
                        "(default 4)")
    d.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    d.add_argument("--interval", type=positive_duration_text, default="10s", metavar="DURATION",
                   help="event time between two readings of one sensor (default 10s)")
    d.add_argument("--anomaly-rate", type=float, default=6.0, metavar="R",
                   help="injected anomalies per sensor per simulated day (default 6)")
    d.add_argument("--partitions", type=positive_int, default=1,
                   help="partitions of the readings topic (default 1)")
    d.add_argument("--warmup-minutes", type=float, default=0.0, metavar="M",
                   help="simulated minutes preloaded before the --readings and read by every "
                        "run untimed, so the detectors judge the timed readings warm (e.g. 360 "
                        "fills every calibration history); readings/s then counts only the "
                        "--readings after them (default 0: time from the first reading)")
    f = p.add_argument_group("flow")
    f.add_argument("--window", type=positive_duration_text, default="5m", metavar="DURATION",
                   help="VIGIL_WINDOW_LENGTH (default 5m)")
    f.add_argument("--hop", type=positive_duration_text, default="1m", metavar="DURATION",
                   help="VIGIL_WINDOW_HOP (default 1m)")
    f.add_argument("--workers", type=positive_int, default=1,
                   help="Bytewax workers per process, `-w` (default 1)")
    f.add_argument("--processes", type=positive_int, default=1,
                   help="flow processes, started with `-i`/`-a` on free local ports (default 1)")
    f.add_argument("--instances", type=positive_int, default=1, metavar="N",
                   help="independent flow processes, each reading its share of the partitions "
                        "(VIGIL_INSTANCES / VIGIL_INSTANCE; no exchange between them) and with "
                        "its own recovery store (default 1; needs --partitions >= N)")
    f.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="VIGIL_CONSUMER_BATCH_SIZE (default: the flow's own, 5000)")
    f.add_argument("--shards", type=positive_int, metavar="N", action="append",
                   help="VIGIL_STATE_SHARDS (default: the flow's own). More than once compares "
                        "shard counts in one run, like --detectors (with both: every pair)")
    f.add_argument("--detectors", action="append", metavar="NAMES",
                   help="VIGIL_DETECTORS for the flow (default: its own). Give it more than "
                        "once to compare detector sets in one run: runs alternate between "
                        "them and each set gets its own median and its ratio to the first")
    f.add_argument("--recovery", action="store_true",
                   help="run with a fresh recovery store: `-r DIR -s SNAPSHOT -b 0`")
    f.add_argument("--snapshot-interval", type=positive_float, default=10.0, metavar="S",
                   help="seconds between recovery snapshots with --recovery (default 10)")
    f.add_argument("--flow-prefix", default="", metavar="CMD",
                   help="command put before the flow's python, e.g. a profiler "
                        "('py-spy record -o out.svg --'); CPU/RSS then include it")
    r = p.add_argument_group("run")
    r.add_argument("--brokers", metavar="HOST:PORT",
                   help="use this running broker (Redpanda, Kafka) instead of starting tansu "
                        "(default: VIGIL_TEST_BROKERS if set)")
    r.add_argument("--repeat", type=positive_int, default=1, metavar="K",
                   help="run the flow K times over the same preloaded topic (default 1)")
    r.add_argument("--poll-interval", type=positive_float, default=POLL_S, metavar="S",
                   help="seconds between two scrapes of the flow's /metrics while waiting for "
                        "the first reading and for the last (default 0.1)")
    r.add_argument("--mid-poll-interval", type=positive_float, default=MID_POLL_S,
                   metavar="S",
                   help="seconds between two scrapes in the middle of the run: every scrape "
                        "costs the flow CPU, so fewer disturb it less (default 1)")
    r.add_argument("--timeout", type=positive_float, default=900.0, metavar="S",
                   help="give up on one flow run after S seconds (default 900)")
    r.add_argument("--json", type=Path, metavar="OUT.json", help="write every figure as JSON")
    r.add_argument("--log-dir", type=Path, metavar="DIR",
                   help="keep the flow logs here (default: a temp dir, removed after a good run)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


@contextlib.contextmanager
def open_broker(brokers: str | None, kafka: dict[str, str]) -> Iterator[
    tuple[TestBroker | ExternalBroker, int | None]
]:
    """The broker to measure against and its pid (None for one we did not start)."""
    if brokers:
        ext = ExternalBroker(brokers, kafka)
        try:
            yield ext, None
        finally:
            ext.delete_unique_topics()
        return
    with TestBroker() as tansu:
        assert tansu.process is not None
        yield tansu, tansu.process.pid


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 when every run finished and its outputs add up, else 1."""
    p = parser()
    args = p.parse_args(argv)
    if (parse_duration(args.window) / parse_duration(args.hop)) % 1:
        p.error("--window must be a whole multiple of --hop")
    if args.instances > 1 and args.processes > 1:
        p.error("--instances (independent flows) and --processes (one Bytewax cluster) "
                "are two ways to run several processes: choose one")
    if args.warmup_minutes < 0:
        p.error("--warmup-minutes must be 0 or more")
    if args.instances > args.partitions:
        p.error(f"--instances {args.instances} needs at least as many --partitions "
                f"(got {args.partitions}): each instance reads its own")
    try:
        brokers, kafka = broker_config(args.brokers)
    except (ValueError, SettingsError) as exc:
        p.error(str(exc))
    fleet = Fleet(args.sensors, metric_names(args.metrics), args.seed,
                  parse_duration(args.interval), args.anomaly_rate, DEFAULT_START)
    progress = not args.no_progress
    t0 = time.perf_counter()
    with open_broker(brokers, kafka) as (broker, broker_pid):
        readings_topic = broker.unique_topics(
            "bench-throughput", {"readings": args.partitions}
        )["readings"]
        print(f"broker {broker.bootstrap} ({'external' if brokers else 'tansu'}), "
              f"readings topic {readings_topic!r} with {args.partitions} partition(s)",
              file=sys.stderr)
        tick_s = parse_duration(args.interval).total_seconds()
        warmup_ticks = round(args.warmup_minutes * 60 / tick_s)
        produced = preload(broker.bootstrap, kafka, readings_topic, fleet, args.readings,
                           progress, warmup_ticks)
        warm_note = (f", the first {produced.warmup_readings:,} a warm-up not timed"
                     if produced.warmup_readings else "")
        print(f"preloaded {produced.readings:,} readings ({produced.ticks} ticks, event time "
              f"{produced.event_time_start} .. {produced.event_time_end}{warm_note}) in "
              f"{produced.seconds:.1f} s: {produced.readings_per_s:,.0f} readings/s",
              file=sys.stderr)
        if produced.failed:
            print(f"error: {produced.failed} readings were not delivered", file=sys.stderr)
            return 1
        cfg = _Config(
            bootstrap=broker.bootstrap, kafka=kafka, readings_topic=readings_topic,
            readings=produced.readings, window=args.window, hop=args.hop,
            workers=args.workers, processes=args.processes, batch_size=args.batch_size,
            shards=None, recovery=args.recovery, instances=args.instances,
            snapshot_interval=args.snapshot_interval,
            flow_prefix=shlex.split(args.flow_prefix), log_dir=args.log_dir,
            timeout=args.timeout, progress=progress, poll_s=args.poll_interval,
            mid_poll_s=args.mid_poll_interval,
            expected=expected_windows(fleet, produced.readings, args.window, args.hop),
            measure_after=produced.warmup_readings,
        )
        variants = _variants(args.detectors or [None], args.shards or [None])
        by_variant: dict[str | None, list[RunResult]] = {v: [] for v in variants}
        for k in range(1, args.repeat + 1):
            for v, (det, shards) in variants.items():  # alternate: drifts hit every set alike
                res = run_flow(dataclasses.replace(cfg, detectors=det, shards=shards), broker, k,
                               broker_pid)
                by_variant[v].append(res)
                label = f"run {k}" + (f" [{v}]" if v is not None else "")
                print(f"{label}: {res.readings_per_s:,.0f} readings/s "
                      f"({res.e2e_readings_per_s:,.0f}/s incl. final flush), "
                      f"flow CPU {res.flow_cpu_s:.1f} s, peak RSS {res.flow_peak_rss_mib:.0f} "
                      f"MiB, {res.scores:,} scores, {res.alerts:,} alerts, "
                      f"{res.dead_letters:,} dead letters"
                      + ("" if res.consistent else "  ** counts do not add up **"),
                      file=sys.stderr)
                if res.other_cpu_pct_consume > 20:
                    print(f"warning: other processes used {res.other_cpu_pct_consume:.0f}% of "
                          f"a core during {label}: the machine was not quiet, figures are low",
                          file=sys.stderr)
        first = next(iter(variants))
        runs = by_variant[first]
    median = median_of(runs)
    config = {
        "readings": produced.readings, "sensors": args.sensors, "metrics": args.metrics,
        "metric_names": list(fleet.metrics), "seed": args.seed, "interval": args.interval,
        "anomaly_rate": args.anomaly_rate, "partitions": args.partitions,
        "warmup_minutes": args.warmup_minutes, "warmup_readings": produced.warmup_readings,
        "window": args.window, "hop": args.hop, "workers": args.workers,
        "processes": args.processes, "instances": args.instances,
        "batch_size": args.batch_size, "shards": variants[first][1],
        "recovery": args.recovery,
        "snapshot_interval": args.snapshot_interval if args.recovery else None,
        "flow_prefix": args.flow_prefix or None, "repeat": args.repeat,
        "poll_interval": args.poll_interval, "mid_poll_interval": args.mid_poll_interval,
        "broker": "external" if brokers else "tansu", "cpus": os.cpu_count(),
        "expected_scores": cfg.expected[0], "expected_scored_readings": cfg.expected[1],
        "detectors": variants[first][0],
    }
    report = {
        "config": config, "produce": asdict(produced), "runs": [asdict(r) for r in runs],
        "median": median, "readings_per_s": median["readings_per_s"],
        "consistent": all(r.consistent for rs in by_variant.values() for r in rs),
        "wall_s": round(time.perf_counter() - t0, 3), **git_commit(), "versions": versions(),
    }
    shown = ", ".join(f"{k}={v}" for k, v in config.items()
                      if k in ("readings", "sensors", "metrics", "partitions", "workers",
                               "processes", "instances", "recovery", "snapshot_interval",
                               "batch_size"))
    print(f"\n{shown}\nproduce: {produced.readings_per_s:,.0f} readings/s\n")
    if len(variants) == 1:
        print(table(runs, median))
    else:
        base = median["readings_per_s"] or 0.0
        report["variants"] = {}
        for v, rs in by_variant.items():
            med = median_of(rs)
            ratio = (med["readings_per_s"] or 0.0) / base if base else float("nan")
            report["variants"][v] = {
                "runs": [asdict(r) for r in rs], "median": med, "ratio_to_first": round(ratio, 3),
            }
            print(f"{v}: median {med['readings_per_s']:,.0f} readings/s, "
                  f"{ratio:.2f}x the first set")
            print(table(rs, med) + "\n")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if report["consistent"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
