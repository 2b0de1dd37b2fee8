"""CLI plumbing: options generated from config dataclasses, --config YAML defaults, logging, formatting."""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

import click

from lappdeploy.config import field_default, load_yaml_mapping, parse_int_list, parse_shape, split_sections
from lappdeploy.errors import ConfigError
from lappdeploy.methods.options import ROUND_TO_AUTO

__all__ = [
    "ProgressBar",
    "SectionedCommand",
    "config_file_option",
    "dataclass_options",
    "format_count",
    "given_options",
    "setup_logging",
    "stderr_console",
    "stdout_console",
]

_consoles: dict[str, Any] = {}


_PIPED_WIDTH = 160  # columns when output goes to a file or pipe (rich would assume 80 and truncate tables)


def stdout_console():
    from rich.console import Console

    if "out" not in _consoles:
        _consoles["out"] = Console(width=None if sys.stdout.isatty() else _PIPED_WIDTH)
    return _consoles["out"]


def stderr_console():
    from rich.console import Console

    if "err" not in _consoles:
        _consoles["err"] = Console(stderr=True, width=None if sys.stderr.isatty() else _PIPED_WIDTH)
    return _consoles["err"]


def setup_logging(verbose: bool = False) -> None:
    """Rich log lines on stderr; only rank 0 of a torchrun job logs below WARNING."""
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.INFO
    if int(os.environ.get("RANK", "0")) != 0:
        level = logging.WARNING
    root = logging.getLogger("lappdeploy")
    root.handlers[:] = [RichHandler(console=stderr_console(), show_path=False, show_time=False, markup=False)]
    root.setLevel(level)
    root.propagate = False


def format_count(n: float | int | None) -> str:
    """40813194 -> '40.81M' (SI prefixes, 4 significant digits)."""
    if n is None:
        return "-"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.4g}{prefix}"
    return f"{n:g}"


class ShapeParam(click.ParamType):
    name = "CxHxW"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int, int]:
        try:
            return parse_shape(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


class RoundToParam(click.ParamType):
    """--round-to: a multiple K >= 1, or auto (per group, from the latency table: ROUND_TO_AUTO)."""

    name = "K|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return ROUND_TO_AUTO
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a whole number of channels nor auto", param, ctx)


class JsonParam(click.ParamType):
    """A JSON object on the command line, e.g. --model-kwargs '{"width": 0.5}'."""

    name = "JSON"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dict:
        if isinstance(value, dict):
            return value
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            self.fail(f"{value!r} is not valid JSON ({exc.msg}); e.g. '{{\"width\": 0.5}}'", param, ctx)
        if not isinstance(parsed, dict):
            self.fail(f"{value!r} is not a JSON object of argument names to values", param, ctx)
        return parsed


class IntListParam(click.ParamType):
    name = "N,N,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        try:
            return tuple(int(v) for v in parse_int_list(value))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)


def _option_specs(
    cls: type, only: Sequence[str] | None, unset_default: bool, default_text: str | None = None
) -> list[tuple[list[str], dict]]:
    """(declarations, keyword arguments) of one click option per dataclass field (or per field in
    `only`): `--field-name`, with the field's help, type, choices and default. With `unset_default` the
    option defaults to None (the config class applies its own default) and the help shows the default."""
    hints = typing.get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        args = [t for t in typing.get_args(hint) if t is not type(None)]
        base = args[0] if typing.get_origin(hint) is not tuple and args else hint
        default = field_default(f)
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", ""), "show_default": True, "default": default}
        cli_type = f.metadata.get("cli_type")
        if cli_type == "json":
            kwargs.update(type=JsonParam(), default=json.dumps(default), show_default=False)
        elif cli_type == "shape":
            kwargs["type"] = ShapeParam()
            kwargs["default"] = "x".join(map(str, f.default))
        elif cli_type == "int_list":
            kwargs["type"] = IntListParam()
            kwargs["default"] = ",".join(map(str, f.default))
            kwargs["show_default"] = False
        elif cli_type == "round_to":
            kwargs["type"] = RoundToParam()
        elif cli_type == "str_list":  # the config dataclass splits the text on commas
            kwargs["type"] = str
            kwargs["default"] = ",".join(f.default)
            kwargs["show_default"] = False
        elif f.metadata.get("choices"):
            kwargs["type"] = click.Choice(f.metadata["choices"])
        elif base is bool:
            flag = f"{flag}/--no-{flag[2:]}"
        else:
            kwargs["type"] = {int: int, float: float, str: str}.get(base, str)
        if f.default is None:
            kwargs["show_default"] = False
        if unset_default:
            shown = default_text or kwargs["default"]
            kwargs.update(default=None, show_default=False)
            kwargs["help"] += f"  [default: {shown}]" if shown not in (None, "") else ""
        options.append(([flag, f.name], kwargs))
    return options


