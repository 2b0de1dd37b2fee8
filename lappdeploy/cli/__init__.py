"""The `lappdeploy` command: a thin click shell over the library.

Errors a user can fix print as one line and exit with code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import sys

import click

from lappdeploy import __version__
from lappdeploy.cli.bench_cmd import bench_command, report_command
from lappdeploy.cli.common import setup_logging
from lappdeploy.cli.compress_cmd import compress_command
from lappdeploy.cli.export_cmd import export_command
from lappdeploy.cli.inspect_cmd import inspect_command
from lappdeploy.cli.list_cmd import list_command
from lappdeploy.cli.profile_cmd import profile_command
from lappdeploy.cli.train_cmd import train_command
from lappdeploy.errors import LappDeployError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="lappdeploy")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.option("-v", "--verbose", is_flag=True, help="Debug-level log messages.")
def cli(debug: bool, verbose: bool) -> None:
    """lappdeploy: compress CNNs with LAPP pruning from scratch, export them, and measure real latency."""
    setup_logging(verbose)


cli.add_command(train_command)
cli.add_command(compress_command)
cli.add_command(inspect_command)
cli.add_command(export_command)
cli.add_command(bench_command)
cli.add_command(profile_command)
cli.add_command(report_command)
cli.add_command(list_command)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and turn exceptions into one-line errors + exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:  # accept --debug anywhere on the line, not only before the sub-command
        args = ["--debug", *[a for a in args if a != "--debug"]]
    try:
        code = cli.main(args=args, prog_name="lappdeploy", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.UsageError as exc:
        where = f"lappdeploy {exc.ctx.command.name} --help" if exc.ctx and exc.ctx.parent else "lappdeploy --help"
        click.echo(f"Error: {_one_line(exc.format_message())} (see `{where}`)", err=True)
        code = exc.exit_code
    except click.ClickException as exc:
        click.echo(f"Error: {_one_line(exc.format_message())}", err=True)
        code = exc.exit_code
    except click.Abort:
        click.echo("Aborted.", err=True)
        code = 130
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        code = 130
    except LappDeployError as exc:
        if debug:
            raise
        click.echo(f"Error: {_one_line(exc)}", err=True)
        code = exc.exit_code
    except Exception as exc:
        if debug:
            raise
        click.echo(
            f"Error: internal error {type(exc).__name__}: {_one_line(exc)[:300]} "
            "(re-run with --debug for the traceback)",
            err=True,
        )
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
