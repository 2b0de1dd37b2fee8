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
from types import SimpleNamespace
from typing import Any

from lappdeploy.bench.environment import capture_environment
from lappdeploy.bench.protocol import TimingPolicy, measure_batch
from lappdeploy.bench.records import BENCH_FILE, BenchRecord, append_records, read_records
from lappdeploy.bench.runtimes import RUNTIMES, OrtSession, TensorRTSession, TorchSession, check_ort_provider
from lappdeploy.bench.targets import BenchTarget, dense_twin, load_targets
from lappdeploy.config import BenchConfig
from lappdeploy.errors import BenchError
from lappdeploy.rundir import BENCH, check_appendable

__all__ = ["bench_runs", "default_bench_dir", "resolve_device", "time_targets"]

log = logging.getLogger(__name__)

Progress = Callable[[str, float], Any]  # (what is being timed, fraction of it done)
_THROUGHPUT_SHARE = 0.3  # back-to-back throughput calls: this share of min_seconds per session and batch
_ENERGY_SECONDS = 10.0  # with a power sampler, integrate over >= 10 s of steady load (DEPLOY.md)


def resolve_device(config: BenchConfig) -> str:
    if config.device != "auto":
        return config.device
    if config.runtime in ("trt", "trtexec"):
        return "cuda"
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    if config.runtime == "ort":
        with contextlib.suppress(Exception):
            import onnxruntime

            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                return "cuda"
        return "cpu"
    return "cuda"


def default_bench_dir(target: BenchTarget) -> Path:
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


def _onnx_for(target: BenchTarget, precision: str, workdir: Path) -> Path:
    """The ONNX graph ONNX Runtime times: the run's checked export when there is one, else exported here
    (checked and parity-tested the same way) into OUT/onnx/."""
    from lappdeploy.export.onnx_export import to_onnx

    exported = target.export_dir / "model.onnx" if target.export_dir else None
    if precision == "int8":
        qdq = target.export_dir / "model_int8_qdq.onnx" if target.export_dir else None
        if qdq is None or not qdq.is_file():
            raise BenchError(
                f"int8 on ONNX Runtime times the Q/DQ graph of `lappdeploy export {target.source} --trt --precision "
                "int8` (it writes model_int8_qdq.onnx even without TensorRT); none exists yet"
            )
        return qdq
    if exported is None or not exported.is_file():
        if target.model is None:
            raise BenchError(f"{target.source} has no model.onnx; export it with `lappdeploy export`")
        import torch

        workdir.mkdir(parents=True, exist_ok=True)
        exported = workdir / f"{target.slug}.onnx"
        # exported afresh every time (a few seconds): a file left by an earlier bench may be another model
        log.info("exporting %s to %s", target.label, exported)
        example = torch.randn((2, *target.input_shape), generator=torch.Generator().manual_seed(0))
        to_onnx(target.model, example, exported, dynamic_batch=True)
    if precision == "fp16":
        from lappdeploy.export.precision import to_fp16_onnx

        fp16 = workdir / f"{target.slug}_fp16.onnx"
        workdir.mkdir(parents=True, exist_ok=True)
        to_fp16_onnx(exported, fp16)
        return fp16
    return exported


def _engine_for(target: BenchTarget, precision: str) -> Path:
    engine = target.export_dir / f"model_{precision}.engine" if target.export_dir else None
    if engine is None or not engine.is_file():
        raise BenchError(
            f"no {precision} TensorRT engine for {target.label} (looked for {engine or 'an export directory'}); "
            f"build it with `lappdeploy export {target.source} --trt --precision {precision}`"
        )
    return engine


def _ort_provider(config: BenchConfig, device: str) -> str:
    return config.ort_provider or ("cuda" if device == "cuda" else "cpu")


