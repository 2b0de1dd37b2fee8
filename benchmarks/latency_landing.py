"""Does a latency budget land where it was asked to? Final measured latency against the target, with the measured
landing (the default) and without it (`--no-measured-landing`: the plan landed on the latency model alone).

For every method (lapp, uniform, global), --targets fraction F of the dense model's latency and seed, one short
compress run of --model on real Fashion-MNIST (accuracy is not what this measures: --epochs 2, pruning by the
end of epoch 1, the first --train-subset training images), once per landing. Then every final model and the dense
model are timed again, all interleaved in one bench-protocol session, and each model's latency is read against
F x the dense model's latency of that session: the number a user checks after `compress --target-latency F`.

    python benchmarks/latency_landing.py                          # resnet20, 3 methods x 2 targets x 2 seeds x 2
    python benchmarks/latency_landing.py --methods lapp --targets 0.8 --seeds 0,1,2

Writes OUT/{latency_landing.json, latency_landing.md}; finished runs are reused, so it can be stopped and started.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from lappdeploy.config import TrainConfig, parse_int_list
from lappdeploy.environment import write_benchmark
from lappdeploy.io import atomic_write_text, read_json
from lappdeploy.latency.profile import cached_profile, measure_models_ms
from lappdeploy.methods import method_config
from lappdeploy.methods.budgets import MEASURED_TOLERANCE
from lappdeploy.methods.compress import run_compress
from lappdeploy.models import create_model
from lappdeploy.surgery import load_model

SHAPE = (1, 28, 28)
LANDINGS = {"measured": True, "predicted": False}  # --measured-landing / --no-measured-landing


def compress(args, table: Path, method: str, target: float, landing: str, seed: int) -> Path:
    out = args.out / "runs" / f"{method}-{target:g}-{landing}-s{seed}"
    if not (out / "report.json").is_file():
        print(f"--- {out.name}", flush=True)
        train = TrainConfig(
            model=args.model, dataset="fashion-mnist", epochs=args.epochs, batch_size=128, lr=0.1,
            train_subset=args.train_subset, holdout=args.holdout, channels_last=True, device="cpu", seed=seed,
        )  # fmt: skip
        config = method_config({
            "name": method, "prune_epochs": args.prune_epochs, "round_to": args.round_to, "target_latency": target,
            "latency_table": str(table), "measured_landing": LANDINGS[landing],
        })  # fmt: skip
        run_compress(train, config, out, force=out.exists())
    return out


def time_interleaved(models: list[torch.nn.Module], args) -> list[float]:
    """Median ms per batch of every model on ONNX Runtime CPU, all interleaved in one session."""
    return measure_models_ms([m.eval() for m in models], SHAPE, runtime="ort", device="cpu", batch=args.batch,
                             threads=args.threads, seconds=args.seconds)  # fmt: skip


def row(run_dir: Path, measured_ms: float, dense_ms: float) -> dict:
    report = read_json(run_dir / "report.json")
    latency = report["latency"]
    method, target, landing, seed = run_dir.name.split("-")
    target = float(target)
    return {
        "run": run_dir.name, "method": method, "target": target, "landing": landing, "seed": int(seed[1:]),
        "timings": len(latency.get("measured_landing", [])),
        "landing_ratios": [a["measured_vs_target"] for a in latency.get("measured_landing", [])],
        "predicted_vs_target": latency["predicted_ms"] / latency["target_ms"],
        "report_vs_target": latency["measured_vs_target"],
        "measured_ms": measured_ms, "interleaved_vs_target": measured_ms / (target * dense_ms),
        "macs_ratio": report["macs_ratio"], "top1": report["top1"],
    }  # fmt: skip


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for key in dict.fromkeys((r["method"], r["target"], r["landing"]) for r in rows):
        group = [r for r in rows if (r["method"], r["target"], r["landing"]) == key]
        ratios = [r["interleaved_vs_target"] for r in group]
        out.append({
            "method": key[0], "target": key[1], "landing": key[2], "runs": len(group),
            "timings": statistics.mean(r["timings"] for r in group),
            "report_vs_target": [r["report_vs_target"] for r in group],
            "interleaved_vs_target": ratios,
            "within_5pct": sum(abs(r - 1) <= 0.05 for r in ratios),
        })  # fmt: skip
    return out


def markdown(summary: list[dict], args, dense_ms: float) -> str:
    lines = [
        f"{args.model}, ONNX Runtime CPU, batch {args.batch}, {args.threads} threads; dense {dense_ms:.3f} ms in the "
        f"interleaved session; measured-landing tolerance {MEASURED_TOLERANCE:.0%}",
        "",
        "| method | target F | landing | runs | timings at landing | measured / target, at compress | "
        "measured / target, interleaved | within 5% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        report = ", ".join(f"{r:.3f}" for r in s["report_vs_target"])
        interleaved = ", ".join(f"{r:.3f}" for r in s["interleaved_vs_target"])
        lines.append(f"| {s['method']} | {s['target']:g} | {s['landing']} | {s['runs']} | {s['timings']:.1f} | "
                     f"{report} | {interleaved} | {s['within_5pct']}/{s['runs']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--methods", default="lapp,uniform,global")
    parser.add_argument("--targets", default="0.8,0.7", help="fractions of the dense model's measured latency")
    parser.add_argument("--landings", default="measured,predicted")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--prune-epochs", type=int, default=1)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--train-subset", type=int, default=3000)
    parser.add_argument("--holdout", type=int, default=500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model, interleaved")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.out = args.out or Path(__file__).with_name("results") / f"latency_landing_{args.model}"
    torch.manual_seed(0)
    dense = create_model(args.model, num_classes=10, in_channels=1)
    _, table, _ = cached_profile(dense, SHAPE, model_name=args.model, cache_dir=args.out / "tables",
                                 batch=args.batch, threads=args.threads)  # fmt: skip
    runs = [
        compress(args, table, method, float(target), landing, seed)
        for seed in parse_int_list(args.seeds)
        for method in args.methods.split(",")
        for target in args.targets.split(",")
        for landing in args.landings.split(",")
    ]
    measured = time_interleaved([dense] + [load_model(r / "model.pt").model for r in runs], args)
    rows = [row(run_dir, ms, measured[0]) for run_dir, ms in zip(runs, measured[1:], strict=True)]
    summary = summarise(rows)
    text = markdown(summary, args, measured[0])
    atomic_write_text(args.out / "latency_landing.md", text)
    write_benchmark("latency_landing", rows, args.out / "latency_landing.json", device="cpu", summary=summary,
                    dense_ms=measured[0], table=str(table))  # fmt: skip
    print(text)


if __name__ == "__main__":
    main()
