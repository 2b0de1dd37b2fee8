"""`lappdeploy bench` (time models, interleaved) and `lappdeploy report` (tables and plots of records)."""

from __future__ import annotations

from pathlib import Path

import click

from lappdeploy.cli.common import (
    ProgressBar,
    config_file_option,
    dataclass_options,
    format_count,
    stdout_console,
)
from lappdeploy.cli.model_source import SOURCE_OPTIONS, model_from_name, model_source_options
from lappdeploy.config import BenchConfig
from lappdeploy.errors import LappDeployError

__all__ = ["bench_command", "print_comparisons", "report_command"]


@click.command("bench")
@click.argument("runs", nargs=-1, type=click.Path())
@config_file_option
@dataclass_options(BenchConfig)
@model_source_options(model_option=True)
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    default=None,
    help="Bench directory: records are appended to OUT/bench.jsonl, the report rewritten [default: FIRST_RUN/bench].",
)
@click.option("--plot/--no-plot", default=True, show_default=True, help="Draw the report's plots.")
def bench_command(runs: tuple[str, ...], out: str | None, plot: bool, model_name: str | None, **fields) -> None:
    """Measure the real latency of the models of RUNS (run directories, model.pt checkpoints or export
    directories), and of a dense model given with --model (no run needed: your starting point), and compare
    it with their MACs.

    Several RUNS are timed interleaved (round-robin chunks, rotating order) so machine drift hits all
    alike; each batch size starts with a warm-up by time; sampling stops when every model has both
    --min-samples calls and --min-seconds of them. The table shows median/p90 latency, throughput with
    the pipeline full, and the measured speed-up over the dense model next to the MACs ratio.

    \b
    Examples:
      lappdeploy bench runs/r20-lapp --vs-dense                       # ONNX Runtime, CPU
      lappdeploy bench runs/dense runs/lapp50 runs/lapp30 --runtime torch --device cuda --batch 1,8,32
      lappdeploy bench runs/r20-lapp --runtime trt --precision fp16 --vs-dense
      lappdeploy bench jetson-export/ --runtime trtexec --precision fp16   # after trtexec.sh on the Jetson
      lappdeploy bench runs/r18-uniform --model resnet18 --init-from r18.pth --dataset fashion-mnist
    """
    # library modules load lazily so `lappdeploy --help` and the other commands start without torch
    from lappdeploy.bench.records import BENCH_FILE, read_records
    from lappdeploy.bench.run import bench_runs
    from lappdeploy.bench.targets import model_target
    from lappdeploy.report.bench_report import write_bench_report

    source = {name: fields.pop(name) for name in SOURCE_OPTIONS}
    config = BenchConfig(**fields)
    models = []
    if model_name is not None:
        models.append(model_target(model_name, model_from_name(model_name, **source)[0]))
    elif any(value not in (None, False) for value in source.values()):
        raise LappDeployError("--init-from, --dataset and the other model options describe a model given with --model")
    with ProgressBar() as progress:
        records, out_dir = bench_runs(list(runs), config, out=out, progress=progress, models=models)
    comparisons, files = write_bench_report(read_records(out_dir), out_dir, plots=plot)
    fresh = [c for c in comparisons if records and c.record.session == records[0].session]
    print_comparisons(fresh, title=f"{config.runtime} on {records[0].device_name}" if records else "")
    console = stdout_console()
    console.print(f"records: {out_dir / BENCH_FILE}")
    for name in ("markdown", "csv", "latency_vs_macs", "speedup_vs_batch"):
        if name in files:
            console.print(f"{name.replace('_', ' ')}: {files[name]}")


def print_comparisons(comparisons, *, title: str = "") -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("model / plan", "batch", "MACs", "MACs ratio", "median ms", "p90 ms", "img/s", "speed-up"):
        table.add_column(column, justify="left" if column == "model / plan" else "right")
    table.add_column("speed-up / MACs reduction", justify="right")
    for c in sorted(comparisons, key=lambda c: (c.record.batch, c.record.order)):
        r = c.record
        table.add_row(
            r.label,
            str(r.batch),
            format_count(r.macs),
            "" if c.macs_ratio is None else f"{c.macs_ratio:.3f}",
            f"{r.latency_median_ms:.3f}",
            f"{r.latency_p90_ms:.3f}",
            f"{r.throughput_ips:.1f}",
            "" if c.speedup is None else f"{c.speedup:.2f}x",
            "" if c.efficiency is None else f"{c.efficiency:.2f}",
        )
    stdout_console().print(table)


@click.command("report")
@click.argument("bench_dirs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the CSV, Markdown and plots go [default: the first BENCH_DIR].",
)
@click.option("--plot/--no-plot", default=True, show_default=True, help="Draw the plots.")
def report_command(bench_dirs: tuple[str, ...], out: str | None, plot: bool) -> None:
    """Tables and plots of the records in BENCH_DIRS (directories holding bench.jsonl, or the files):
    bench.csv, bench.md, latency_vs_macs.png and speedup_vs_batch.png. Each model/plan and condition is
    shown with its newest record; speed-ups are against the dense model under the same conditions.

    \b
    Examples:
      lappdeploy report runs/demo/bench
      lappdeploy report desktop/bench jetson/bench --out reports/all
    """
    from lappdeploy.bench.records import read_records
    from lappdeploy.report.bench_report import write_bench_report

    records = [r for d in bench_dirs for r in read_records(d)]
    first = Path(bench_dirs[0])
    out_dir = Path(out) if out else (first if first.is_dir() else first.parent)
    comparisons, files = write_bench_report(records, out_dir, plots=plot)
    print_comparisons(comparisons, title=f"{len(records)} records from {', '.join(bench_dirs)}")
    for name, path in files.items():
        stdout_console().print(f"{name.replace('_', ' ')}: {path}")
