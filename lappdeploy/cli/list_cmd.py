"""`lappdeploy list models|datasets|methods|runtimes`."""

from __future__ import annotations

import click

from lappdeploy.cli.common import stdout_console
from lappdeploy.config import config_to_dict
from lappdeploy.methods import DEFAULT_METHOD, METHODS, PruneConfig
from lappdeploy.methods.options import BudgetOptions, group_defaults, option_groups

__all__ = ["list_command"]


@click.command("list")
@click.argument("what", type=click.Choice(["models", "datasets", "methods", "criteria", "runtimes"]))
@click.option(
    "--family",
    type=click.Choice(["cifar", "torchvision", "testing", "user"]),
    default=None,
    help="Models of one family only.",
)
@click.option(
    "--timm", "timm_models", is_flag=True,
    help="models: the timm models whose channels lappdeploy removes (--model timm:NAME; the timm extra).",
)  # fmt: skip
def list_command(what: str, family: str | None, timm_models: bool) -> None:
    """List the registered models, datasets, pruning methods, channel criteria or benchmark runtimes."""
    from rich.table import Table

    table = Table()
    if timm_models and what != "models":
        raise click.UsageError("--timm lists models: `lappdeploy list models --timm`")
    if timm_models:
        _timm_table(table)
    elif what == "models":
        from lappdeploy.models import MODELS

        for column in ("model", "family", "min input (px)", "description"):
            table.add_column(column)
        for name in MODELS.names():
            spec = MODELS.get(name)
            if family is None or spec.family == family:
                table.add_row(name, spec.family, str(spec.min_input_size), spec.description)
    elif what == "methods":
        _methods_table(table)
    elif what == "criteria":
        from lappdeploy.surgery import CRITERIA

        for column in ("criterion", "score of a channel (higher = kept)", "needs"):
            table.add_column(column)
        for name in CRITERIA.names():
            spec = CRITERIA.get(name)
            table.add_row(name, spec.summary, "gradients (a backward pass)" if spec.needs_grad else "weights")
    elif what == "runtimes":
        from rich.markup import escape

        from lappdeploy.bench.runtimes import RUNTIMES

        for column in ("runtime", "description", "needs"):
            table.add_column(column)
        for name in RUNTIMES.names():
            spec = RUNTIMES.get(name)
            table.add_row(name, spec.description, escape(spec.needs))
    else:
        from lappdeploy.data import DATASETS

        table.add_column("dataset")
        table.add_column("description")
        for name in DATASETS.names():
            table.add_row(name, DATASETS.get(name).description)
    stdout_console().print(table)


def _methods_table(table) -> None:
    """Each method, what it does, the option groups it declares (`methods.options`; their options in
    `compress --help`) and its own options with their defaults (and those it gives another default than
    its group's); the options every method has, once."""
    from rich.markup import escape

    def flags(values: dict) -> str:
        return ", ".join(f"--{k.replace('_', '-')} {escape(str(v))}" for k, v in values.items())

    def options(config) -> str:
        groups = [g for g in option_groups(config) if g is not BudgetOptions]
        inherited = config_to_dict(PruneConfig())
        for group in groups:
            inherited.update(group_defaults(group))
        own = {k: v for k, v in config_to_dict(config()).items() if k not in inherited or inherited[k] != v}
        titles = ", ".join(g.title.lower() for g in groups)
        return "; ".join(part for part in (f"groups: {titles}" if titles else "", flags(own)) if part)

    for column in ("method", "description", "option groups and own options (defaults)"):
        table.add_column(column)
    for name in METHODS.names():
        spec = METHODS.get(name)
        label = f"{name} (default)" if name == DEFAULT_METHOD else name
        table.add_row(label, spec.summary, options(spec.config) or "-")
    table.add_row("every method", "", flags(config_to_dict(PruneConfig())))


def _timm_table(table) -> None:
    from lappdeploy.models.timm_support import TIMM_CHECKED_VERSION, TIMM_COMPRESSIBLE, timm_models

    for column in ("--model", "family", "checked on"):
        table.add_column(column)
    for name, family in timm_models():
        checked = f"{TIMM_COMPRESSIBLE[family]} (timm {TIMM_CHECKED_VERSION})"
        table.add_row(f"timm:{name}", family, checked if name == TIMM_COMPRESSIBLE[family] else "")
