"""`lappdeploy list models|datasets|methods|runtimes`."""

from __future__ import annotations

import click

from lappdeploy.cli.common import stdout_console

__all__ = ["list_command"]


@click.command("list")
@click.argument("what", type=click.Choice(["models", "datasets", "methods", "runtimes"]))
@click.option(
    "--family",
    type=click.Choice(["cifar", "torchvision", "testing", "user"]),
    default=None,
    help="Models of one family only.",
)
def list_command(what: str, family: str | None) -> None:
    """List the registered models, datasets, pruning methods or benchmark runtimes."""
    from rich.table import Table

    table = Table()
    if what == "models":
        from lappdeploy.models import MODELS

        for column in ("model", "family", "min input (px)", "description"):
            table.add_column(column)
        for name in MODELS.names():
            spec = MODELS.get(name)
            if family is None or spec.family == family:
                table.add_row(name, spec.family, str(spec.min_input_size), spec.description)
    elif what == "methods":
        from lappdeploy.methods import METHODS

        table.add_column("method")
        table.add_column("description")
        for name in METHODS.names():
            table.add_row(name, METHODS.get(name).summary)
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
