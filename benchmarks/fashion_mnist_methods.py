"""Pruning methods compared on real Fashion-MNIST: equal epochs, equal MACs targets, several seeds.

Every run trains ResNet-20 from scratch for --epochs on the first --train-subset training images minus
--holdout held-out ones (the same split for every run). The methods finish pruning by the end of epoch
--prune-epochs: lapp learns its thresholds during those epochs; uniform and global train dense for them
and prune once; laasp and pcp train dense for one epoch less and spread their removal steps over the
last one (their recovery is the training in between, inside the same epoch budget). Decisions that use
data (laasp, pcp) use the held-out images; the test split gives only the reported top-1.

    python benchmarks/fashion_mnist_methods.py                       # 6 methods x R 0.5, 0.3 x seeds 0-2
    python benchmarks/fashion_mnist_methods.py --runs lapp,lapp[bypass=rep] --targets 0.5,0.4,0.3,0.2
    python benchmarks/fashion_mnist_methods.py --train-subset 60000 --holdout 5000 --targets 0.5

A run is NAME or NAME[option=value,...] (method options, e.g. lapp[bypass=rep]); `dense` trains
unpruned. Runs whose report.json exists are reused and interrupted ones resumed, so the script can be
stopped and started again. Prints a table of mean +- std over seeds and the per-seed paired difference
against --reference, writes JSON, a Markdown table and accuracy_vs_macs.png; --latency adds every final
model's median ONNX Runtime CPU latency (batch 8, 2 threads), all timed interleaved in one session.
--step-times also measures what a LAPP run costs against dense training: training steps of the dense
model, the masked model of the pruning phase and the compact model after removal, interleaved step by
step (medians), giving
(P * t_masked + (E - P) * t_compact) / (E * t_dense); separate runs' wall times drift with the machine.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

import torch

from lappdeploy.config import TrainConfig, parse_int_list
from lappdeploy.environment import write_benchmark
from lappdeploy.errors import ConfigError
from lappdeploy.io import atomic_write_text, read_json
from lappdeploy.methods import METHODS, AttemptConfig, LappConfig, method_config
from lappdeploy.methods.compress import run_compress
from lappdeploy.train import run_training

RESULTS = Path(__file__).with_name("results")
_RUN = re.compile(r"^(?P<name>[\w-]+)(\[(?P<options>[^\]]*)\])?$")


def parse_runs(text: str) -> list[tuple[str, str, dict]]:
    """'lapp,lapp[bypass=rep]' -> [(label, method, options)]."""
    runs = []
    for item in re.findall(r"[\w-]+(?:\[[^\]]*\])?", text):
        match = _RUN.match(item)
        options = dict(kv.split("=", 1) for kv in (match["options"] or "").split(",") if kv)
        runs.append((item, match["name"], options))
    return runs


# run options that belong to the training, not to the method: distillation (a run NAME[distill=dense] learns
# from the dense run of its own seed; with --from-dense, [distill=init] from the model it starts from)
TRAIN_OPTIONS = ("distill", "distill_alpha", "distill_temperature", "lr")


def _dense_run(args, seed: int) -> Path:
    """The dense run of `seed`, or of --from-dense-seed for every seed (one trained model, as a user has)."""
    own = seed if args.from_dense_seed is None else args.from_dense_seed
    return (args.from_dense_runs or args.out / "runs") / f"dense-s{own}"


def _train_config(args, seed: int, holdout: int, options: dict | None = None, dense: bool = False) -> TrainConfig:
    own = {k: v for k, v in (options or {}).items() if k in TRAIN_OPTIONS}
    lr = float(own.pop("lr")) if "lr" in own else (None if args.from_dense is not None and not dense else args.lr)
    if own.get("distill") == "dense":
        own["distill"] = str(_dense_run(args, seed))
    post_training = args.from_dense is not None and not dense
    return TrainConfig(
        model=args.model,
        dataset="fashion-mnist",
        data_dir=args.data_dir,
        epochs=args.from_dense if post_training else args.epochs,
        batch_size=args.batch_size,
        lr=lr,  # post-training: lappdeploy's fine-tuning default unless the run says
        train_subset=args.train_subset,
        holdout=holdout,
        channels_last=True,
        device=args.device,
        seed=seed,
        init_from=str(_dense_run(args, seed)) if post_training else None,
        **own,
    )


def _method(args, method: str, target: float, options: dict):
    attempts = issubclass(METHODS.get(method).config, AttemptConfig)
    if args.from_dense is not None:  # post-training: prune the trained model at once (LAPP: learn over epoch 1)
        schedule = {"prune_epochs": 1 if method == "lapp" else 0}
        if attempts:
            schedule["prune_span"] = min(1.0, args.from_dense)
    else:  # every method finishes pruning by the end of epoch --prune-epochs
        schedule = {"prune_epochs": args.prune_epochs - 1, "prune_span": 1.0} if attempts else {}
        schedule.setdefault("prune_epochs", args.prune_epochs)
    own = {k: v for k, v in options.items() if k not in TRAIN_OPTIONS}
    return method_config({"name": method, "target_macs": target, "round_to": args.round_to, **schedule, **own})


def run_one(args, label: str, method: str, options: dict, target: float | None, seed: int) -> dict:
    name = f"{label}-r{target}-s{seed}" if target is not None else f"{label}-s{seed}"
    out = args.out / "runs" / name
    resume = out.is_dir() and (out / "config.yaml").is_file() and not (out / "report.json").is_file()
    if (out / "report.json").is_file():
        report = read_json(out / "report.json")
    else:
        print(f"--- {name}{' (resumed)' if resume else ''}", flush=True)
        train = _train_config(args, seed, args.holdout, options, dense=method == "dense")
        if method == "dense":
            report = run_training(train, out, resume=resume, force=out.exists() and not resume)
        else:
            config = _method(args, method, target, options)
            report = run_compress(train, config, out, resume=resume, force=out.exists() and not resume)
    metrics = [read_json_line(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [m for m in metrics if "type" not in m]
    return {
        "run": name,
        "label": label,
        "method": method,
        "target": target if target is not None else 1.0,
        "seed": seed,
        "top1": report["top1"],
        "holdout_top1": epochs[-1].get("holdout_top1"),
        "macs_ratio": report.get("macs_ratio", 1.0),
        "deploy_macs": report.get("deploy_macs"),
        "params": report["params"],
        "wall_s": report["wall_s"],
        # the training of what the run learned from or started with (a dense teacher, a trained model) counts too
        "wall_with_dense_s": report["wall_s"] + _dense_wall(args, report, seed),
        "teacher_share": (report.get("distill") or {}).get("teacher_share"),
        "decision_s": report.get("prune_decision_s"),
        "prune_steps": report.get("prune_steps"),
        "layers": report.get("layers"),
    }


def _dense_wall(args, report: dict, seed: int) -> float:
    uses_dense = report.get("distill") or (report.get("init_from") or {}).get("source")
    dense_report = _dense_run(args, seed) / "report.json"
    if report.get("method") is None or not uses_dense or not dense_report.is_file():
        return 0.0
    return read_json(dense_report)["wall_s"]


def measure_latency(args, rows: list[dict]) -> None:
    """Add `ort_ms` (median ms per batch of --latency-batch on ONNX Runtime CPU, --latency-threads) to every
    row: all runs' deploy models timed interleaved in one `lappdeploy bench` session, same conditions."""
    from lappdeploy.bench.run import bench_runs
    from lappdeploy.config import BenchConfig

    config = BenchConfig(
        runtime="ort", device="cpu", batch=(args.latency_batch,), threads=args.latency_threads, min_seconds=3.0
    )
    records, _ = bench_runs([args.out / "runs" / r["run"] for r in rows], config, out=args.out / "bench")
    by_source = {Path(record.source).name: record.latency_median_ms for record in records}
    for row in rows:
        row["ort_ms"] = by_source.get(row["run"])