def _open_session(target: BenchTarget, config: BenchConfig, device: str, threads: int, workdir: Path):
    if config.runtime == "torch":
        if target.model is None:
            raise BenchError(f"--runtime torch needs the run's checkpoint; {target.source} is an export directory")
        return TorchSession(
            target.model,
            target.input_shape,
            device=device,
            precision=config.precision,
            channels_last=config.channels_last,
            compile=config.compile,
            seed=config.seed,
        )
    if config.runtime == "ort":
        onnx = _onnx_for(target, config.precision, workdir)
        return OrtSession(onnx, provider=_ort_provider(config, device), threads=threads, seed=config.seed)
    if target.twin_of is not None:
        raise BenchError(
            "--vs-dense with --runtime trt needs an engine of the dense model: export a dense run with "
            "`lappdeploy export RUN --trt` and bench both directories instead"
        )
    return TensorRTSession(_engine_for(target, config.precision), seed=config.seed)


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


def _record(target: BenchTarget, order: int, timing, session, common: dict[str, Any], energy) -> BenchRecord:
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
        provider=session.provider,
        batch=timing.batch,
        timing=session.timing,
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


def _power_sampler(device: str):
    from lappdeploy.bench.jetson import PowerSampler, tegrastats_path

    if device != "cuda" or tegrastats_path() is None:
        return None
    return PowerSampler()


def _trtexec_records(targets: list[BenchTarget], config: BenchConfig, common: dict[str, Any]) -> list[BenchRecord]:
    from lappdeploy.bench.protocol import Timing
    from lappdeploy.bench.trtexec_results import read_trtexec

    if config.vs_dense:
        raise BenchError(
            "--vs-dense cannot time anything with --runtime trtexec (it reads results); run the dense model's "
            "trtexec.sh on the target too and bench both export directories"
        )
    records = []
    for order, target in enumerate(targets):
        if target.export_dir is None:
            raise BenchError(f"{target.source} has no export directory; `lappdeploy export --trt` writes trtexec.sh")
        result = read_trtexec(target.export_dir, config.precision)
        timing = Timing(
            batch=result.batch,
            latency=result.latency,
            host_latency=result.host_latency,
            measured_s=result.measured_s,
            throughput_ips=result.throughput_ips,
            warmup_s=0.0,
            warmup_calls=0,
        )
        ran = SimpleNamespace(provider=f"trtexec-{result.trt_version or 'unknown'}", timing="trtexec-gpu-compute")
        fields = dict(common, device_name=result.device_name or "unknown GPU", threads=None)
        records.append(_record(target, order, timing, ran, fields, None))
    return records


def bench_runs(
    paths: list[str | os.PathLike[str]],
    config: BenchConfig,
    *,
    out: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> tuple[list[BenchRecord], Path]:
    """Time the models of `paths` (run directories, checkpoints or export directories) as `config` says;
    append the records to OUT/bench.jsonl (default: FIRST_RUN/bench) and return them with OUT."""
    if not paths:
        raise BenchError("give at least one run directory to time")
    device = _check_runtime(config)
    targets = load_targets(list(paths))
    out = Path(out).expanduser() if out is not None else default_bench_dir(targets[0])
    out = _check_out(out)
    records = time_targets(targets, config, out, progress=progress, device=device)
    out.mkdir(parents=True, exist_ok=True)
    append_records(out / BENCH_FILE, records)
    log.info("%d records appended to %s", len(records), out / BENCH_FILE)
    return records, out


def _check_runtime(config: BenchConfig) -> str:
    """The device to time on, after checking the runtime can run there (nothing written yet)."""
    import torch

    spec = RUNTIMES.get(config.runtime)
    device = resolve_device(config)
    if spec.gpu_only and device != "cuda":
        raise BenchError(f"--runtime {config.runtime} needs --device cuda")
    if device == "cuda" and config.runtime == "torch" and not torch.cuda.is_available():
        raise BenchError(
            "--device cuda asked for, but no CUDA GPU is visible here (torch.cuda.is_available() is False)"
        )
    if config.runtime == "ort":
        check_ort_provider(_ort_provider(config, device))
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
    import torch

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
    try:
        if config.runtime == "trtexec":
            return _trtexec_records(targets, config, common)
        if config.vs_dense:
            targets = _with_twins(targets)
        return _time_all(targets, config, device, threads, workdir, common, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _time_all(targets, config, device, threads, out: Path, common, progress) -> list[BenchRecord]:
    sessions = [_open_session(t, config, device, threads, out / "onnx") for t in targets]
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
