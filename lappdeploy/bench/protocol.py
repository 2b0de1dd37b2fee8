"""The timing protocol (docs/deployment.md#measuring-latency), independent of the runtime.

For one batch size and one or more sessions (compiled models, ONNX Runtime sessions, engines):

1. warm-up of every session after the batch-size change until both `warmup_seconds` and 50 calls are
   reached (50 calls of a 0.2 ms engine are over long before the GPU clocks have ramped up, and a
   slow model needs the calls: the first ones build, compile or allocate);
2. latency: rounds; in each round every session runs a chunk of timed calls, the order rotating
   from round to round (A B C, B C A, C A B ...), so drift of the machine (thermal throttling,
   other load, clock changes) hits all sessions alike. The first call of a chunk after another
   session ran is not recorded (its caches hold the other model). Rounds go on until every session
   has both `min_samples` timed calls and `min_seconds` of timed calls;
3. throughput, with the pipeline kept full: each session runs calls back to back without waiting for
   each one (GPU: enqueue all, synchronise once), again interleaved over rounds;
   images / second = calls x batch / elapsed, not batch / latency.

A session needs `infer() -> (latency_ms, host_ms)` (one synchronous call; on a GPU latency_ms comes from
CUDA events and host_ms from the host clock), `run_back_to_back(n) -> seconds` and `set_batch(batch)`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = ["LatencyStats", "Session", "Timing", "TimingPolicy", "measure_batch"]

log = logging.getLogger(__name__)

_MIN_WARMUP_CALLS = 50  # warm-up: warmup_seconds and 50 calls, both (docs/deployment.md#measuring-latency)
_ROUNDS_AT_LEAST = 10  # a latency chunk lasts min_seconds / 10, so every session gets >= 10 turns
_THROUGHPUT_ROUNDS = 3


class Session(Protocol):
    provider: str  # what actually runs the model
    timing: str  # how infer() measures latency: "host-clock" or "cuda-events"

    def set_batch(self, batch: int) -> None: ...

    def infer(self) -> tuple[float, float]: ...

    def run_back_to_back(self, calls: int) -> float: ...


@dataclass(frozen=True)
class TimingPolicy:
    min_seconds: float = 10.0  # timed calls per session and batch size, in seconds of calls
    min_samples: int = 50
    warmup_seconds: float = 2.0
    throughput_seconds: float = 3.0  # back-to-back calls per session and batch size (s)


@dataclass
class LatencyStats:
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    samples: int

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> LatencyStats:
        values = np.asarray(samples_ms, dtype=np.float64)
        if values.size == 0:
            raise ValueError("no latency samples")
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return cls(
            median_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            mean_ms=float(values.mean()),
            std_ms=float(values.std(ddof=1)) if values.size > 1 else 0.0,
            min_ms=float(values.min()),
            samples=int(values.size),
        )


@dataclass
class Timing:
    """What the protocol measured for one session at one batch size."""

    batch: int
    latency: LatencyStats
    host_latency: LatencyStats | None  # GPU sessions: the host's view of the same calls
    measured_s: float  # wall time of the timed latency chunks
    throughput_ips: float  # images / s with the pipeline full
    warmup_s: float
    warmup_calls: int
    throughput_windows: list[tuple[float, float, int]] = field(default_factory=list)  # (start, end, images)
    latencies_ms: list[float] = field(default_factory=list, repr=False)


def _warm_up(session: Session, seconds: float, clock: Callable[[], float]) -> tuple[float, int]:
    start = clock()
    calls = 0
    while calls < _MIN_WARMUP_CALLS or clock() - start < seconds:
        session.infer()
        calls += 1
    return clock() - start, calls


def _rotation(round_index: int, n: int) -> list[int]:
    """Session order of a round: A B C, then B C A, then C A B ..."""
    return [(round_index + k) % n for k in range(n)]


def _timed_chunk(session: Session, seconds: float, clock, latencies: list[float], host: list[float]) -> float:
    """Timed calls of one session for `seconds` (at least one); returns the time they took (s)."""
    start = clock()
    while True:
        latency_ms, host_ms = session.infer()
        latencies.append(latency_ms)
        host.append(host_ms)
        if clock() - start >= seconds:
            break
    return clock() - start


def _measure_latency(sessions: Sequence[Session], policy: TimingPolicy, clock, order_log, on_round):
    """Interleaved rounds of timed chunks until every session has `min_samples` calls and `min_seconds` of
    them; per session its latencies (ms), the host's view of them (ms) and the seconds spent."""
    n = len(sessions)
    chunk_s = policy.min_seconds / _ROUNDS_AT_LEAST
    latencies: list[list[float]] = [[] for _ in sessions]
    host: list[list[float]] = [[] for _ in sessions]
    spent = [0.0] * n
    previous = -1
    round_index = 0

    def progress(i: int) -> float:
        return min(len(latencies[i]) / policy.min_samples, spent[i] / policy.min_seconds)

    while not all(len(latencies[i]) >= policy.min_samples and spent[i] >= policy.min_seconds for i in range(n)):
        for i in _rotation(round_index, n):
            # a finished session keeps running while others catch up only to keep the load alike: its
            # extra samples are recorded too (more samples never bias the median)
            if n > 1 and previous != i:
                sessions[i].infer()  # not recorded: the other model's weights are in the caches
            previous = i
            spent[i] += _timed_chunk(sessions[i], chunk_s, clock, latencies[i], host[i])
            if order_log is not None:
                order_log.append(i)
        round_index += 1
        if on_round is not None:
            on_round(min(1.0, min(progress(i) for i in range(n))))
    return latencies, host, spent


