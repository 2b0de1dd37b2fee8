"""`--tensorboard`: the run's metrics as TensorBoard events in RUN/tensorboard, next to metrics.jsonl.

Every epoch's numbers go under `epoch/` (x axis: epochs), the per-step records of pruning methods (budget,
MACs or latency, thresholds) under `prune/` (x axis: optimizer steps), and at the end the run's curves as
figures (accuracy and loss per epoch; the pruning trajectory against its budget).
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from lappdeploy.hooks import Hook
from lappdeploy.optional import require

__all__ = ["TensorBoardWriter", "check_tensorboard"]


def check_tensorboard() -> None:
    """Raise MissingDependencyError (naming the extra) where TensorBoard cannot be written."""
    require("tensorboard", purpose="--tensorboard")


def _scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a (nested) record, flattened to 'a/b' tags; booleans and text are left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_scalars(value, f"{tag}/"))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[tag] = float(value)
    return out


class TensorBoardWriter(Hook):
    """Writes events to `directory` (rank 0 only: the run adds this hook on the main process)."""

    def __init__(self, directory: str | Path) -> None:
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(directory))
        self.epochs: list[dict[str, Any]] = []
        self.pruning: list[dict[str, Any]] = []

    def on_epoch_end(self, loop, metrics: dict[str, Any]) -> None:
        epoch = int(metrics.get("epoch", 0))
        for tag, value in _scalars({k: v for k, v in metrics.items() if k != "epoch"}).items():
            self.writer.add_scalar(f"epoch/{tag}", value, epoch)
        self.epochs.append(metrics)
        self.writer.flush()

    def on_log(self, loop, record: dict[str, Any]) -> None:
        step = int(record.get("step", loop.state.step))
        for tag, value in _scalars({k: v for k, v in record.items() if k not in ("step", "epoch")}).items():
            self.writer.add_scalar(f"prune/{tag}", value, step)
        self.pruning.append(record)

    def on_train_end(self, loop, history: list[dict[str, Any]]) -> None:
        try:
            figures = _figures(self.epochs, self.pruning)
        except Exception:  # matplotlib is optional: the scalars are there either way
            figures = {}
        for tag, figure in figures.items():
            self.writer.add_figure(tag, figure, close=True)
        self.writer.close()


def _figures(epochs: list[dict[str, Any]], pruning: list[dict[str, Any]]) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    if epochs:
        figure, (accuracy, loss) = plt.subplots(1, 2, figsize=(9, 3.5))
        xs = [m["epoch"] for m in epochs]
        for key, axis in (("val_top1", accuracy), ("holdout_top1", accuracy), ("train_loss", loss), ("val_loss", loss)):
            ys = [m.get(key) for m in epochs]
            if any(y is not None for y in ys):
                axis.plot(xs, ys, marker="o", label=key)
        for axis in (accuracy, loss):
            axis.set_xlabel("epoch")
            axis.legend()
        figures["curves/accuracy_and_loss"] = figure
    tracked = [r for r in pruning if "macs" in r and "budget" in r]
    if tracked:
        figure, axis = plt.subplots(figsize=(6, 3.5))
        steps = [r.get("step", i) for i, r in enumerate(tracked)]
        axis.plot(steps, [r["macs"] for r in tracked], label="cost (fraction of dense)")
        axis.plot(steps, [r["budget"] for r in tracked], linestyle="--", label="budget")
        axis.set_xlabel("step")
        axis.legend()
        figures["curves/pruning_budget"] = figure
    return figures
