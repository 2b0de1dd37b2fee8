"""How well does a latency table predict whole-model latency? Per case (model, input size, batch): profile
the model (`lappdeploy profile`'s code, ONNX Runtime CPU, or OpenVINO's CPU plugin with --runtime openvino),
then time >= 10 random pruned versions of it whole (bench protocol, interleaved with the dense model in one
session) and compare with the latency model's prediction. The random plans draw each group's kept share
uniformly from [0.15, 1] and round widths to the table's step (8), as `compress --round-to 8` does; they are
drawn with seeds the profiling's own calibration plans do not use. Weights are random: latency does not depend on them.

    python benchmarks/latency_model.py                                   # all cases
    python benchmarks/latency_model.py --cases resnet20:28:8 --plans 10
    python benchmarks/latency_model.py --runtime openvino --layer-timing kernels --cases resnet20:28:8
    python benchmarks/latency_model.py --runtime openvino --precision int8 --cases resnet20:28:8 --out DIR
All eight cases took 75 minutes on a 2-core AMD EPYC, the two 224-px batch-8 ones with --points 8.
Writes benchmarks/results/latency_model/{CASE.json, tables/CASE.json, latency_model.json, latency_model.md,
predicted_vs_measured.png}; a case whose JSON exists is not re-run (delete it to re-measure).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lappdeploy.environment import write_benchmark
from lappdeploy.errors import ConfigError
from lappdeploy.io import atomic_write_text
from lappdeploy.latency import LatencyModel, LatencyTable
from lappdeploy.latency.calibration import fit_records
from lappdeploy.latency.profile import (
    LAYER_TIMINGS,
    OPENVINO_PRECISIONS,
    check_precision,
    layer_timing,
    measure_models_ms,
    profile_model,
)
from lappdeploy.models import create_model
from lappdeploy.surgery import ChannelPlan, analyze, plan_cost, random_widths_plan, remove_channels_

CASES = (
    "resnet20:28:8", "resnet20:28:64", "resnet56:28:8", "resnet56:28:64",
    "mobilenet_v2:224:1", "resnet50:224:1", "mobilenet_v2:224:8", "resnet50:224:8",
)  # fmt: skip
RUNTIME_NAMES = {"ort": "ONNX Runtime", "openvino": "OpenVINO"}
PLAN_SEED = 5000  # random plans of the validation; the profiling's calibration plans use seeds 1000+


def build(name: str, size: int) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    torch.manual_seed(0)
    channels, classes = (1, 10) if size == 28 else (3, 1000)
    return create_model(name, num_classes=classes, in_channels=channels).eval(), (channels, size, size)


def _same_setting(runtime: str, timing: str | None, precision: str, args, path: Path) -> None:
    """Stop where a result kept under --out was measured on another runtime, layer timing or precision than
    asked (results from before the layer timing was recorded are compared by runtime and precision only)."""
    asked = layer_timing(args.runtime, "cpu", args.layer_timing)
    if runtime != args.runtime or precision != args.precision or (timing is not None and timing.split(" ")[0] != asked):
        raise SystemExit(f"{path} holds {runtime} / {timing} / {precision} results, not {args.runtime} / {asked} / "
                         f"{args.precision}: use another --out")  # fmt: skip


def run_case(case: str, args, out: Path) -> dict:
    name, size, batch = case.split(":")
    size, batch = int(size), int(batch)
    model, shape = build(name, size)
    table_path = out / "tables" / f"{case.replace(':', '_')}.json"
    if table_path.is_file():
        table = LatencyTable.load(table_path)
        _same_setting(table.runtime, table.provenance.get("layer_timing"), table.provenance.get("precision", "fp32"),
                      args, table_path)  # fmt: skip
    else:
        table = profile_model(model, shape, model_name=name, batch=batch, threads=args.threads, points=args.points,
                              runtime=args.runtime, timed_by=args.layer_timing, precision=args.precision)  # fmt: skip
        table.save(table_path)
    example = torch.zeros((2, *shape))
    groups = analyze(model, example)
    latency = LatencyModel(groups, table)
    # ablation on the same timings: the table refitted with one scale for every layer kind
    one_scale = fit_records(table.calibration, own_kinds=())
    one_scale_latency = LatencyModel(groups, replace(table, scale=one_scale.scale, kind_scales={},
                                                     remainder_ms=one_scale.remainder_ms))  # fmt: skip
    dense_macs = plan_cost(groups, ChannelPlan()).macs
    plans = [random_widths_plan(groups, step=table.step, seed=PLAN_SEED + i) for i in range(args.plans)]
    pruned = []
    for plan in plans:
        pruned.append(copy.deepcopy(model))
        remove_channels_(pruned[-1], plan, example)
    start = time.perf_counter()
    # all plans and the dense model interleaved in one session: a drift of the machine's speed while they are
    # timed moves all of them alike, instead of corrupting the plans timed during a slow spell
    *timed, dense_now = measure_models_ms([*pruned, model], shape, batch=batch, threads=args.threads,
                                          seconds=args.seconds, runtime=args.runtime,
                                          precision=args.precision)  # fmt: skip
    rows = []
    for i, (plan, measured) in enumerate(zip(plans, timed, strict=True)):
        predicted, one_scale_ms = latency.plan_ms(plan), one_scale_latency.plan_ms(plan)
        rows.append({
            "seed": PLAN_SEED + i, "macs_ratio": round(plan_cost(groups, plan).macs / dense_macs, 4),
            "measured_ms": round(measured, 5), "predicted_ms": round(predicted, 5),
            "error": round((predicted - measured) / measured, 5),
            "one_scale_error": round((one_scale_ms - measured) / measured, 5),
        })  # fmt: skip
        print(f"  {case} plan {i}: MACs {rows[-1]['macs_ratio']:.3f}, measured {measured:.4g} ms, "
              f"predicted {predicted:.4g} ms ({100 * rows[-1]['error']:+.1f}%)", flush=True)  # fmt: skip
    print(f"  {case} dense: {dense_now:.4g} ms now, {table.dense_ms:.4g} ms when profiled", flush=True)
    errors = np.abs([r["error"] for r in rows])
    one_scale_errors = np.abs([r["one_scale_error"] for r in rows])
    return {
        "case": case, "model": name, "image_size": size, "batch": batch, "threads": args.threads,
        "runtime": args.runtime, "layer_timing": table.provenance.get("layer_timing"), "precision": args.precision,
        "profile_s": table.profile_s, "measurements": table.measurements, "points": table.points,
        "dense_ms": table.dense_ms, "dense_ms_validation": round(dense_now, 5), "scale": table.scale,
        "kind_scales": table.kind_scales, "remainder_ms": table.remainder_ms,
        "validation_s": round(time.perf_counter() - start, 1), "plans": rows,
        "abs_error_median": float(np.median(errors)), "abs_error_p90": float(np.percentile(errors, 90)),
        "abs_error_max": float(errors.max()), "within_10pct": int((errors <= 0.10).sum()),
        "one_scale": {"scale": one_scale.scale, "remainder_ms": one_scale.remainder_ms,
                      "abs_error_median": float(np.median(one_scale_errors)),
                      "abs_error_max": float(one_scale_errors.max()),
                      "within_10pct": int((one_scale_errors <= 0.10).sum())},
    }  # fmt: skip


def _split(result: dict) -> str:
    depthwise = result.get("kind_scales", {}).get("depthwise")
    return f"{depthwise:.3f} / {result['scale']:.3f}" if depthwise else "-"


def _one_scale(result: dict) -> str:
    one = result.get("one_scale")
    if not one or not result.get("kind_scales"):
        return "same"
    within = f"{one['within_10pct']}/{len(result['plans'])}"
    return f"{100 * one['abs_error_median']:.1f}%, {100 * one['abs_error_max']:.1f}%, {within}"


def _macs_line(result: dict) -> str:
    errors = np.abs(macs_line_errors(result))
    return f"{100 * np.median(errors):.1f}%, {100 * errors.max():.1f}%, {int((errors <= 0.10).sum())}/{len(errors)}"


def fraction_errors(result: dict) -> np.ndarray:
    """Per plan, the error of the predicted latency as a fraction of dense (over the table's dense_ms) against
    the measured one (over the dense model timed alongside): what `--target-latency F` is judged by, and
    blind to a change of the machine's speed between profiling and validation, which the ms error is not."""
    return np.array([(p["predicted_ms"] / result["dense_ms"]) / (p["measured_ms"] / result["dense_ms_validation"]) - 1
                     for p in result["plans"]])  # fmt: skip


def macs_line_errors(result: dict) -> np.ndarray:
    """Per plan, the error of the best straight line through MACs (latency = a + b * MACs ratio), fitted by least
    squares on the plans and the dense model themselves: what knowing MACs alone could predict at best (in sample,
    so flattering to it)."""
    macs = np.array([p["macs_ratio"] for p in result["plans"]] + [1.0])
    measured = np.array([p["measured_ms"] for p in result["plans"]] + [result["dense_ms_validation"]])
    design = np.stack([np.ones_like(macs), macs], axis=1)
    fitted = design @ np.linalg.lstsq(design, measured, rcond=None)[0]
    return (fitted / measured - 1)[:-1]


def markdown(results: list[dict]) -> str:
    lines = [
        "| case (model:px:batch) | threads | profile s | points timed | dense ms: profiled, validation | plans "
        "| ms error: median, p90, max | within 10% | fraction-of-dense error: median, max | within 10% "
        "| depthwise scale / scale | one scale: median, max, within 10% "
        "| MACs line (in sample): median, max, within 10% |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        fraction = np.abs(fraction_errors(r))
        plans = len(r["plans"])
        lines.append(
            f"| {r['case']} | {r['threads']} | {r['profile_s']:.0f} | {r['measurements']} | "
            f"{r['dense_ms']:.3g}, {r['dense_ms_validation']:.3g} | {plans} | "
            f"{100 * r['abs_error_median']:.1f}%, {100 * r['abs_error_p90']:.1f}%, {100 * r['abs_error_max']:.1f}% | "
            f"{r['within_10pct']}/{plans} | {100 * np.median(fraction):.1f}%, {100 * fraction.max():.1f}% | "
            f"{int((fraction <= 0.10).sum())}/{plans} | {_split(r)} | {_one_scale(r)} | {_macs_line(r)} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    for r in results:
        measured = [p["measured_ms"] / r["dense_ms"] for p in r["plans"]]
        predicted = [p["predicted_ms"] / r["dense_ms"] for p in r["plans"]]
        ax.scatter(measured, predicted, s=14, label=r["case"])
    ax.plot([0, 1.2], [0, 1.2], color="black", lw=0.8)
    for band in (0.9, 1.1):
        ax.plot([0, 1.2], [0, 1.2 * band], color="grey", lw=0.6, ls="--")
    runtime, precision = RUNTIME_NAMES[results[0].get("runtime", "ort")], results[0].get("precision", "fp32")
    ax.set_xlabel(f"measured latency / dense ({runtime} CPU, {precision})")
    ax.set_ylabel("predicted latency / dense (latency table)")
    ax.set_title("predicted vs measured, random pruned plans (+-10% dashed)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--plans", type=int, default=10)
    # one thread, as `lappdeploy profile` defaults to: on a VM whose vCPUs the host schedules, a second thread's
    # speed-up comes and goes (dense MobileNetV2 at 224 px timed 3.8-6.8 ms at 2 threads, 7.2-7.7 ms at 1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--points", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=1.5, help="timed seconds per whole model")
    parser.add_argument("--runtime", default="ort", choices=["ort", "openvino"], help="on the CPU")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=OPENVINO_PRECISIONS,
        help="OpenVINO: bf16 (AMX / AVX-512 BF16 CPUs) or int8 (the Q/DQ graph export writes)",
    )
    parser.add_argument("--layer-timing", default=None, choices=LAYER_TIMINGS,
                        help="how layers alone are timed (default: the runtime's)")  # fmt: skip
    parser.add_argument("--out", default="benchmarks/results/latency_model")
    args = parser.parse_args()
    try:
        check_precision(args.runtime, args.precision)
    except ConfigError as exc:
        raise SystemExit(f"Error: {exc}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for case in args.cases.split(","):
        path = out / f"{case.replace(':', '_')}.json"
        if not path.is_file():
            print(f"{case}: profiling and validating", flush=True)
            atomic_write_text(path, json.dumps(run_case(case, args, out), indent=1))
        results.append(json.loads(path.read_text()))
        _same_setting(results[-1].get("runtime", "ort"), results[-1].get("layer_timing"),
                      results[-1].get("precision", "fp32"), args, path)  # fmt: skip
    atomic_write_text(out / "latency_model.md", markdown(results))
    plot(results, out / "predicted_vs_measured.png")
    write_benchmark("latency_model", results, out / "latency_model.json", device="cpu")
    print(markdown(results))


if __name__ == "__main__":
    main()
