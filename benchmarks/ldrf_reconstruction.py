"""Reconstruction after pruning a trained model: plain removal vs ls vs ldrf on the same plans (docs/ldrf.md).

For every trained dense run (--init-from, comma-separated run directories, e.g. ResNet-20 runs of `lappdeploy
train` on Fashion-MNIST; --train MODELS first trains dense runs here, e.g. --train vgg16_bn_cifar), every MACs
target, every plan (uniform, global: the channels those baselines keep; capacity: ldrf's capacity widths) and
every reconstruction (none = plain removal, ls, ldrf), the model is pruned at once (--prune-epochs 0) and
evaluated before any training step (--epochs 0), then fine-tuned for --finetune-epochs from exactly that
pruned model. Each cell runs once per seed (--seeds): the seed draws the calibration sample (which held-out
images, which positions) and orders the BatchNorm re-estimation and fine-tuning batches. The plan does not
depend on the seed or the reconstruction, so ls and ldrf refit the very channels plain removal keeps.

Calibration reads the dense run's held-out images (its --holdout split of its --train-subset, which every cell
keeps); the test split gives only the reported top-1. A dense run trained without a hold-out gets one of
--calib-images images here, images it was trained on (a warning says so). On 28 px Fashion-MNIST, VGG-16-BN's
classifier reads 512 pooled features plus its output offset (one sample per image): give it --calib-images 513 or
more (a run stops with the number it needs otherwise); more images and a larger hold-out give better determined
refits.

    python benchmarks/ldrf_reconstruction.py --init-from runs/r20-dense-s0,runs/r20-dense-s1
    python benchmarks/ldrf_reconstruction.py --train vgg16_bn_cifar --calib-images 640 --targets 0.5
    python benchmarks/ldrf_reconstruction.py --init-from runs/r20-dense --plans uniform,capacity --ldrf-energy 0.95

Resumable: every cell is a run directory under --out; finished ones (report.json) are read back and
interrupted ones resumed, so the script can be stopped and started again. Prints a table of mean +- std over
seeds with the paired per-seed difference against plain removal, writes JSON and a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

from lappdeploy.config import TrainConfig, parse_int_list
from lappdeploy.environment import write_benchmark
from lappdeploy.io import atomic_write_text, read_json
from lappdeploy.methods import method_config
from lappdeploy.methods.compress import run_compress
from lappdeploy.rundir import RunDir, read_run_config
from lappdeploy.train import run_training

RESULTS = Path(__file__).with_name("results")
# inner: uniform widths inside residual blocks only, the streams kept whole (the layer-wise papers' ResNet setting)
PLANS = {
    "uniform": ("uniform", {}),
    "inner": ("uniform", {"keep_streams": True}),
    "global": ("global", {}),
    "capacity": ("ldrf", {"ldrf_widths": "capacity"}),
}
# a mode NAME+relu fits after the BatchNorm and ReLU that follow each layer (--reconstruct-relu)
MODES = ("none", "ls", "ls+relu", "ldrf", "ldrf-patch", "ldrf-patch+relu", "ldrf-joint", "ls-joint")


def _run(out: Path, start) -> dict:
    """report.json of run directory `out`: read back when finished, else `start(resume)` (resumed when
    interrupted after its config was written)."""
    if (out / "report.json").is_file():
        return read_json(out / "report.json")
    resume = (out / "config.yaml").is_file()
    print(f"--- {out.name}{' (resumed)' if resume else ''}", flush=True)
    return start(resume)


def train_dense(args, model: str) -> Path:
    """A dense run of `model` on Fashion-MNIST trained here (resumable), with a hold-out for calibration."""
    out = args.out / "dense" / model
    config = TrainConfig(
        model=model, dataset="fashion-mnist", data_dir=args.data_dir, epochs=args.dense_epochs,
        batch_size=args.batch_size, lr=args.lr, train_subset=args.train_subset, holdout=args.holdout,
        channels_last=True, device=args.device, seed=0,
    )  # fmt: skip
    _run(out, lambda resume: run_training(config, out, resume=resume, force=out.exists() and not resume))
    return out


def _cell_train(args, dense: Path, seed: int, epochs: int) -> TrainConfig:
    """The dense run's data setup (dataset, subset, hold-out split, input size) for one cell."""
    saved = read_run_config(RunDir(dense)).train
    holdout = saved.holdout or 0
    if holdout < args.calib_images:
        warnings.warn(
            f"{dense} held out {holdout} images; calibrating on {args.calib_images} held-out images of the split "
            "used here, some of which it was trained on",
            stacklevel=2,
        )
        holdout = args.calib_images
    return saved.replace(
        init_from=str(dense), epochs=epochs, seed=seed, holdout=holdout, lr=args.finetune_lr, warmup_epochs=0.0,
        lr_milestones=(), device=args.device, data_dir=args.data_dir or saved.data_dir, batch_size=args.batch_size,
    )  # fmt: skip


