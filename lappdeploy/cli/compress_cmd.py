"""`lappdeploy compress`: train while a pruning method prunes to a MACs, parameter or latency budget."""

from __future__ import annotations

import os

import click

from lappdeploy.cli.common import (
    SectionedCommand,
    config_file_option,
    dataclass_options,
    format_count,
    stdout_console,
)
from lappdeploy.cli.run_options import METHOD_OPTIONS, resolve_compress
from lappdeploy.cli.train_cmd import print_report
from lappdeploy.config import TrainConfig, config_to_dict, field_names
from lappdeploy.methods import DEFAULT_METHOD, METHODS, PruneConfig
from lappdeploy.methods.options import BudgetOptions, group_fields, option_groups

__all__ = ["compress_command", "print_compress_report"]


def _option_sections() -> dict[str, list[str]]:
    """--help sections: training, the options every method has, the budget, each option group with the methods
    that declare it (`methods.options`), then each method's own options."""
    sections = {
        "Training options": field_names(TrainConfig),
        "Pruning options (every method)": ["method", *group_fields(PruneConfig)],
        BudgetOptions.title: group_fields(BudgetOptions),
    }
    declared: dict[type, list[str]] = {}  # option group -> the methods that declare it
    for name in METHODS.names():
        for group in option_groups(METHODS.get(name).config):
            if group is not BudgetOptions:
                declared.setdefault(group, []).append(name)
    for group, methods in declared.items():
        sections[f"{group.title} (--method {', '.join(methods)})"] = group_fields(group)
    listed = {n for names in sections.values() for n in names}  # a method may re-declare them with its default
    for name in METHODS.names():
        own = [n for n in group_fields(METHODS.get(name).config) if n not in listed]
        if own:
            sections[f"{name} options (--method {name})"] = own
    sections["Run directory"] = ["out", "force", "resume"]
    return sections


def _method_options(fn):
    """One option per method-specific field, declared by the first method that has it; default None,
    so the chosen method's config applies its own default (the help lists each method's)."""
    owner: dict[str, type] = {}
    defaults: dict[str, dict[str, str]] = {}
    for name in METHODS.names():
        config = METHODS.get(name).config
        for option, value in config_to_dict(config()).items():
            if option in METHOD_OPTIONS:
                owner.setdefault(option, config)
                defaults.setdefault(option, {})[name] = (
                    ",".join(map(str, value)) if isinstance(value, list) else str(value)
                )
    for option in reversed(METHOD_OPTIONS):
        values = defaults[option]
        text = (
            next(iter(values.values()))
            if len(set(values.values())) == 1
            else ", ".join(f"{m} {v}" for m, v in values.items())
        )
        fn = dataclass_options(owner[option], only=[option], unset_default=True, default_text=text)(fn)
    return fn


@click.command("compress", cls=SectionedCommand, sections=_option_sections())
@config_file_option
@dataclass_options(TrainConfig)
@click.option(
    "--method",
    default=DEFAULT_METHOD,
    show_default=True,
    help=f"Pruning method: {', '.join(METHODS.names())} (`lappdeploy list methods`).",
)
@dataclass_options(PruneConfig)
@_method_options
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory to create [default: runs/MODEL-DATASET-METHOD-TIMESTAMP].",
)
@click.option("--force", is_flag=True, help="Overwrite --out if it is an existing run directory.")
@click.option(
    "--resume", is_flag=True, help="Continue the interrupted run in --out (same options, or none) from its checkpoint."
)
@click.pass_context
def compress_command(ctx: click.Context, out: str | None, force: bool, resume: bool, **fields) -> None:
    """Train a model (from scratch, or from --init-from) while a pruning method prunes it to a budget: a
    fraction of its dense deploy MACs (--target-macs), parameters (--target-params) or measured latency
    (--target-latency, --target-latency-ms). LAPP (default) learns one threshold per channel group under
    a budget that anneals over --prune-epochs; the baselines train dense for --prune-epochs, then prune
    once. The masked channels are removed and the compact model trains for the remaining epochs. Writes a
    run directory like `train` plus plan.json; model.pt is the deploy model (channels removed, bypass folded).

    \b
    Examples:
      lappdeploy compress --model resnet20 --dataset fashion-mnist --target-macs 0.5 --epochs 8 \\
          --prune-epochs 3 --out runs/r20-lapp
      lappdeploy compress --config configs/demo.yaml --out runs/demo
      lappdeploy compress --method uniform --target-macs 0.5 --out runs/r20-uniform   # baseline
      lappdeploy compress --method ldrf --init-from runs/r20-dense --epochs 0 --out runs/r20-ldrf  # post-training
      lappdeploy compress --out runs/r20-lapp --resume
    """
    from lappdeploy.methods.compress import run_compress

    config, method, out = resolve_compress(ctx, out, resume, fields)
    if int(os.environ.get("RANK", "0")) != 0:
        run_compress(config, method, out, force=force, resume=resume)
        return
    from lappdeploy.cli.progress import TrainingProgress

    with TrainingProgress(stdout_console()) as progress:
        report = run_compress(config, method, out, force=force, resume=resume, hooks=[progress])
    print_compress_report(report, out)


