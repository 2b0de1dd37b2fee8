"""`lappdeploy train`: dense training into a run directory (also under torchrun for DDP)."""

from __future__ import annotations

import os
import time

import click

from lappdeploy.cli.common import config_file_option, dataclass_options, format_count, stdout_console
from lappdeploy.config import CompressConfig, TrainConfig, field_names
from lappdeploy.errors import ConfigError

__all__ = ["print_report", "resolve_run_configs", "train_command"]


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

    config, _, out = resolve_run_configs(ctx, out, resume, fields, prefix="runs")
    is_main = int(os.environ.get("RANK", "0")) == 0
    if not is_main:
        run_training(config, out, force=force, resume=resume)
        return
    from lappdeploy.cli.progress import TrainingProgress

    console = stdout_console()
    with TrainingProgress(console) as progress:
        report = run_training(config, out, force=force, resume=resume, hooks=[progress])
    print_report(report, out)


def resolve_run_configs(
    ctx: click.Context, out: str | None, resume: bool, fields: dict, *, prefix: str, extension_cls=None
):
    """(TrainConfig, extension config or None, run directory) from the command's options; on --resume
    from the run's saved config.yaml, where only where-and-how-to-load options may change."""
    from lappdeploy.train import check_run_dir, read_config
    from lappdeploy.train.engine import RESUMABLE_CHANGES

    train_names = field_names(TrainConfig)
    extension_names = field_names(extension_cls or CompressConfig)
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out DIR, the run directory to continue")
        from_command_line = [
            name
            for name in fields
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
            and name not in RESUMABLE_CHANGES
        ]
        if from_command_line:
            flags = ", ".join("--" + n.replace("_", "-") for n in from_command_line)
            raise ConfigError(f"--resume continues {out} with its saved config.yaml; drop {flags} (or start a new run)")
        config, saved = read_config(check_run_dir(out, resume=True), extension_keys=extension_names)
        overrides = {
            n: fields[n]
            for n in RESUMABLE_CHANGES
            if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE
        }
        config = config.replace(**overrides)
        if extension_cls is not None and not saved:
            raise ConfigError(
                f"--resume: {out} is a training run, not a compress run; resume it with `lappdeploy train`"
            )
        if extension_cls is None and saved:
            raise ConfigError(f"--resume: {out} is a compress run; resume it with `lappdeploy compress --resume`")
        extension = extension_cls.from_dict(saved) if extension_cls is not None else None
    else:
        config = TrainConfig(**{n: fields[n] for n in train_names})
        extension = extension_cls(**{n: fields[n] for n in extension_names}) if extension_cls is not None else None
        if out is None:
            tag = f"-{extension.method}" if extension is not None else ""
            out = os.path.join(prefix, f"{config.model}-{config.dataset}{tag}-{time.strftime('%Y%m%d-%H%M%S')}")
    return config, extension, out


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
