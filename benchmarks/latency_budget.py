"""LAPP under a measured-latency budget vs LAPP under a MACs budget vs the baselines, at equal measured latency.

Every run trains --model from scratch on real Fashion-MNIST (the first --train-subset training images minus
--holdout held out, one split for all runs; the test split only for the reported top-1), --epochs epochs,
pruning by the end of epoch --prune-epochs, seeds --seeds. Steps:

1. profile the dense model on ONNX Runtime CPU at --batch / --threads (cached in OUT/tables);
2. `lapp` at --target-macs: the MACs-budgeted reference; its final models are timed interleaved with the
   dense network, and their mean latency as a fraction of the dense one is the target F of every
   latency-budgeted run (a fraction, not ms: this machine's speed drifts by 10-15% between sessions, and a
   fraction timed against dense in one session cancels that);
3. `lapp`, `uniform` and `global` with --target-latency F, and `lapp` with 0.9 F (does latency-LAPP keep
   MACs-LAPP's accuracy at 10% lower latency?);
4. every final model and the dense network timed again, all interleaved in one bench-protocol session (same
   conditions for all); latency is read as a fraction of that session's dense latency.

    python benchmarks/latency_budget.py                                # resnet20, about 35 min on 2 cores
    python benchmarks/latency_budget.py --model resnet56 --runs lapp --seeds 0,1,2
    python benchmarks/latency_budget.py --runs lapp,lapp:auto,uniform:auto    # RUN:K or RUN:auto sets --round-to
Writes OUT/{latency_budget.json, latency_budget.md, accuracy_vs_latency.png}; finished runs are reused and
interrupted ones resumed.
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
from lappdeploy.methods.compress import run_compress
from lappdeploy.models import create_model
from lappdeploy.surgery import load_model

RUNS = ("macs-lapp", "lapp", "lapp-0.9", "uniform", "global")
SHAPE = (1, 28, 28)


def train_config(args, seed: int) -> TrainConfig:
    return TrainConfig(
        model=args.model, dataset="fashion-mnist", epochs=args.epochs, batch_size=128, lr=0.1,
        train_subset=args.train_subset, holdout=args.holdout, channels_last=True, device="cpu", seed=seed,
    )  # fmt: skip


def method_for(run: str, args, table: Path, target_fraction: float | None):
    run, _, rounding = run.partition(":")  # lapp:auto, uniform:16: that --round-to instead of --round-to
    common = {"prune_epochs": args.prune_epochs, "round_to": rounding or args.round_to}
    if run == "macs-lapp":
        return method_config({"name": "lapp", "target_macs": args.target_macs, **common})
    name, _, factor = run.partition("-")
    latency = {"target_latency": target_fraction * float(factor or 1.0), "latency_table": str(table)}
    return method_config({"name": name, **common, **latency})


def compress(args, run: str, seed: int, table: Path, target_fraction: float | None) -> Path:
    out = args.out / "runs" / f"{args.model}-{run}-s{seed}"
    if not (out / "report.json").is_file():
        resume = (out / "config.yaml").is_file()
        print(f"--- {out.name}{' (resumed)' if resume else ''}", flush=True)
        train, method = train_config(args, seed), method_for(run, args, table, target_fraction)
        run_compress(train, method, out, resume=resume, force=out.exists() and not resume)
    return out


def measure_runs(run_dirs: list[Path], dense: torch.nn.Module, args) -> tuple[dict[Path, float], float]:
    """Median latency (ms per batch) of every run's deploy model and of the dense network (its weights do not
    change its latency), all interleaved in one session: ({run: ms}, dense ms)."""
    models = [load_model(run_dir / "model.pt").model.eval() for run_dir in run_dirs]
    timings = measure_models_ms([*models, dense.eval()], SHAPE, runtime="ort", device="cpu", batch=args.batch,
                                threads=args.threads, seconds=args.seconds)  # fmt: skip
    return dict(zip(run_dirs, timings[:-1], strict=True)), timings[-1]


def reference_fraction(reference: list[Path], dense: torch.nn.Module, args) -> float:
    """F, the latency-budgeted runs' target: the MACs-budgeted reference's mean latency over the dense one's,
    timed together; measured once and saved, so a resumed invocation trains to the same F."""
    path = args.out / "target_fraction.txt"
    if path.is_file():
        return float(path.read_text())
    measured, dense_ms = measure_runs(reference, dense, args)
    fraction = statistics.mean(measured.values()) / dense_ms
    atomic_write_text(path, f"{fraction!r}\n")
    return fraction


def summarise(rows: list[dict]) -> list[dict]:
    reference = {r["seed"]: r["top1"] for r in rows if r["run"] == "macs-lapp"}
    out = []
    for run in dict.fromkeys(r["run"] for r in rows):
        group = [r for r in rows if r["run"] == run]
        diffs = [r["top1"] - reference[r["seed"]] for r in group if r["seed"] in reference and run != "macs-lapp"]

        def stats(key: str, rows=group) -> tuple[float, float]:
            values = [r[key] for r in rows]
            return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

        out.append({
            "run": run, "seeds": len(group), "top1": stats("top1"), "measured_ms": stats("measured_ms"),
            "latency_vs_dense": stats("latency_vs_dense"),
            "measured_vs_target": [r["latency_vs_dense"] / r["target_fraction"] for r in group if r["target_fraction"]],
            "macs_ratio": stats("macs_ratio"), "params": stats("params")[0],
            "diff_vs_macs_lapp": (statistics.mean(diffs), statistics.stdev(diffs) if len(diffs) > 1 else 0.0)
            if diffs else None,
        })  # fmt: skip
    return out


def markdown(summary: list[dict], args, dense_ms: float, target_fraction: float) -> str:
    lines = [
        f"{args.model}, ONNX Runtime CPU, batch {args.batch}, {args.threads} threads; dense {dense_ms:.3f} ms in the "
        f"session that timed every model; latency target F = {target_fraction:.3f} of dense (macs-lapp at "
        f"{args.target_macs} MACs over dense, timed together)",
        "",
        "| run | seeds | top-1 % (mean +- std) | paired diff vs macs-lapp (pts) | measured ms (mean +- std) | "
        "latency / dense (mean +- std) | measured / target | MACs / dense | params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        diff = s["diff_vs_macs_lapp"]
        ratios = s["measured_vs_target"]
        lines.append(
            f"| {s['run']} | {s['seeds']} | {100 * s['top1'][0]:.2f} +- {100 * s['top1'][1]:.2f} | "
            + (f"{100 * diff[0]:+.2f} +- {100 * diff[1]:.2f}" if diff else "")
            + f" | {s['measured_ms'][0]:.3f} +- {s['measured_ms'][1]:.3f} | "
            + f"{s['latency_vs_dense'][0]:.3f} +- {s['latency_vs_dense'][1]:.3f} | "
            + (f"{min(ratios):.3f}-{max(ratios):.3f}" if ratios else "")
            + f" | {s['macs_ratio'][0]:.3f} | {s['params'] / 1e3:.1f}K |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for run in dict.fromkeys(r["run"] for r in rows):
        group = [r for r in rows if r["run"] == run]
        ax.scatter([r["latency_vs_dense"] for r in group], [100 * r["top1"] for r in group], label=run, s=24)
    ax.set_xlabel("measured latency / dense (ONNX Runtime CPU)")
    ax.set_ylabel("test top-1 %")
    ax.set_title("accuracy vs measured latency, one point per seed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--target-macs", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--prune-epochs", type=int, default=3)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--train-subset", type=int, default=12000)
    parser.add_argument("--holdout", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per final model")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.out = args.out or Path(__file__).with_name("results") / f"latency_budget_{args.model}"
    seeds = parse_int_list(args.seeds)
    runs = ["macs-lapp", *(run for run in args.runs.split(",") if run != "macs-lapp")]  # the reference is a row
    torch.manual_seed(0)
    dense = create_model(args.model, num_classes=10, in_channels=1)
    table, table_path, _ = cached_profile(dense, SHAPE, model_name=args.model, cache_dir=args.out / "tables",
                                          batch=args.batch, threads=args.threads)  # fmt: skip
    reference = [compress(args, "macs-lapp", seed, table_path, None) for seed in seeds]
    target_fraction = reference_fraction(reference, dense, args)
    print(f"latency target F = {target_fraction:.4f} of dense", flush=True)
    done = {(run, seed): compress(args, run, seed, table_path, target_fraction) for run in runs for seed in seeds}
    measured, dense_ms = measure_runs(list(done.values()), dense, args)
    rows = []
    for (run, seed), run_dir in done.items():
        report = read_json(run_dir / "report.json")
        factor = float(run.partition(":")[0].partition("-")[2] or 1.0) if not run.startswith("macs-lapp") else None
        rows.append({
            "run": run, "seed": seed, "top1": report["top1"], "macs_ratio": report["macs_ratio"],
            "params": report["params"], "measured_ms": measured[run_dir], "wall_s": report["wall_s"],
            "latency_vs_dense": measured[run_dir] / dense_ms,
            "target_fraction": target_fraction * factor if factor else None,
            "report_measured_ms": (report.get("latency") or {}).get("measured_ms"),
        })  # fmt: skip
    summary = summarise(rows)
    text = markdown(summary, args, dense_ms, target_fraction)
    atomic_write_text(args.out / "latency_budget.md", text)
    plot(rows, args.out / "accuracy_vs_latency.png")
    write_benchmark("latency_budget", rows, args.out / "latency_budget.json", device="cpu", summary=summary,
                    dense_ms=dense_ms, table_dense_ms=table.dense_ms, target_fraction=target_fraction,
                    table=str(table_path))  # fmt: skip
    print(text)


if __name__ == "__main__":
    main()
