"""Does pruning pay off in real latency? resnet18, resnet50 and mobilenet_v2 at 224x224, dense and pruned
by uniform plans to MACs ratios 0.75 / 0.5 / 0.3, with widths rounded to multiples of 8 and without,
timed by the harness of `lappdeploy bench` (warm-up by time, all plans of one network interleaved,
percentiles, full-pipeline throughput) on ONNX Runtime CPU and torch CPU (plus torch CUDA, ONNX Runtime
CUDA and TensorRT where a GPU is present), batch 1 and 8. Weights are random: latency does not depend on
them. Reports per runtime the speed-up over dense divided by the MACs reduction (1.0 = perfect scaling).

    python benchmarks/latency_vs_macs.py                       # about 15 min on 2 CPU cores
    python benchmarks/latency_vs_macs.py --models resnet50 --runtimes ort --min-seconds 10
Writes benchmarks/results/latency_vs_macs/{latency_vs_macs.json, bench.jsonl, bench.csv, bench.md, *.png}.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from lappdeploy.bench.records import BENCH_FILE, append_records
from lappdeploy.bench.run import time_targets
from lappdeploy.bench.targets import BenchTarget
from lappdeploy.config import BenchConfig
from lappdeploy.environment import write_benchmark
from lappdeploy.export.onnx_export import deploy_copy
from lappdeploy.models import count_macs, create_model
from lappdeploy.report.bench_report import write_bench_report
from lappdeploy.surgery import ChannelPlan, analyze, plan_cost, remove_channels_, round_plan, uniform_plan
from lappdeploy.surgery.plan import plan_id

RATIOS = (0.75, 0.5, 0.3)
ROUND_TO = 8  # Tensor Cores want multiples of 8 for FP16 (AVX-512 CPUs run best at 16: README)


def variants(name: str, size: int) -> list[BenchTarget]:
    """The dense network and its uniform plans, each in deploy form (BN folded)."""
    torch.manual_seed(0)
    dense = create_model(name, num_classes=1000).eval()
    x = torch.randn(2, 3, size, size)
    groups = analyze(dense, x)
    dense_macs = plan_cost(groups, ChannelPlan()).macs
    plans = [("dense", ChannelPlan())]
    for ratio in RATIOS:
        plan = uniform_plan(groups, ratio)
        plans.append((f"uniform {ratio} r{ROUND_TO}", round_plan(plan, groups, ROUND_TO, budget=ratio * dense_macs)))
        plans.append((f"uniform {ratio} r1", plan))
    targets = []
    for label, plan in plans:
        model = copy.deepcopy(dense)
        if plan.groups:
            remove_channels_(model, plan, x)
        model = deploy_copy(model, x)
        macs = count_macs(model, (3, size, size))
        targets.append(
            BenchTarget(
                label=f"{name} {label}",
                source=f"{name} with random weights, {label}",
                architecture=name,
                input_shape=(3, size, size),
                macs=macs.macs,
                params=macs.params,
                plan_id=plan_id([plan.to_dict()]),
                method="dense" if label == "dense" else "uniform",
                model=model,
            )
        )
    return targets


def runtimes(requested: list[str]) -> list[tuple[str, str, str]]:
    """(runtime, device, precision) triples to time: the CPU ones always, GPU ones where they can run."""
    out = [(r, "cpu", "fp32") for r in requested if r in ("ort", "torch")]
    if torch.cuda.is_available():
        out += [("torch", "cuda", "fp32"), ("torch", "cuda", "fp16")]
        try:
            import onnxruntime

            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                out.append(("ort", "cuda", "fp32"))
        except ImportError:
            pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,resnet50,mobilenet_v2")
    parser.add_argument("--runtimes", default="ort,torch", help="CPU runtimes (GPU ones are added when present)")
    parser.add_argument("--size", type=int, default=224, help="input height and width (px)")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="per model, runtime and batch size (s)")
    parser.add_argument("--min-samples", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads [default: torch's]")
    parser.add_argument("--out", default="benchmarks/results/latency_vs_macs")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / BENCH_FILE).unlink(missing_ok=True)  # one benchmark run per directory
    records = []
    for name in args.models.split(","):
        targets = variants(name, args.size)
        for runtime, device, precision in runtimes(args.runtimes.split(",")):
            config = BenchConfig(
                runtime=runtime,
                device=device,
                precision=precision,
                batch=tuple(int(b) for b in args.batch.split(",")),
                min_seconds=args.min_seconds,
                min_samples=args.min_samples,
                threads=args.threads,
            )
            print(f"timing {name} ({len(targets)} variants) on {runtime} {device} {precision} ...", flush=True)
            batch_records = time_targets(targets, config, out)
            append_records(out / BENCH_FILE, batch_records)
            records += batch_records

    comparisons, files = write_bench_report(records, out)
    rows = [
        {
            "model": c.record.model,
            "variant": c.record.label,
            "runtime": c.record.runtime,
            "device": c.record.device,
            "precision": c.record.precision,
            "batch": c.record.batch,
            "macs": c.record.macs,
            "macs_ratio": c.macs_ratio,
            "latency_median_ms": c.record.latency_median_ms,
            "latency_p90_ms": c.record.latency_p90_ms,
            "throughput_ips": c.record.throughput_ips,
            "speedup": c.speedup,
            "speedup_per_macs_reduction": c.efficiency,
        }
        for c in comparisons
    ]
    print((out / "bench.md").read_text())
    summary = {}
    for c in comparisons:
        if c.record.is_dense or c.efficiency is None:
            continue
        key = f"{c.record.runtime}-{c.record.device}-{c.record.precision} batch {c.record.batch}"
        rounded = c.record.label.endswith(f"r{ROUND_TO}")
        summary.setdefault(key, {"rounded": [], "unrounded": []})["rounded" if rounded else "unrounded"].append(
            c.efficiency
        )
    print("mean speed-up / MACs reduction (1.0 = latency falls as much as MACs):")
    for key, groups in sorted(summary.items()):
        means = {k: sum(v) / len(v) for k, v in groups.items() if v}
        print(f"  {key:32s} " + "  ".join(f"{k} {v:.2f}" for k, v in means.items()))
    write_benchmark("latency_vs_macs", rows, out / "latency_vs_macs.json", device="cpu", summary=summary)
    for name, path in files.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
