"""`lappdeploy bench` as a library call: run directories in, records in OUT/bench.jsonl (+ the report).

Several run directories given together are timed interleaved (see `protocol`), so the measured
speed-up of a pruned model over its dense original is not an artefact of the machine drifting between
two separate runs. `vs_dense` adds each run's dense architecture (random weights) to the set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from lappdeploy.bench.environment import capture_environment
from lappdeploy.bench.jetson import PowerSampler, tegrastats_path
from lappdeploy.bench.protocol import Session, Timing, TimingPolicy, measure_batch
from lappdeploy.bench.records import BENCH_FILE, BenchRecord, append_records, read_records
from lappdeploy.bench.runtimes import RUNTIMES, RecordedTiming, RuntimeSpec
from lappdeploy.bench.targets import BenchTarget, dense_twin, load_targets
from lappdeploy.config import BenchConfig
from lappdeploy.errors import BenchError
from lappdeploy.rundir import BENCH, check_appendable

__all__ = ["bench_runs", "default_bench_dir", "resolve_device", "time_targets"]

log = logging.getLogger(__name__)

Progress = Callable[[str, float], Any]  # (what is being timed, fraction of it done)
_THROUGHPUT_SHARE = 0.3  # back-to-back throughput calls: this share of min_seconds per session and batch
_ENERGY_SECONDS = 10.0  # with a power sampler, integrate over >= 10 s of steady load (docs/deployment.md#jetson)


def resolve_device(config: BenchConfig) -> str:
    return config.device if config.device != "auto" else RUNTIMES.get(config.runtime).auto_device()


def default_bench_dir(target: BenchTarget) -> Path:
    if target.checkpoint is None and target.export_dir is None:  # a model built in memory
        return Path("bench")
    source = Path(target.source)
    base = source if source.is_dir() else source.parent
    if base.name == "export":
        base = base.parent
    return base / "bench"


def _check_out(out: Path) -> Path:
    out = check_appendable(out, BENCH)
    if (out / BENCH_FILE).is_file():
        read_records(out)  # a corrupt file stops here, before anything is timed
    return out


def _architecture_key(target: BenchTarget) -> tuple:
    """Targets with equal keys have the same dense architecture (name, constructor arguments, input)."""
    return (target.architecture, repr(target.card.kwargs if target.card else None), target.input_shape)


def _with_twins(targets: list[BenchTarget]) -> list[BenchTarget]:
    """Dense twins first (one per architecture not already given densely), then the runs."""
    covered = {_architecture_key(t) for t in targets if t.is_dense}
    twins: dict[tuple, BenchTarget] = {}
    for t in targets:
        key = _architecture_key(t)
        if key not in covered and key not in twins:
            twins[key] = dense_twin(t)
    return [*twins.values(), *targets]


def _record(
    target: BenchTarget, order: int, timing: Timing, ran: Session | RecordedTiming, common: dict[str, Any], energy
) -> BenchRecord:
    """`ran` says what measured `timing` and how (its provider and timing method)."""
    lat = timing.latency
    return BenchRecord(
        label=target.label,
        model=target.architecture,
        source=target.source,
        plan_id=target.plan_id,
        method=target.method,
        is_dense=target.is_dense,
        input_shape=list(target.input_shape),
        macs=target.macs,
        params=target.params,
        provider=ran.provider,
        batch=timing.batch,
        timing=ran.timing,
        latency_median_ms=lat.median_ms,
        latency_p90_ms=lat.p90_ms,
        latency_p99_ms=lat.p99_ms,
        latency_mean_ms=lat.mean_ms,
        latency_std_ms=lat.std_ms,
        latency_min_ms=lat.min_ms,
        samples=lat.samples,
        measured_s=timing.measured_s,
        throughput_ips=timing.throughput_ips,
        host_latency_median_ms=timing.host_latency.median_ms if timing.host_latency else None,
        warmup_s=timing.warmup_s,
        warmup_calls=timing.warmup_calls,
        tf32=getattr(ran, "tf32", None),
        cuda_graph=getattr(ran, "cuda_graph", None),
        cpu_features=getattr(ran, "cpu_features", None),
        order=order,
        **(energy or {}),
        **common,
    )


def _energy(sampler, timing) -> dict[str, Any] | None:
    """Energy per image over the session's throughput windows, from the tegrastats sampler."""
    if sampler is None:
        return None
    joules, images, watts, rail = 0.0, 0, [], None
    for start, end, count in timing.throughput_windows:
        window = sampler.energy(start, end)
        if window is None:
            return None
        joules += window["energy_j"]
        images += count
        watts.append(window["mean_power_w"])
        rail = window["rail"]
    return {
        "energy_mj_per_image": joules / images * 1e3,
        "power_w": sum(watts) / len(watts),
        "power_rail": rail,
    }


