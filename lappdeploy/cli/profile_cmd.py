"""`lappdeploy profile`: a model's per-layer latency table on a runtime and device (docs/latency.md)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from lappdeploy.cli.common import ProgressBar, stdout_console
from lappdeploy.cli.model_source import model_from_name, model_source_options
from lappdeploy.errors import ConfigError

__all__ = ["profile_command"]


@click.command("profile")
@click.argument("model_name", metavar="MODEL")
@click.option("--runtime", type=click.Choice(["ort", "torch", "openvino", "trtexec"]), default="ort",
              show_default=True, help="ONNX Runtime, PyTorch or OpenVINO (CPU; --precision) here; trtexec: graphs "
              "and a script to time on the device.")  # fmt: skip
@click.option("--precision", type=click.Choice(["fp16", "fp32", "bf16", "int8"]), default=None,
              help="--runtime trtexec: the engines' precision (fp16 or fp32) [default: fp16]; --runtime openvino: "
                   "fp32, bf16 (a CPU with AMX or AVX-512 BF16) or int8 (the Q/DQ graph export writes) "
                   "[default: fp32]; other runtimes: fp32.")  # fmt: skip
@click.option("--ingest", type=click.Path(file_okay=False, exists=True), default=None,
              help="Read a --runtime trtexec directory timed on the device into a table (--out).")  # fmt: skip
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Batch size timed.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads (intra-op) of the runtime.")  # fmt: skip
@model_source_options()
@click.option("--points", type=click.IntRange(min=2), default=12, show_default=True,
              help="Most widths timed per layer dimension (narrow layers: every --step multiple).")  # fmt: skip
@click.option("--step", type=click.IntRange(min=1), default=8, show_default=True,
              help="Width spacing of the grid (channels): the --round-to the pruned widths will use.")  # fmt: skip
@click.option("--probe-steps/--no-probe-steps", default=True, show_default=True,
              help="Also time one conv per prunable group at every width of a window (the width steps "
                   "--round-to auto reads).")  # fmt: skip
@click.option("--out", "-o", type=click.Path(), default=None,
              help="Where to write the table (JSON) [default: the cache, reused when it holds it].")  # fmt: skip
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@click.option("--refresh", is_flag=True, help="Profile again even if the cache holds this profile.")
def profile_command(
    model_name: str,
    out: str | None,
    force: bool,
    refresh: bool,
    precision: str | None,
    ingest: str | None,
    **options,
) -> None:
    """Measure the latency of every conv and linear layer of MODEL (a registered name, timm:NAME or
    package.module:factory; latency does not depend on the weights) over a grid of
    (input width, output width) on --runtime / --device at --batch, then of the whole dense model and a few
    pruned ones, which fit the table's scale and remainder. The table budgets `lappdeploy compress
    --target-latency ... --latency-table FILE`.

    For a Jetson, `--runtime trtexec --out DIR` writes every profiling graph and `profile_trtexec.sh` into DIR;
    run the script on the board, copy DIR back and `--ingest DIR --out table.json` (docs/latency.md).

    \b
    Examples:
      lappdeploy profile resnet20 --dataset fashion-mnist --batch 8 --threads 2 --out tables/r20-ort-b8.json
      lappdeploy profile resnet50 --input-shape 3x224x224 --batch 1 --threads 2 --out tables/r50-b1.json
      lappdeploy profile resnet20 --dataset fashion-mnist --runtime trtexec --batch 1 --out r20-jetson/
      lappdeploy profile resnet20 --dataset fashion-mnist --ingest r20-jetson/ --out tables/r20-orin.json
    """
    from lappdeploy.latency.profile import cached_profile, check_precision, profile_model
    from lappdeploy.latency.trtexec_profile import check_trtexec_precision

    names = ("runtime", "device", "batch", "threads", "points", "step", "probe_steps")
    settings = {k: options.pop(k) for k in names}
    if out is not None and Path(out).exists() and not force:
        raise ConfigError(f"--out {out} exists; pass --force to overwrite it or choose another path")
    if ingest is not None and precision is not None:
        raise ConfigError("--ingest reads the precision the device timed from its manifest: drop --precision")
    if ingest is None and settings["runtime"] == "trtexec":
        check_trtexec_precision(precision or "fp16")
    elif ingest is None and precision not in (None, "fp32"):
        check_precision(settings["runtime"], precision)
    loaded, _ = model_from_name(model_name, **options)
    model, shape = loaded.model, tuple(loaded.card.input_shape)
    if ingest is not None or settings["runtime"] == "trtexec":
        _trtexec(model, model_name, shape, settings, precision or "fp16", ingest, out, force)
        return
    if precision not in (None, "fp32"):  # fp32 stays out of the settings: the cache keys of fp32 tables are kept
        settings["precision"] = precision
    with ProgressBar() as progress:
        if out is None:
            table, path, reused = cached_profile(
                model, shape, model_name=model_name, refresh=refresh, progress=progress, **settings
            )
        else:
            table = profile_model(model, shape, model_name=model_name, progress=progress, **settings)
            path, reused = table.save(out), False
    _print_summary(table, path, reused)


def _trtexec(model, model_name: str, shape, settings: dict, precision: str, ingest, out, force: bool) -> None:
    import shutil

    from lappdeploy.latency.trtexec_profile import SCRIPT, ingest_trtexec_profile, write_trtexec_profile

    if out is None:
        raise ConfigError("--runtime trtexec and --ingest need --out (a directory to write, or the table file)")
    if force and ingest is None and Path(out).exists():
        if Path(out, "times").is_dir() and any(Path(out, "times").iterdir()):
            raise ConfigError(
                f"--out {out} holds timings from the device; --force would delete them: choose another --out"
            )
        shutil.rmtree(out) if Path(out).is_dir() else Path(out).unlink()
    if ingest is not None:
        table = ingest_trtexec_profile(ingest, model)
        _print_summary(table, table.save(out), False)
        return
    manifest = write_trtexec_profile(
        model, shape, out, model_name=model_name, batch=settings["batch"], points=settings["points"],
        step=settings["step"], precision=precision, probe_steps=settings["probe_steps"],
    )  # fmt: skip
    graphs = len(list(Path(out, "graphs").glob("*.onnx")))
    console = stdout_console()
    console.print(f"wrote {graphs} graphs of {len(manifest['layers'])} layers and {out}/{SCRIPT}")
    console.print(f"on the device: bash {out}/{SCRIPT}; then: lappdeploy profile {model_name} ... --ingest {out}")


def _steps_summary(table) -> str:
    if not table.steps:
        return "none (--round-to auto needs them)"
    counts = Counter(probe["multiple"] for probe in table.steps.values())
    return f"{len(table.steps)}, " + ", ".join(f"{m}: {n}x" for m, n in sorted(counts.items()))


def _scales(table) -> str:
    """'0.812' or, where a layer kind was fitted apart, '0.812 (depthwise 0.455)'."""
    own = ", ".join(f"{kind} {scale:.3f}" for kind, scale in table.kind_scales.items())
    return f"{table.scale:.3f}" + (f" ({own})" if own else "")


def _print_summary(table, path: Path, reused: bool) -> None:
    from rich.table import Table

    console = stdout_console()
    summary = Table(title=f"latency table of {table.model}: {table.describe()}", title_justify="left")
    summary.add_column("")
    summary.add_column("", justify="right")
    rows = [
        ("layers", str(len(table.layers))),
        ("grid points timed", str(table.measurements)),
        ("dense model, measured (ms / batch)", f"{table.dense_ms:.4g}"),
        ("fit on whole models: scale, remainder (ms)", f"{_scales(table)}, {table.remainder_ms:+.4g}"),
        ("width steps probed: layers, multiples (channels)", _steps_summary(table)),
        ("profiling time (s)", f"{table.profile_s:.1f}" + (" (reused from the cache)" if reused else "")),
    ]
    for label, value in rows:
        summary.add_row(label, value)
    console.print(summary)
    console.print(f"table: {path}")
