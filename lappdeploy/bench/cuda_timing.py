"""The one GPU clock of the timing sessions: CUDA events recorded on the session's own stream around one
launch (GPU time), and the host clock around the same call (enqueue + wait, reported separately)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ["back_to_back", "event_timed"]


def event_timed(stream: torch.cuda.Stream, launch: Callable[[], object]) -> tuple[float, float]:
    """(GPU ms between events recorded on `stream` before and after `launch()`, host ms of the call)."""
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start = time.perf_counter()
    begin.record(stream)
    launch()
    end.record(stream)
    end.synchronize()
    return begin.elapsed_time(end), (time.perf_counter() - start) * 1e3


def back_to_back(stream: torch.cuda.Stream | None, launch: Callable[[], object], calls: int) -> float:
    """Seconds for `calls` launches without waiting for each (the pipeline kept full), synchronised once."""
    start = time.perf_counter()
    for _ in range(calls):
        launch()
    if stream is not None:
        stream.synchronize()
    return time.perf_counter() - start
