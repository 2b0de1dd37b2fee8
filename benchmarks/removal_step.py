"""Does LAPP's accuracy jump at the removal? Held-out top-1 of the masked model one step before the end
of the pruning phase and of the compact model right after the removal (and BatchNorm recalibration),
per MACs target, on the full Fashion-MNIST training set (held-out images taken out of it).

    python benchmarks/removal_step.py                            # ResNet-20, targets 0.5 and 0.3, seed 0
    python benchmarks/removal_step.py --targets 0.5 --snap 0     # without training the final widths

Each run trains only until the pruning phase ends (--prune-epochs; the LR schedule is that of --epochs),
since the question is the step at the removal. Prints a table, writes JSON next to the runs.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from lappdeploy.config import TrainConfig
from lappdeploy.environment import write_benchmark
from lappdeploy.hooks import Hook
from lappdeploy.methods import method_config
from lappdeploy.methods.compress import run_compress
from lappdeploy.train.engine import evaluate

RESULTS = Path(__file__).with_name("results") / "removal_step"


class _PhaseOver(Exception):
    """Raised once both numbers are in: the rest of the schedule is not needed."""


class AroundRemoval(Hook):
    """Held-out top-1 at the last step before the phase ends and at that step, after the method's hooks
    (which remove the channels at it) have run; then stops the run."""

    def __init__(self, phase_epochs: int) -> None:
        self.phase_epochs = phase_epochs
        self.top1: dict[str, float] = {}

    def on_step_end(self, loop, loss) -> None:
        last = self.phase_epochs * loop.steps_per_epoch
        if loop.state.step in (last - 1, last):
            accuracy = evaluate(loop.module, loop.holdout_loader, device=loop.device)["top1"]
            self.top1["before" if loop.state.step < last else "after"] = accuracy
            loop.module.train()
        if loop.state.step == last:
            raise _PhaseOver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="0.5,0.3")
    parser.add_argument("--prune-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8, help="of the schedule (the LR); runs stop at the removal")
    parser.add_argument("--snap", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    for target in (float(t) for t in args.targets.split(",")):
        probe = AroundRemoval(args.prune_epochs)
        train = TrainConfig(
            model="resnet20", dataset="fashion-mnist", epochs=args.epochs,
            batch_size=128, lr=0.1, holdout=args.holdout, channels_last=True, seed=args.seed,
        )  # fmt: skip
        method = method_config(
            {"name": "lapp", "target_macs": target, "prune_epochs": args.prune_epochs, "snap": args.snap}
        )
        out = args.out / f"lapp-r{target}-snap{args.snap}-s{args.seed}"
        # the run directory stays incomplete (no report.json): only the two numbers matter here
        with contextlib.suppress(_PhaseOver):
            run_compress(train, method, out, force=out.exists(), hooks=[probe])
        rows.append({"target": target, "snap": args.snap, "seed": args.seed, **probe.top1})
        print(f"target {target}: held-out top-1 {probe.top1}", flush=True)
    print("\n| MACs target | snap | held-out top-1 before removal | after removal | change (pts) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['target']} | {r['snap']} | {100 * r['before']:.2f} | {100 * r['after']:.2f} | "
            f"{100 * (r['after'] - r['before']):+.2f} |"
        )
    write_benchmark("removal_step", rows, args.out / "removal_step.json", settings=vars(args) | {"out": str(args.out)})


if __name__ == "__main__":
    main()