def dataclass_options(
    cls: type, *, only: Sequence[str] | None = None, unset_default: bool = False, default_text: str | None = None
) -> Callable[[Callable], Callable]:
    """Decorator adding the options of `cls`'s fields (or of the fields in `only`) to a click command,
    in field order. With `unset_default` they default to None and the help shows `default_text` (or the
    field's default)."""

    def decorate(fn: Callable) -> Callable:
        for decls, kwargs in reversed(_option_specs(cls, only, unset_default, default_text)):
            fn = click.option(*decls, **kwargs)(fn)
        return fn

    return decorate


def given_options(ctx: click.Context, names: Sequence[str]) -> list[str]:
    """The options among `names` the user set: on the command line or in the --config file."""
    given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.DEFAULT_MAP)
    return [name for name in names if ctx.get_parameter_source(name) in given]


class SectionedCommand(click.Command):
    """A command whose --help lists its options in titled sections (`sections`: title -> option names);
    options in no section are listed last under "Other options"."""

    def __init__(self, *args: Any, sections: dict[str, Sequence[str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sections = sections or {}

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {p.name: p.get_help_record(ctx) for p in self.get_params(ctx)}
        placed = {n for names in self.sections.values() for n in names}  # an option may be in several
        others = [n for n in records if n not in placed]
        for title, names in [*self.sections.items(), ("Other options", others)]:
            rows = [records[n] for n in names if records.get(n)]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _load_config_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager callback: the YAML mapping becomes the command's default_map (flags still win). A run's
    config.yaml (nested in `train:` and `method:` sections) works too."""
    if value is None:
        return None
    train, method, legacy = split_sections(load_yaml_mapping(value))
    if legacy:  # a flat file: its keys are option names
        data = load_yaml_mapping(value)
    else:
        method = dict(method or {})
        data = {**train, **({"method": method.pop("name")} if "name" in method else {}), **method}
    known = [p.name for p in ctx.command.params if p.name not in ("config", "debug")]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"valid keys: {', '.join(known)}"
            raise ConfigError(f"unknown option {key!r} in config {value}; {hint}")
    # a YAML list for a comma-separated text option (--ignore): click would turn it into "['a', 'b']"
    text_options = {p.name for p in ctx.command.params if p.type is click.STRING}
    data = {k: ",".join(map(str, v)) if k in text_options and isinstance(v, list) else v for k, v in data.items()}
    ctx.default_map = {**(ctx.default_map or {}), **data}
    return value


def config_file_option(fn: Callable) -> Callable:
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=_load_config_file,
        help="YAML file of option: value pairs used as defaults (command-line flags override them).",
    )(fn)


class ProgressBar:
    """A progress bar on stderr, called as `progress(what, fraction)`; it appears at the first timed call,
    so errors in the input print without one."""

    def __enter__(self) -> ProgressBar:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description:>12}"),
            BarColumn(bar_width=30),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=stderr_console(),
            transient=True,
        )
        self.task = None
        return self

    def __call__(self, what: str, fraction: float) -> None:
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task(what, total=1.0)
        self.bar.update(self.task, completed=fraction, description=what)

    def __exit__(self, *exc) -> None:
        if self.task is not None:
            self.bar.stop()