def _recalibration(args) -> dict:
    """--recalibrate-bn when given (else each method's default): 0 measures the refit alone, since the BatchNorm
    re-estimation after removal replaces the output offset the refit fitted."""
    return {} if args.recalibrate_bn is None else {"recalibrate_bn": args.recalibrate_bn}


def _method(args, plan: str, mode: str, target: float, seed: int):
    name, options = PLANS[plan]
    reconstruct, relu = mode.removesuffix("+relu"), mode.endswith("+relu")
    return method_config(
        {
            "name": name, "target_macs": target, "prune_epochs": 0, "round_to": args.round_to,
            "reconstruct": reconstruct, "reconstruct_relu": relu, "reconstruct_diagnostics": True,
            "calib_images": args.calib_images, "calib_positions": args.calib_positions,
            "calib_seed": seed, "ldrf_energy": args.ldrf_energy, **_recalibration(args), **options,
        }
    )  # fmt: skip


def _output_error(report: dict) -> float | None:
    """Mean over the layers reading removed channels of their output error against the original network, on
    held-out images no fit saw (plain removal's too): the one unit every mode is compared in."""
    errors = [e["output_error"] for e in report.get("output_errors", []) if e.get("output_error") is not None]
    return statistics.mean(errors) if errors else None


def run_cell(args, dense: Path, plan: str, mode: str, target: float, seed: int) -> dict:
    """Prune (and refit) with no training step, then fine-tune that model: one row."""
    bn = "" if args.recalibrate_bn is None else f"-bn{args.recalibrate_bn}"
    name = f"{dense.name}-{plan}-{mode}-r{target}{bn}-s{seed}"
    pruned_dir, tuned_dir = args.out / "runs" / name, args.out / "runs" / f"{name}-ft{args.finetune_epochs}"
    train = _cell_train(args, dense, seed, 0)
    config = _method(args, plan, mode, target, seed)
    pruned = _run(
        pruned_dir,
        lambda resume: run_compress(train, config, pruned_dir, resume=resume, force=pruned_dir.exists() and not resume),
    )
    tuned = None
    if args.finetune_epochs and mode in args.finetune_modes.split(","):
        tune = _cell_train(args, dense, seed, args.finetune_epochs).replace(init_from=str(pruned_dir / "model.pt"))
        tuned = _run(
            tuned_dir,
            lambda resume: run_training(tune, tuned_dir, resume=resume, force=tuned_dir.exists() and not resume),
        )
    return {
        "dense": dense.name, "model": pruned["model"], "plan": plan, "reconstruct": mode, "target": target,
        "seed": seed, "top1_before_ft": pruned["top1"], "top1_after_ft": tuned["top1"] if tuned else None,
        # held-out top-1 (calibration's images among them, never a test image): what the default mode is chosen by
        "holdout_before_ft": pruned.get("holdout_top1"), "holdout_after_ft": (tuned or {}).get("holdout_top1"),
        "macs_ratio": pruned["macs_ratio"], "deploy_macs": pruned["deploy_macs"], "params": pruned["params"],
        "reconstruct_s": pruned.get("reconstruct_s"), "reconstruct_peak_rss_mb": pruned.get("reconstruct_peak_rss_mb"),
        "refitted": len(pruned.get("reconstructed", [])), "skipped": len(pruned.get("reconstruct_skipped", [])),
        "output_error": _output_error(pruned),
        "prune_wall_s": pruned["wall_s"],
    }  # fmt: skip


