"""LAPP vs dense training vs torch-pruning baselines on real Fashion-MNIST, at equal epoch budgets.

Every run trains from scratch for the same number of epochs: `dense` trains unpruned; `lapp` prunes with
learned thresholds during the first --prune-epochs and trains the compact model on; `uniform` and
`global` train dense for --prune-epochs, prune once to the same MACs target, and train on (the
prune-then-finetune baselines). Prints a table (top-1, deploy MACs and params, wall time, wall time
relative to dense) and writes JSON. Runs whose report.json exists are reused, so the script can be
stopped and started again; --fresh reruns everything.

    python benchmarks/fashion_mnist_lapp.py                                 # resnet20, R = 0.5 and 0.3
    python benchmarks/fashion_mnist_lapp.py --model resnet56 --device cuda  # where a GPU is lent
    python benchmarks/fashion_mnist_lapp.py --ablate-bypass                 # adds lapp with --bypass rep
    python benchmarks/fashion_mnist_lapp.py --ablate-score                  # adds lapp with --score l2
    python benchmarks/fashion_mnist_lapp.py --seeds 0,1,2                   # several seeds per setting

Wall times of separate runs drift with whatever else the machine does, so the training-time cost is
also measured directly: training steps of the dense model, the masked model of LAPP's pruning phase and
the compact model after removal, interleaved step by step (medians), giving the estimated cost of a
whole LAPP run relative to dense training: (P * t_masked + (E - P) * t_compact) / (E * t_dense).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import torch

from lappdeploy.config import TrainConfig, parse_int_list
from lappdeploy.environment import write_benchmark
from lappdeploy.io import read_json
from lappdeploy.methods import LappConfig, method_config
from lappdeploy.methods.compress import run_compress
from lappdeploy.train import run_training

RESULTS = Path(__file__).with_name("results")


def _settings(args) -> list[tuple[str, dict]]:
    """(run name, compress settings or None for dense) of every run, in the order they are trained."""
    runs: list[tuple[str, dict | None]] = []
    for seed in args.seeds:
        runs.append((f"dense-s{seed}", {"seed": seed}))
        for ratio in args.ratios:
            for method in args.methods:
                runs.append((f"{method}-r{ratio}-s{seed}", {"seed": seed, "method": method, "target_macs": ratio}))
            if args.ablate_bypass:
                runs.append(
                    (
                        f"lapp-rep-r{ratio}-s{seed}",
                        {"seed": seed, "method": "lapp", "target_macs": ratio, "bypass": "rep"},
                    )
                )
            if args.ablate_score:
                runs.append(
                    (f"lapp-l2-r{ratio}-s{seed}", {"seed": seed, "method": "lapp", "target_macs": ratio, "score": "l2"})
                )
    return runs


def _run(name: str, setting: dict, args, root: Path) -> dict:
    out = root / name
    if (out / "report.json").is_file() and not args.fresh:
        return read_json(out / "report.json")
    train = TrainConfig(
        model=args.model,
        dataset="fashion-mnist",
        data_dir=args.data_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        train_subset=args.train_subset,
        channels_last=True,
        device=args.device,
        seed=setting["seed"],
    )
    print(f"--- {name}", flush=True)
    if "method" not in setting:
        return run_training(train, out, force=True)
    options = {"name": setting["method"], "target_macs": setting["target_macs"], "prune_epochs": args.prune_epochs}
    options.update(round_to=args.round_to, bypass=setting.get("bypass", "none"))
    if setting["method"] == "lapp":
        options["score"] = setting.get("score", "bn")
    compress = method_config(options)
    return run_compress(train, compress, out, force=True)


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
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--prune-epochs", type=int, default=3)
    parser.add_argument("--ratios", default="0.5,0.3", help="MACs targets (fractions of dense)")
    parser.add_argument("--methods", default="lapp,uniform,global")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--train-subset", type=int, default=None, help="train on N images (quick runs)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--ablate-bypass", action="store_true")
    parser.add_argument("--ablate-score", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="retrain runs that already have a report")
    parser.add_argument("--no-step-times", action="store_true", help="skip the interleaved step-time measurement")
    parser.add_argument("--out", type=Path, default=RESULTS / "fashion_mnist_lapp")
    args = parser.parse_args()
    args.ratios = [float(r) for r in args.ratios.split(",")]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.seeds = [int(s) for s in parse_int_list(args.seeds)]
    root = args.out / f"{args.model}-e{args.epochs}-p{args.prune_epochs}"
    if args.fresh and root.exists():
        shutil.rmtree(root)

    rows = []
    for name, setting in _settings(args):
        report = _run(name, setting, args, root)
        rows.append({"run": name, **{k: v for k, v in setting.items()}, "report": report})

    dense_wall = {r["seed"]: r["report"]["wall_s"] for r in rows if "method" not in r}
    table = []
    for r in rows:
        rep = r["report"]
        table.append(
            {
                "run": r["run"],
                "method": r.get("method", "dense"),
                "target": r.get("target_macs", 1.0),
                "bypass": r.get("bypass", "none"),
                "score": r.get("score", "bn" if r.get("method") == "lapp" else None),
                "seed": r["seed"],
                "top1": rep["top1"],
                "macs": rep["macs"],
                "macs_ratio": rep.get("macs_ratio", 1.0),
                "params": rep["params"],
                "wall_s": rep["wall_s"],
                "wall_vs_dense": rep["wall_s"] / dense_wall[r["seed"]],
                "layers": rep.get("layers"),
            }
        )
    print()
    header = f"{'run':<22} {'top-1':>7} {'MACs':>9} {'ratio':>6} {'params':>8} {'wall s':>7} {'vs dense':>8}"
    print(header)
    print("-" * len(header))
    for t in table:
        print(
            f"{t['run']:<22} {100 * t['top1']:6.2f}% {t['macs'] / 1e6:8.2f}M {t['macs_ratio']:6.3f} "
            f"{t['params'] / 1e3:7.1f}K {t['wall_s']:7.0f} {t['wall_vs_dense']:8.2f}"
        )
    summary = {}
    for method in sorted({t["method"] for t in table}):
        for target in sorted({t["target"] for t in table if t["method"] == method}):
            for bypass in ("none", "rep"):
                tops = [t["top1"] for t in table if (t["method"], t["target"], t["bypass"]) == (method, target, bypass)]
                if tops:
                    summary[f"{method}/{target}/{bypass}"] = {
                        "top1_mean": statistics.mean(tops),
                        "top1_std": statistics.stdev(tops) if len(tops) > 1 else 0.0,
                        "runs": len(tops),
                    }
    step_times = None
    lapp_runs = [r for r in rows if r.get("method") == "lapp" and "bypass" not in r and "score" not in r]
    if lapp_runs and not args.no_step_times:
        step_times = measure_step_times(args, root / lapp_runs[0]["run"])
        s_ = step_times["step_s"]
        print(
            f"\ntraining step (batch {args.batch_size}), interleaved medians: dense {s_['dense'] * 1e3:.0f} ms, "
            f"LAPP masked {s_['masked'] * 1e3:.0f} ms, compact ({lapp_runs[0]['run']}) {s_['compact'] * 1e3:.0f} ms; "
            f"estimated LAPP run / dense run: {step_times['estimated_run_cost_vs_dense']:.2f}"
        )
    write_benchmark(
        "fashion_mnist_lapp",
        table,
        RESULTS / f"fashion_mnist_lapp-{args.model}.json",
        device=args.device if args.device != "auto" else "cpu",
        model=args.model,
        epochs=args.epochs,
        prune_epochs=args.prune_epochs,
        round_to=args.round_to,
        train_subset=args.train_subset,
        summary=summary,
        step_times=step_times,
    )


if __name__ == "__main__":
    main()
