"""From command-line options to a run's configuration: a new run, or `--resume` of a saved one.

`--resume` accepts the options the run was started with (re-running the same command plus `--resume`
works); an option whose value differs from the saved one is an error naming it, except where the data
lives and how it is loaded (`RESUMABLE_CHANGES`), which may change between sessions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import click

from lappdeploy.cli.common import given_options
from lappdeploy.config import RESUMABLE_CHANGES, TrainConfig, field_names
from lappdeploy.errors import ConfigError
from lappdeploy.methods.base import METHODS, PruneConfig, method_config, method_section

__all__ = ["METHOD_OPTIONS", "method_from_options", "resolve_compress", "resolve_train"]


def _method_specific_options() -> list[str]:
    """Options some method has beyond PruneConfig's common ones, each once, in registration order."""
    common = set(field_names(PruneConfig))
    names: list[str] = []
    for method in METHODS.names():
        names += [n for n in field_names(METHODS.get(method).config) if n not in common and n not in names]
    return names


METHOD_OPTIONS = _method_specific_options()


def method_from_options(ctx: click.Context, fields: dict[str, Any]) -> PruneConfig:
    """The typed config of --method from the pruning options the user gave (common and the method's own;
    the rest take the method config's defaults, which may differ from PruneConfig's, e.g. ldrf's
    --prune-epochs 0); an option of another method is an error naming both."""
    given = {name: fields[name] for name in given_options(ctx, [*field_names(PruneConfig), *METHOD_OPTIONS])}
    return method_config({"name": fields["method"], **given})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _differences(ctx: click.Context, fields: dict[str, Any], saved: Any, names: list[str], rebuild: Callable) -> list:
    """The given options among `names` whose values differ from the `saved` config's."""
    differing = []
    for name in given_options(ctx, names):
        if name in RESUMABLE_CHANGES:
            continue
        value = getattr(rebuild(saved.to_dict() | {name: fields[name]}), name)  # coerced like the saved value
        if value != getattr(saved, name):
            differing.append((name, fields[name], getattr(saved, name)))
    return differing


def _refuse_differences(out: str, differing: list) -> None:
    if differing:
        shown = ", ".join(f"{_flag(n)} {given!r} (saved: {saved!r})" for n, given, saved in differing)
        flags = ", ".join(_flag(n) for n, _, _ in differing)
        raise ConfigError(
            f"--resume continues {out} with its saved config.yaml, and {shown} differ from it; drop {flags} "
            "(or start a new run)"
        )


def _resumed_train(ctx: click.Context, out: str, fields: dict[str, Any], saved: TrainConfig) -> TrainConfig:
    differing = _differences(ctx, fields, saved, field_names(TrainConfig), TrainConfig.from_dict)
    _refuse_differences(out, differing)
    overrides = {n: fields[n] for n in given_options(ctx, sorted(RESUMABLE_CHANGES))}
    return saved.replace(**overrides)


def _default_out(prefix: str, config: TrainConfig, method: str | None) -> str:
    tag = f"-{method}" if method else ""
    return os.path.join(prefix, f"{config.model}-{config.dataset}{tag}-{time.strftime('%Y%m%d-%H%M%S')}")


def _saved_run(out: str | None):
    from lappdeploy.rundir import check_resumable, read_run_config  # imports torch: only when resuming

    if out is None:
        raise ConfigError("--resume needs --out DIR, the run directory to continue")
    return read_run_config(check_resumable(out))


def resolve_train(ctx: click.Context, out: str | None, resume: bool, fields: dict[str, Any]):
    """(TrainConfig, run directory) of `lappdeploy train`."""
    if not resume:
        config = TrainConfig(**{n: fields[n] for n in field_names(TrainConfig)})
        return config, out or _default_out("runs", config, None)
    saved = _saved_run(out)
    if saved.method is not None:
        raise ConfigError(f"--resume: {out} is a compress run; resume it with `lappdeploy compress --resume`")
    return _resumed_train(ctx, out, fields, saved.train), out


def resolve_compress(ctx: click.Context, out: str | None, resume: bool, fields: dict[str, Any]):
    """(TrainConfig, the method's config, run directory) of `lappdeploy compress`."""
    if not resume:
        config = TrainConfig(**{n: fields[n] for n in field_names(TrainConfig)})
        method = method_from_options(ctx, fields)
        return config, method, out or _default_out("runs", config, method_section(method)["name"])
    saved = _saved_run(out)
    if saved.method is None:
        raise ConfigError(f"--resume: {out} is a training run, not a compress run; resume it with `lappdeploy train`")
    if saved.flat:
        raise ConfigError(
            f"--resume: {out} was written by lappdeploy 0.1 (a flat config.yaml); 0.3 resumes runs of 0.2 and "
            "later: finish it with lappdeploy 0.2, or start a new run"
        )
    method = method_config(saved.method)
    name = method_section(method)["name"]
    if given_options(ctx, ["method"]) and fields["method"] != name:
        raise ConfigError(f"--resume: {out} was compressed with --method {name}; drop --method {fields['method']}")
    options = [n for n in [*field_names(PruneConfig), *METHOD_OPTIONS] if n in field_names(type(method))]
    foreign = [n for n in given_options(ctx, METHOD_OPTIONS) if n not in options]
    if foreign:
        method_config({"name": name, **{n: fields[n] for n in foreign}})  # raises: an option of another method
    rebuild = type(method).from_dict
    _refuse_differences(out, _differences(ctx, fields, method, options, rebuild))
    return _resumed_train(ctx, out, fields, saved.train), method, out