def read_json_line(line: str) -> dict:
    import json

    return json.loads(line)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def reference_label(label: str, reference: str) -> str:
    """The run `label` is paired with: `reference`, or with --reference base the variant's own method
    (uniform[distill=dense] against uniform)."""
    return label.split("[", 1)[0] if reference == "base" else reference


def summarise(rows: list[dict], reference: str) -> list[dict]:
    """Mean +- std per (label, target) and the paired per-seed difference against `reference` (by seed)."""
    dense_wall = {r["seed"]: r["wall_s"] for r in rows if r["method"] == "dense"}
    out = []
    for label, target in sorted({(r["label"], r["target"]) for r in rows}, key=lambda k: (-k[1], k[0])):
        group = sorted((r for r in rows if (r["label"], r["target"]) == (label, target)), key=lambda r: r["seed"])
        paired_with = reference_label(label, reference)
        ref = {r["seed"]: r["top1"] for r in rows if (r["label"], r["target"]) == (paired_with, target)}
        diffs = [r["top1"] - ref[r["seed"]] for r in group if r["seed"] in ref and label != paired_with]
        top1, top1_std = _mean_std([r["top1"] for r in group])
        held_out = _mean_std([r["holdout_top1"] for r in group]) if group[0]["holdout_top1"] else None
        ratios = [r["macs_ratio"] for r in group]
        decisions = [r["decision_s"] / r["wall_s"] for r in group if r["decision_s"] is not None]
        out.append(
            {
                "label": label,
                "target": target,
                "seeds": len(group),
                "top1_mean": top1,
                "top1_std": top1_std,
                "holdout_top1_mean": held_out[0] if held_out else None,
                "holdout_top1_std": held_out[1] if held_out else None,
                "macs_ratio_min": min(ratios),
                "macs_ratio_max": max(ratios),
                "params_mean": statistics.mean(r["params"] for r in group),
                "wall_vs_dense": statistics.mean(
                    r["wall_with_dense_s"] / dense_wall[r["seed"]] for r in group if r["seed"] in dense_wall
                )
                if dense_wall
                else None,
                "wall_min": statistics.mean(r["wall_with_dense_s"] for r in group) / 60,
                "teacher_share": statistics.mean(shares)
                if (shares := [r["teacher_share"] for r in group if r.get("teacher_share")])
                else None,
                "decision_share": statistics.mean(decisions) if decisions else None,
                "ort_ms": _mean_std(timed) if (timed := [r["ort_ms"] for r in group if r.get("ort_ms")]) else None,
                "diff_vs_reference": _mean_std(diffs) if diffs else None,
                "diff_per_seed": diffs,
            }
        )
    return out