def _measure_throughput(sessions: Sequence[Session], batch: int, policy: TimingPolicy, latencies, clock):
    """Back-to-back windows, interleaved over rounds, each sized from the session's median latency to last
    throughput_seconds / rounds; per session its (start, end, images) windows."""
    windows: list[list[tuple[float, float, int]]] = [[] for _ in sessions]
    for round_index in range(_THROUGHPUT_ROUNDS):
        for i in _rotation(round_index, len(sessions)):
            median_s = float(np.median(latencies[i])) / 1e3
            calls = max(2, math.ceil(policy.throughput_seconds / _THROUGHPUT_ROUNDS / max(median_s, 1e-6)))
            sessions[i].infer()  # refill caches after the previous session, as in the latency rounds
            start = clock()
            elapsed = sessions[i].run_back_to_back(calls)
            windows[i].append((start, start + elapsed, calls * batch))
    return windows


def measure_batch(
    sessions: Sequence[Session],
    batch: int,
    policy: TimingPolicy,
    *,
    clock: Callable[[], float] = time.perf_counter,
    order_log: list[int] | None = None,
    on_round: Callable[[float], Any] | None = None,
) -> list[Timing]:
    """Time every session at `batch` by the interleaved protocol; one Timing per session, in order.

    `order_log`, when given, receives the session index of every latency chunk in the order they ran
    (tests check the interleaving with it). `on_round(fraction_done)` reports progress."""
    warmups = []
    for session in sessions:
        session.set_batch(batch)
        warmups.append(_warm_up(session, policy.warmup_seconds, clock))
    latencies, host, spent = _measure_latency(sessions, policy, clock, order_log, on_round)
    windows = _measure_throughput(sessions, batch, policy, latencies, clock)
    timings = []
    for i, session in enumerate(sessions):
        images = sum(w[2] for w in windows[i])
        seconds = sum(w[1] - w[0] for w in windows[i])
        gpu = session.timing == "cuda-events"
        timings.append(
            Timing(
                batch=batch,
                latency=LatencyStats.of(latencies[i]),
                host_latency=LatencyStats.of(host[i]) if gpu else None,
                measured_s=spent[i],
                throughput_ips=images / seconds if seconds > 0 else float("nan"),
                warmup_s=warmups[i][0],
                warmup_calls=warmups[i][1],
                throughput_windows=windows[i],
                latencies_ms=latencies[i],
            )
        )
    return timings
