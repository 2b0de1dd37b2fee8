"""`lappdeploy train`: dense training into a run directory (also under torchrun for DDP)."""

from __future__ import annotations

import os

import click

from lappdeploy.cli.common import config_file_option, dataclass_options, format_count, stdout_console
from lappdeploy.cli.run_options import resolve_train
from lappdeploy.config import TrainConfig

__all__ = ["print_report", "train_command"]


@click.command("train")
@config_file_option
@dataclass_options(TrainConfig)
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory to create [default: runs/MODEL-DATASET-TIMESTAMP].",
)
@click.option("--force", is_flag=True, help="Overwrite --out if it is an existing run directory.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out from its last checkpoint.")
@click.pass_context
def train_command(ctx: click.Context, out: str | None, force: bool, resume: bool, **fields) -> None:
    """Train a model from scratch and write a run directory (config.yaml, metrics.jsonl, checkpoint.pt,
    model.pt, report.json).

    \b
    Examples:
      lappdeploy train --model resnet20 --dataset fashion-mnist --epochs 2 --out runs/r20
      lappdeploy train --config configs/fashion_mnist_resnet20.yaml --lr 0.05 --out runs/r20-lr05
      lappdeploy train --out runs/r20 --resume
      torchrun --nproc_per_node 2 -m lappdeploy train --model resnet20 --out runs/r20-ddp
    """
    from lappdeploy.train import run_training

    config, out = resolve_train(ctx, out, resume, fields)
    is_main = int(os.environ.get("RANK", "0")) == 0
    if not is_main:
        run_training(config, out, force=force, resume=resume)
        return
    from lappdeploy.cli.progress import TrainingProgress

    console = stdout_console()
    with TrainingProgress(console) as progress:
        report = run_training(config, out, force=force, resume=resume, hooks=[progress])
    print_report(report, out)


def print_report(report: dict, out: str) -> None:
    from rich.table import Table

    table = Table(title=f"{report['model']} on {report['dataset']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("top-1", f"{100 * report['top1']:.2f}%" if report.get("top1") is not None else "-"),
        ("top-5", f"{100 * report['top5']:.2f}%" if report.get("top5") is not None else "-"),
        ("MACs / image", format_count(report["macs"])),
        ("params", format_count(report["params"])),
        ("input", "x".join(map(str, report["input_shape"]))),
        ("epochs", str(report["epochs"])),
        ("wall time", f"{report['wall_s']:.1f} s"),
        (
            "train throughput",
            f"{report['train_images_per_s']:.0f} img/s on {report['world_size']} x {report['device']}",
        ),
        ("run directory", str(out)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    stdout_console().print(table)