def _power_sampler(device: str) -> PowerSampler | None:
    if device != "cuda" or tegrastats_path() is None:
        return None
    return PowerSampler()


def _recorded_records(
    runtime: RuntimeSpec, targets: list[BenchTarget], config: BenchConfig, common
) -> list[BenchRecord]:
    """Records of timings made on the target device (trtexec), in the order of `targets`."""
    records = []
    for order, (target, recorded) in enumerate(zip(targets, runtime.read_results(targets, config), strict=True)):
        fields = dict(common, device_name=recorded.device_name, threads=None)
        records.append(_record(target, order, recorded.measured, recorded, fields, None))
    return records


def bench_runs(
    paths: list[str | os.PathLike[str]],
    config: BenchConfig,
    *,
    out: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    models: list[BenchTarget] = (),
) -> tuple[list[BenchRecord], Path]:
    """Time the models of `paths` (run directories, checkpoints or export directories) and the `models` built
    in memory (`targets.model_target`) as `config` says; append the records to OUT/bench.jsonl (default:
    FIRST_RUN/bench, ./bench for a model built in memory) and return them with OUT."""
    if not paths and not models:
        raise BenchError("give at least one run directory (or a model with --model) to time")
    device = _check_runtime(config)
    targets = load_targets(list(paths), list(models))
    out = Path(out).expanduser() if out is not None else default_bench_dir(targets[0])
    out = _check_out(out)
    records = time_targets(targets, config, out, progress=progress, device=device)
    out.mkdir(parents=True, exist_ok=True)
    append_records(out / BENCH_FILE, records)
    log.info("%d records appended to %s", len(records), out / BENCH_FILE)
    return records, out


def _check_runtime(config: BenchConfig) -> str:
    """The device to time on, after checking the runtime can run there (nothing written yet)."""
    runtime = RUNTIMES.get(config.runtime)
    device = resolve_device(config)
    if runtime.gpu_only and device != "cuda":
        raise BenchError(f"--runtime {config.runtime} needs --device cuda")
    runtime.check_device(config, device)
    return device


def time_targets(
    targets: list[BenchTarget],
    config: BenchConfig,
    workdir: Path,
    *,
    progress: Progress | None = None,
    device: str | None = None,
) -> list[BenchRecord]:
    """Time `targets` together (interleaved) and return their records; ONNX graphs that have to be
    exported for ONNX Runtime go to WORKDIR/onnx/. The library entry point for models built in memory
    (benchmarks/latency_vs_macs.py)."""
    device = device or _check_runtime(config)
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    threads = torch.get_num_threads()
    extra = ("onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt")
    environment = {**capture_environment(device, extra_packages=extra), "config": config.to_dict()}
    common = {
        "runtime": config.runtime,
        "device": device,
        "device_name": environment["device"],
        "precision": config.precision,
        "threads": threads if device == "cpu" else None,
        "session": uuid.uuid4().hex[:12],
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": environment,
    }
    runtime = RUNTIMES.get(config.runtime)
    try:
        if runtime.read_results is not None:
            return _recorded_records(runtime, targets, config, common)
        if config.vs_dense:
            targets = _with_twins(targets)
        return _time_all(runtime, targets, config, device, threads, workdir, common, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _time_all(runtime: RuntimeSpec, targets, config, device, threads, out: Path, common, progress) -> list[BenchRecord]:
    sessions = [runtime.open_session(t, config, device, threads, out / "onnx") for t in targets]
    policy = TimingPolicy(
        min_seconds=config.min_seconds,
        min_samples=config.min_samples,
        warmup_seconds=config.warmup_seconds,
        throughput_seconds=max(1.0, _THROUGHPUT_SHARE * config.min_seconds),
    )
    sampler = _power_sampler(device)
    if sampler is not None:
        policy = dataclasses.replace(policy, throughput_seconds=max(_ENERGY_SECONDS, policy.throughput_seconds))
    records = []
    with sampler or contextlib.nullcontext():
        for step, batch in enumerate(config.batch):

            def report(fraction: float, step=step, batch=batch) -> None:
                if progress is not None:
                    progress(f"batch {batch}", (step + fraction) / len(config.batch))

            timings = measure_batch(sessions, batch, policy, on_round=report)
            if sampler is not None:  # the last window needs a tegrastats sample after its end
                sampler.wait_for_samples(len(sampler.samples) + 2, timeout_s=2.0)
            for order, (target, session, timing) in enumerate(zip(targets, sessions, timings, strict=True)):
                records.append(_record(target, order, timing, session, common, _energy(sampler, timing)))
    if progress is not None:
        progress("done", 1.0)
    return records