def print_compress_report(report: dict, out: str) -> None:
    """The training summary, then dense vs compressed costs and the kept width of every group."""
    from rich.table import Table

    print_report(report, out)
    console = stdout_console()
    latency = report.get("latency")
    if latency:
        title = (
            f"{report['method']}: target {latency['target_ms']:.4g} ms ({latency['runtime']} {latency['device']}, "
            f"batch {latency['batch']})"
        )
    else:
        budget = report.get("budget") or {"target": report["target_macs"], "dense": 1.0, "unit": "MACs"}
        title = f"{report['method']}: target {budget['target'] / budget['dense']:.4g} of dense {budget['unit']}"
    costs = Table(title=title, title_justify="left")
    for column in ("", "dense", "compressed", "ratio"):
        costs.add_column(column, justify="right" if column else "left")
    for label, dense, pruned in (
        ("MACs / image (conv + linear)", report["dense_macs"], report["macs"]),
        ("deploy MACs (BN folded, bias)", report["dense_deploy_macs"], report["deploy_macs"]),
        ("params", report["dense_params"], report["params"]),
    ):
        costs.add_row(label, format_count(dense), format_count(pruned), f"{pruned / max(dense, 1):.3f}")
    if latency and latency.get("measured_ms") is not None:  # both timed now, interleaved
        dense_ms, measured = latency["dense_measured_now_ms"], latency["measured_ms"]
        costs.add_row(
            "latency, measured (ms / batch)", f"{dense_ms:.4g}", f"{measured:.4g}", f"{measured / dense_ms:.3f}"
        )
    if latency and latency.get("predicted_ms") is not None:
        dense_ms, predicted = latency["dense_predicted_ms"], latency["predicted_ms"]
        costs.add_row("latency, predicted (ms / batch)", f"{dense_ms:.4g}", f"{predicted:.4g}",
                      f"{predicted / dense_ms:.3f}")  # fmt: skip
    console.print(costs)
    if latency and latency.get("measured_landing"):
        attempts = latency["measured_landing"]
        shown = " -> ".join(f"{a['measured_vs_target']:.3f}" + (" (kept)" if a.get("kept") else "") for a in attempts)
        console.print(f"measured landing (latency / target, timed with dense): {shown}")
    console.print(keep_ratio_table(report["layers"]))


def keep_ratio_table(layers: list[dict]):
    """Rich table of kept / total channels per group, with a text bar."""
    from rich.table import Table

    table = Table(title="kept channels per group", title_justify="left")
    for column, justify in (("group", "left"), ("kept", "right"), ("total", "right"), ("ratio", "right")):
        table.add_column(column, justify=justify)
    table.add_column("", justify="left")
    bar_width = 20
    for layer in layers:
        ratio = layer["kept"] / layer["total"]
        bar = "█" * round(ratio * bar_width)
        table.add_row(layer["name"], str(layer["kept"]), str(layer["total"]), f"{ratio:.2f}", bar)
    return table
