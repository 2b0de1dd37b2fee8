"""From command-line options to a run's configuration: a new run, or `--resume` of a saved one.

`--resume` continues a run with its saved config.yaml and the options given now; what may change is the
run-directory contract's to say (`rundir.check_resumed_config`, checked by `run_training` for the CLI and
the Python API alike): re-running the same command plus `--resume` works, a changed option is an error
naming it.
"""

from __future__ import annotations

import os
import time
from typing import Any

import click

from lappdeploy.cli.common import given_options
from lappdeploy.config import TrainConfig, field_names
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


def _resumed_train(ctx: click.Context, fields: dict[str, Any], saved: TrainConfig) -> TrainConfig:
    """The saved training config with the options given now: the run-directory contract
    (`rundir.check_resumed_config`, run by `run_training`) refuses those that may not change."""
    given = {n: fields[n] for n in given_options(ctx, field_names(TrainConfig))}
    return TrainConfig.from_dict(saved.to_dict() | given)


def _default_out(prefix: str, config: TrainConfig, method: str | None) -> str:
    tag = f"-{method}" if method else ""
    return os.path.join(prefix, f"{config.model}-{config.dataset}{tag}-{time.strftime('%Y%m%d-%H%M%S')}")


def _saved_run(out: str | None):
    from lappdeploy.rundir import check_resumable, resumable_config  # imports torch: only when resuming

    if out is None:
        raise ConfigError("--resume needs --out DIR, the run directory to continue")
    return resumable_config(check_resumable(out))


def resolve_train(ctx: click.Context, out: str | None, resume: bool, fields: dict[str, Any]):
    """(TrainConfig, run directory) of `lappdeploy train`."""
    if not resume:
        config = TrainConfig(**{n: fields[n] for n in field_names(TrainConfig)})
        return config, out or _default_out("runs", config, None)
    saved = _saved_run(out)
    if saved.method is not None:
        raise ConfigError(f"--resume: {out} is a compress run; resume it with `lappdeploy compress --resume`")
    return _resumed_train(ctx, fields, saved.train), out


def resolve_compress(ctx: click.Context, out: str | None, resume: bool, fields: dict[str, Any]):
    """(TrainConfig, the method's config, run directory) of `lappdeploy compress`."""
    if not resume:
        config = TrainConfig(**{n: fields[n] for n in field_names(TrainConfig)})
        method = method_from_options(ctx, fields)
        return config, method, out or _default_out("runs", config, method_section(method)["name"])
    saved = _saved_run(out)
    if saved.method is None:
        raise ConfigError(f"--resume: {out} is a training run, not a compress run; resume it with `lappdeploy train`")
    method = method_config(saved.method)
    name = method_section(method)["name"]
    if given_options(ctx, ["method"]) and fields["method"] != name:
        raise ConfigError(f"--resume: {out} was compressed with --method {name}; drop --method {fields['method']}")
    own = field_names(type(method))
    foreign = [n for n in given_options(ctx, METHOD_OPTIONS) if n not in own]
    if foreign:
        method_config({"name": name, **{n: fields[n] for n in foreign}})  # raises: an option of another method
    given = {n: fields[n] for n in given_options(ctx, own)}
    return _resumed_train(ctx, fields, saved.train), type(method).from_dict(method.to_dict() | given), out
