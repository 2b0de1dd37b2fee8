"""Rich progress for the training loop: a bar for the run and one for the epoch (ETA on both), and one
summary line per epoch. A Hook, so the library's loop stays free of presentation."""

from __future__ import annotations

import time
from typing import Any

import torch

from lappdeploy.hooks import Hook

__all__ = ["TrainingProgress"]

_LOSS_REFRESH_S = 0.5  # reading the loss synchronises with the GPU; do it at most this often


class TrainingProgress(Hook):
    def __init__(self, console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.progress = Progress(
            TextColumn("{task.description:>10}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=True,
        )
        self._run_task = None
        self._epoch_task = None
        self._last_refresh = 0.0

    def __enter__(self) -> TrainingProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def on_train_start(self, trainer) -> None:
        total = trainer.steps_per_epoch * trainer.epochs
        self._run_task = self.progress.add_task("run", total=total, completed=trainer.state.step, info="")
        self._epoch_task = self.progress.add_task("epoch", total=trainer.steps_per_epoch, info="")

    def on_epoch_start(self, trainer, epoch: int) -> None:
        self.progress.reset(
            self._epoch_task, total=trainer.steps_per_epoch, description=f"epoch {epoch + 1}/{trainer.epochs}", info=""
        )

    def on_step_end(self, trainer, loss: torch.Tensor) -> None:
        self.progress.advance(self._run_task)
        now = time.monotonic()
        if now - self._last_refresh >= _LOSS_REFRESH_S:
            self._last_refresh = now
            self.progress.update(self._epoch_task, advance=1, info=f"loss {loss.item():.4f}  lr {trainer.lr:.4g}")
        else:
            self.progress.advance(self._epoch_task)

    def on_log(self, trainer, record: dict[str, Any]) -> None:
        """Pruning-phase records: show the MACs the masks give now against the budget."""
        if self._run_task is None:  # a method pruning in its on_train_start, which runs before this hook's
            self.console.print(f"pruned to {record['macs']:.3f} of dense MACs" if "macs" in record else record)
            return
        if record.get("type") == "lapp":
            self.progress.update(
                self._run_task, info=f"MACs {record['macs']:.3f} of dense, budget {record['budget']:.3f}"
            )
        elif record.get("type") == "prune_step":
            info = f"pruning step {record['index']}: {record['macs']:.3f} of dense MACs"
            self.progress.update(self._run_task, info=f"{info}, decisions {record['decision_s']:.0f} s")
        elif "macs" in record:  # the channels were just removed
            self.progress.update(self._run_task, info=f"pruned to {record['macs']:.3f} of dense MACs")

    def on_epoch_end(self, trainer, metrics: dict[str, Any]) -> None:
        self.console.print(format_epoch_line(metrics, trainer.epochs), highlight=False)


def format_epoch_line(m: dict[str, Any], epochs: int) -> str:
    width = len(str(epochs))
    parts = [f"epoch {m['epoch']:>{width}}/{epochs}"]
    if "train_loss" in m:  # absent from the evaluation of a run with 0 epochs
        distilled = f" (ce {m['train_ce']:.4f}, kd {m['train_kd']:.4f})" if "train_kd" in m else ""
        parts.append(f"train loss {m['train_loss']:.4f}{distilled} top1 {100 * m['train_top1']:5.2f}%")
    if "holdout_top1" in m:
        parts.append(f"held-out top1 {100 * m['holdout_top1']:5.2f}%")
    if "val_top1" in m:
        parts.append(f"val loss {m['val_loss']:.4f} top1 {100 * m['val_top1']:5.2f}% top5 {100 * m['val_top5']:5.2f}%")
    if "macs_ratio" in m:
        budget = f" (budget {m['budget_ratio']:.3f})" if "budget_ratio" in m and not m.get("pruned") else ""
        parts.append(f"MACs {m['macs_ratio']:.3f}{budget}{' pruned' if m.get('pruned') else ''}")
    teacher = f" (teacher {100 * m['teacher_share']:.0f}%)" if "teacher_share" in m else ""
    parts.append(f"lr {m['lr']:.4g}  {m['epoch_s']:.1f} s{teacher}  {m['train_images_per_s']:.0f} img/s")
    return "  |  ".join(parts)
