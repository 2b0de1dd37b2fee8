"""`lappdeploy inspect`: architecture, parameters and MACs per layer of a run, checkpoint or model name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lappdeploy.cli.common import format_count, stdout_console
from lappdeploy.cli.model_source import model_from_name, model_source_options
from lappdeploy.errors import LappDeployError
from lappdeploy.io import read_json

__all__ = ["inspect_command"]


def _from_checkpoint(target: Path) -> tuple[Any, dict, dict | None]:
    """(model, card dict, report or None) of a run directory or checkpoint file."""
    from lappdeploy.models import checkpoint_in
    from lappdeploy.surgery import load_model

    path = checkpoint_in(target)
    report_path = path.parent / "report.json"
    report = read_json(report_path) if target.is_dir() and report_path.is_file() else None
    loaded = load_model(path)
    return loaded.model, {**loaded.card.to_dict(), "source": str(path)}, report


@click.command("inspect")
@click.argument("target")
@model_source_options()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Compress runs: where to write the kept-channels bar chart [default: RUN_DIR/keep_ratios.png].",
)
@click.option("--no-plot", is_flag=True, help="Compress runs: do not write the bar chart.")
def inspect_command(target: str, as_json: bool, plot: str | None, no_plot: bool, **source) -> None:
    """Show architecture, parameters and MACs per layer of TARGET: a run directory, a checkpoint file
    (model.pt / checkpoint.pt) or a model: a registered name, timm:NAME or package.module:factory.

    MACs are per image, for conv and linear layers (what pruning removes), counted as torch-pruning counts them.

    \b
    Examples:
      lappdeploy inspect runs/r20
      lappdeploy inspect runs/r20-lapp          # a compress run: also kept channels per group + bar chart
      lappdeploy inspect resnet18 --dataset fashion-mnist
      lappdeploy inspect timm:resnet18d --input-shape 3x224x224 --num-classes 5
      lappdeploy inspect mynets:build --model-kwargs '{"width": 16}' --init-from mynet.pth --dataset fashion-mnist
      lappdeploy inspect inception_v3 --dataset synthetic --synthetic-shape 3x64x64   # raised to 80 px
      lappdeploy inspect mobilenet_v2 --input-shape 3x224x224 --num-classes 1000 --json
    """
    from lappdeploy.models import MODELS, count_macs

    path = Path(target).expanduser()
    report = None
    if path.exists():
        model, card, report = _from_checkpoint(path)
    elif target in MODELS or ":" in target:
        loaded, _ = model_from_name(target, **source)
        model, card = loaded.model, {**loaded.card.to_dict(), "source": "model spec"}
    elif "/" in target or target.endswith((".pt", ".pth")):
        raise LappDeployError(f"{target} does not exist")
    else:
        raise LappDeployError(
            f"{target!r} is neither a run directory, a checkpoint file nor a model name; "
            + MODELS.unknown_message(target).split("; ", 1)[1]
        )
    costs = count_macs(model, card["input_shape"])
    if as_json:
        click.echo(json.dumps({**card, **costs.as_dict(), "report": report}, indent=2))
        return
    _print_tables(card, costs, report)
    if report and report.get("layers"):
        _print_keep_ratios(report, path, plot, no_plot)


def _print_keep_ratios(report: dict, target: Path, plot: str | None, no_plot: bool) -> None:
    from lappdeploy.cli.compress_cmd import keep_ratio_table

    console = stdout_console()
    console.print(keep_ratio_table(report["layers"]))
    if no_plot:
        return
    from lappdeploy.report import keep_ratio_chart

    out = Path(plot) if plot else target / "keep_ratios.png"
    title = f"{report['model']} {report['method']}: {report['macs_ratio']:.3f} of dense deploy MACs"
    console.print(f"bar chart: {keep_ratio_chart(report['layers'], out, title=title)}")


def _print_tables(card: dict, costs, report: dict | None) -> None:
    console = stdout_console()
    console.print(_summary_table(card, costs, report))
    console.print(_layers_table(costs))


def _summary_table(card: dict, costs, report: dict | None):
    from rich.table import Table

    summary = Table(show_header=False, title=f"{card['architecture']}", title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    rows = [
        ("source", card.get("source", "-")),
        ("builder kwargs", ", ".join(f"{k}={v}" for k, v in card["kwargs"].items())),
        ("input", "x".join(map(str, costs.input_shape))),
        ("output", "x".join(map(str, costs.output_shape))),
        ("params", f"{format_count(costs.params)} ({costs.params:,})"),
        ("MACs / image", f"{format_count(costs.macs)} ({costs.macs:,}; conv + linear)"),
    ]
    if report:
        accuracy = (
            f"{100 * report['top1']:.2f}% / {100 * report['top5']:.2f}%" if report.get("top1") is not None else "-"
        )
        rows += [
            ("dataset", str(report.get("dataset"))),
            ("top-1 / top-5", accuracy),
            ("epochs", str(report.get("epochs"))),
        ]
    for key, value in rows:
        summary.add_row(key, value)
    return summary


_LAYER_COLUMNS = (
    ("#", "right"), ("layer", "left"), ("type", "left"), ("output", "left"), ("kernel", "left"),
    ("groups", "right"), ("params", "right"), ("MACs", "right"), ("share", "right"),
)  # fmt: skip


def _layers_table(costs):
    from rich.table import Table

    layers = Table(title="conv and linear layers", title_justify="left")
    for column, justify in _LAYER_COLUMNS:
        layers.add_column(column, justify=justify, overflow="fold")
    total = max(costs.macs, 1)
    for i, layer in enumerate(costs.layers):
        shape, kernel = "x".join(map(str, layer.output_shape)), "x".join(map(str, layer.kernel)) or "-"
        share = f"{100 * layer.macs / total:.1f}%"
        layers.add_row(
            str(i), layer.name, layer.kind, shape, kernel, str(layer.groups), format_count(layer.params),
            format_count(layer.macs), share,
        )  # fmt: skip
    layers.add_section()
    params = format_count(sum(x.params for x in costs.layers))
    layers.add_row("", "total", "", "", "", "", params, format_count(costs.macs), "100.0%")
    return layers