def _mean_std(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _key(row: dict) -> tuple:
    return row["dense"], row["target"], row["plan"], row["reconstruct"]


def _paired_differences(group: list[dict], plain: dict[int, dict], key: str) -> list[float]:
    """Per seed: the row's `key` minus plain removal's of the same seed (where both exist)."""
    both = [(r[key], plain[r["seed"]][key]) for r in group if r["seed"] in plain]
    return [value - reference for value, reference in both if value is not None and reference is not None]


def summarise(rows: list[dict]) -> list[dict]:
    """Mean +- std per (dense run, target, plan, reconstruction), and the paired per-seed difference against
    plain removal of the same plan, before and after fine-tuning."""
    out = []
    for dense, target, plan, mode in sorted(
        {_key(r) for r in rows}, key=lambda k: (k[0], -k[1], k[2], MODES.index(k[3]))
    ):
        group = [r for r in rows if _key(r) == (dense, target, plan, mode)]
        plain = {r["seed"]: r for r in rows if _key(r) == (dense, target, plan, "none")}
        entry = {"dense": dense, "target": target, "plan": plan, "reconstruct": mode, "seeds": len(group)}
        for stage in ("before_ft", "after_ft"):
            entry[f"top1_{stage}"] = _mean_std([r[f"top1_{stage}"] for r in group if r[f"top1_{stage}"] is not None])
            entry[f"holdout_{stage}"] = _mean_std([r[f"holdout_{stage}"] for r in group if r.get(f"holdout_{stage}")])
            diffs = _paired_differences(group, plain, f"top1_{stage}") if mode != "none" else []
            entry[f"diff_{stage}"] = _mean_std(diffs)
        seconds = [r["reconstruct_s"] for r in group if r["reconstruct_s"] is not None]
        peaks = [r["reconstruct_peak_rss_mb"] for r in group if r["reconstruct_peak_rss_mb"] is not None]
        entry["macs_ratio"] = statistics.mean(r["macs_ratio"] for r in group)
        errors = [r["output_error"] for r in group if r.get("output_error") is not None]
        entry["output_error"] = _mean_std(errors)
        entry["reconstruct_s"] = statistics.mean(seconds) if seconds else None
        entry["reconstruct_peak_rss_mb"] = max(peaks) if peaks else None
        out.append(entry)
    return out


def _pct(value: tuple[float, float] | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{100 * value[0]:{'+' if signed else ''}.2f} +- {100 * value[1]:.2f}"


def markdown(summary: list[dict], finetune_epochs: int) -> str:
    lines = [
        "| dense run | target | plan | reconstruct | seeds | held-out top-1 % before FT | top-1 % before FT | "
        f"vs plain (pts) | held-out after {finetune_epochs} epoch(s) | top-1 % after | vs plain (pts) | "
        "layer output error (held-out) | deploy MACs / dense | refit s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        cells = [
            s["dense"], f"{s['target']:g}", s["plan"], s["reconstruct"], str(s["seeds"]),
            _pct(s["holdout_before_ft"]), _pct(s["top1_before_ft"]), _pct(s["diff_before_ft"], signed=True),
            _pct(s["holdout_after_ft"]), _pct(s["top1_after_ft"]), _pct(s["diff_after_ft"], signed=True),
            f"{s['output_error'][0]:.4f} +- {s['output_error'][1]:.4f}" if s["output_error"] else "",
            f"{s['macs_ratio']:.3f}",
            f"{s['reconstruct_s']:.1f}" if s["reconstruct_s"] is not None else "",
            f"{s['reconstruct_peak_rss_mb']:.0f}" if s["reconstruct_peak_rss_mb"] is not None else "",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init-from", default="", help="trained dense run directories, comma-separated")
    parser.add_argument("--train", default="", help="models to train dense here first, e.g. vgg16_bn_cifar")
    parser.add_argument("--targets", default="0.5,0.3", help="deploy MACs targets (fractions of dense)")
    parser.add_argument("--plans", default="uniform,global", help=f"of {', '.join(PLANS)}")
    parser.add_argument("--reconstruct", default=",".join(MODES), help=f"of {', '.join(MODES)}")
    parser.add_argument(
        "--finetune-modes", default=",".join(MODES), help="the modes fine-tuned after (of --reconstruct)"
    )
    parser.add_argument("--seeds", default="0,1,2", help="calibration-sample seeds")
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--calib-positions", type=int, default=10)
    parser.add_argument("--ldrf-energy", type=float, default=0.9)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument(
        "--recalibrate-bn", type=int, default=None,
        help="BatchNorm re-estimation batches after removal (default: the method's; 0: the refit alone)",
    )  # fmt: skip
    parser.add_argument("--finetune-epochs", type=int, default=1, help="0: report before fine-tuning only")
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--dense-epochs", type=int, default=8, help="--train: dense training epochs")
    parser.add_argument("--lr", type=float, default=0.1, help="--train: peak learning rate")
    parser.add_argument("--train-subset", type=int, default=12000, help="--train: training images before the hold-out")
    parser.add_argument("--holdout", type=int, default=2000, help="--train: images held out of training")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "ldrf_reconstruction")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    dense_runs = [Path(p) for p in args.init_from.split(",") if p]
    dense_runs += [train_dense(args, model) for model in args.train.split(",") if model]
    if not dense_runs:
        raise SystemExit("give trained dense runs with --init-from, or models to train with --train")
    targets = [float(t) for t in args.targets.split(",")]
    plans, modes = args.plans.split(","), args.reconstruct.split(",")
    for plan in plans:
        if plan not in PLANS:
            raise SystemExit(f"unknown plan {plan!r}; choose from {', '.join(PLANS)}")
    rows = []
    for seed in [int(s) for s in parse_int_list(args.seeds)]:  # seed-major: a partial result is balanced
        for dense in dense_runs:
            for target in targets:
                for plan in plans:
                    rows += [run_cell(args, dense, plan, mode, target, seed) for mode in modes]
    summary = summarise(rows)
    table = markdown(summary, args.finetune_epochs)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "summary.md", table)
    write_benchmark(
        "ldrf_reconstruction",
        rows,
        args.out / "ldrf_reconstruction.json",
        device=args.device if args.device != "auto" else "cpu",
        summary=summary,
        dense={d.name: read_json(d / "report.json").get("top1") for d in dense_runs if (d / "report.json").is_file()},
        settings={k: str(v) for k, v in vars(args).items()},
    )


if __name__ == "__main__":
    main()