def _against(reference: str) -> str:
    return "the same method without the variant's options" if reference == "base" else reference


def _paired(diff: tuple[float, float] | None, per_seed: list[float]) -> str:
    """Mean +- std of the paired differences, then each seed's, in points."""
    if not diff:
        return ""
    seeds = ", ".join(f"{100 * d:+.2f}" for d in per_seed)
    return f"{100 * diff[0]:+.2f} +- {100 * diff[1]:.2f} ({seeds})"


def markdown(summary: list[dict], reference: str) -> str:
    lines = [
        f"| method | target | seeds | top-1 % (mean +- std) | paired diff vs {_against(reference)} (pts; per seed) | "
        "held-out top-1 % | "
        "deploy MACs / dense | params | ORT CPU ms per batch | wall time vs dense | wall min (incl. dense) | "
        "teacher / train time | decisions / wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        diff = s["diff_vs_reference"]
        lines.append(
            "| "
            + " | ".join(
                [
                    s["label"],
                    f"{s['target']:g}",
                    str(s["seeds"]),
                    f"{100 * s['top1_mean']:.2f} +- {100 * s['top1_std']:.2f}",
                    _paired(diff, s["diff_per_seed"]),
                    f"{100 * s['holdout_top1_mean']:.2f} +- {100 * s['holdout_top1_std']:.2f}"
                    if s["holdout_top1_mean"] is not None
                    else "",
                    f"{s['macs_ratio_min']:.3f}-{s['macs_ratio_max']:.3f}",
                    f"{s['params_mean'] / 1e3:.1f}K",
                    f"{s['ort_ms'][0]:.3f} +- {s['ort_ms'][1]:.3f}" if s["ort_ms"] else "",
                    f"{s['wall_vs_dense']:.2f}" if s["wall_vs_dense"] else "",
                    f"{s['wall_min']:.1f}",
                    f"{100 * s['teacher_share']:.0f}%" if s["teacher_share"] else "",
                    f"{100 * s['decision_share']:.0f}%" if s["decision_share"] is not None else "",
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path: Path) -> None:
    from lappdeploy.optional import require

    require("matplotlib", purpose="plotting")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label in sorted({s["label"] for s in summary}):
        points = sorted((s["target"], s["top1_mean"], s["top1_std"]) for s in summary if s["label"] == label)
        xs, ys, es = zip(*points, strict=True)
        axes.errorbar(xs, [100 * y for y in ys], yerr=[100 * e for e in es], marker="o", capsize=3, label=label)
    axes.set_xlabel("deploy MACs target (fraction of dense)")
    axes.set_ylabel("test top-1 % (mean +- std over seeds)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _step_seconds(model, optimizer, batch, before_step=None) -> float:
    images, labels = batch
    started = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if before_step is not None:
        before_step()
    optimizer.step()
    return time.perf_counter() - started


def measure_step_times(args, lapp_run: Path, steps: int = 30) -> dict:
    """Median seconds per training step (batch --batch-size) of dense, masked (LAPP phase) and compact
    models, measured interleaved on the same batch."""
    from types import SimpleNamespace

    from lappdeploy import load_model
    from lappdeploy.methods.lapp import prepare_
    from lappdeploy.models import create_model

    torch.manual_seed(0)
    shape = tuple(read_json(lapp_run / "report.json")["input_shape"])
    batch = (torch.randn(args.batch_size, *shape), torch.randint(0, 10, (args.batch_size,)))
    dense = create_model(args.model, num_classes=10, in_channels=shape[0])
    masked = create_model(args.model, num_classes=10, in_channels=shape[0])
    controller = prepare_(masked, batch[0][:2], LappConfig(target_macs=0.5))
    compact = load_model(lapp_run / "model.pt").model
    timings = {"dense": [], "masked": [], "compact": []}
    loops = {}
    for name, model in (("dense", dense), ("masked", masked), ("compact", compact)):
        model.train().to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loops[name] = SimpleNamespace(
            module=model, optimizer=optimizer, steps_per_epoch=1000, state=SimpleNamespace(step=0)
        )
    controller.on_train_start(loops["masked"])
    for i in range(steps + 3):  # the first 3 rounds warm up
        for name, loop in loops.items():
            hook = (lambda loop=loop: controller.after_backward(loop)) if name == "masked" else None
            seconds = _step_seconds(loop.module, loop.optimizer, batch, hook)
            if i >= 3:
                timings[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    estimate = (args.prune_epochs * medians["masked"] + (args.epochs - args.prune_epochs) * medians["compact"]) / (
        args.epochs * medians["dense"]
    )
    return {"step_s": medians, "estimated_run_cost_vs_dense": estimate, "lapp_run": lapp_run.name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="dense,lapp,uniform,global,laasp,pcp")
    parser.add_argument("--targets", default="0.5,0.3", help="deploy MACs targets (fractions of dense)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--reference", default="lapp",
        help="the run the paired differences are taken against; base: each NAME[...] against its NAME",
    )  # fmt: skip
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--prune-epochs", type=int, default=3)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--train-subset", type=int, default=12000, help="training images before the hold-out")
    parser.add_argument("--holdout", type=int, default=2000, help="held out of training for decisions, every run")
    parser.add_argument(
        "--from-dense",
        type=int,
        default=None,
        metavar="N",
        help="post-training: every method starts from the trained dense run of its seed, prunes it at once (lapp: "
        "over the first epoch) and fine-tunes N epochs (lappdeploy's fine-tuning learning rate)",
    )
    parser.add_argument(
        "--from-dense-runs", type=Path, default=None, help="the runs/ folder holding dense-sSEED [default: OUT/runs]"
    )
    parser.add_argument(
        "--from-dense-seed", type=int, default=None, metavar="S",
        help="post-training and [distill=dense]: every seed starts from (learns from) dense-sS, one trained model; "
        "the seed then orders the data and augmentation only [default: the run's own seed]",
    )  # fmt: skip
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "fashion_mnist_methods")
    parser.add_argument(
        "--step-times", action="store_true", help="also time dense, masked (LAPP phase) and compact steps, interleaved"
    )
    parser.add_argument("--latency", action="store_true", help="also time every final model on ONNX Runtime CPU")
    parser.add_argument("--latency-batch", type=int, default=8)
    parser.add_argument("--latency-threads", type=int, default=2)
    args = parser.parse_args()
    runs = parse_runs(args.runs)
    targets = [float(t) for t in args.targets.split(",")]
    seeds = [int(s) for s in parse_int_list(args.seeds)]
    for _, method, options in runs:
        for target in [] if method == "dense" else targets:
            _method(args, method, target, options)  # an unknown method or option stops here, before training
    rows, unreachable = [], []
    for seed in seeds:  # seed-major: a partial result is balanced over methods
        for label, method, options in runs:
            for target in [None] if method == "dense" else targets:
                try:
                    rows.append(run_one(args, label, method, options, target, seed))
                except ConfigError as exc:  # a target below what a variant can reach: report, go on
                    print(f"--- {label} at {target}: not run: {exc}", flush=True)
                    unreachable.append({"label": label, "target": target, "seed": seed, "reason": str(exc)})
    if args.latency:
        measure_latency(args, rows)
    step_times = None
    lapp_rows = [r for r in rows if r["label"] == "lapp" and r["target"] == 0.5]
    if args.step_times and lapp_rows:
        step_times = measure_step_times(args, args.out / "runs" / lapp_rows[0]["run"])
        print(f"training steps, interleaved medians: {step_times}")
    summary = summarise(rows, args.reference)
    table = markdown(summary, args.reference)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "summary.md", table)
    plot(summary, args.out / "accuracy_vs_macs.png")
    write_benchmark(
        "fashion_mnist_methods",
        rows,
        args.out / "fashion_mnist_methods.json",
        device=args.device if args.device != "auto" else "cpu",
        summary=summary,
        step_times=step_times,
        not_run=unreachable,
        settings={k: str(v) for k, v in vars(args).items()},
    )


if __name__ == "__main__":
    main()
