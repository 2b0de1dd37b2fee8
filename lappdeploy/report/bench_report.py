"""Benchmark records -> comparisons, CSV and a Markdown table.

Speed-up is always measured latency against a reference measured under the same conditions (runtime,
provider, device, precision, batch, input shape): the dense model of the same architecture, preferably
from the same (interleaved) bench session. It is printed next to the MACs ratio, never replaced by it:
`efficiency` = speed-up x MACs ratio = measured speed-up / MACs reduction (1.0 = perfect scaling).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from lappdeploy.bench.records import BenchRecord
from lappdeploy.io import atomic_write_text
from lappdeploy.report.plots import latency_vs_macs_chart, speedup_vs_batch_chart
from lappdeploy.rundir import BENCH_REPORT_FILES, check_writable

__all__ = [
    "REPORT_FILES",
    "Comparison",
    "compare",
    "latest",
    "markdown_table",
    "write_bench_report",
    "write_csv",
]


@dataclass
class Comparison:
    record: BenchRecord
    reference: BenchRecord | None  # the dense record it is compared with
    speedup: float | None  # reference median latency / this median latency
    macs_ratio: float | None  # this MACs / reference MACs
    efficiency: float | None  # speedup x macs_ratio (1.0: latency fell exactly as much as the MACs)


def latest(records: list[BenchRecord]) -> list[BenchRecord]:
    """The newest record of each (label, plan, conditions), in first-seen order (bench.jsonl grows by
    appending, so re-running a bench replaces its earlier numbers in reports)."""
    newest: dict[tuple, BenchRecord] = {}
    for r in records:
        newest[(r.label, r.plan_id, r.key)] = r
    return list(newest.values())


def _reference(record: BenchRecord, records: list[BenchRecord]) -> BenchRecord | None:
    candidates = [r for r in records if r.is_dense and r.model == record.model and r.key == record.key]
    same_session = [r for r in candidates if r.session == record.session]
    pool = same_session or candidates
    return pool[-1] if pool else None


def compare(records: list[BenchRecord]) -> list[Comparison]:
    out = []
    for r in records:
        ref = _reference(r, records)
        if ref is None:
            out.append(Comparison(r, None, None, None, None))
            continue
        speedup = ref.latency_median_ms / r.latency_median_ms
        ratio = r.macs / ref.macs
        out.append(Comparison(r, ref, speedup, ratio, speedup * ratio))
    return out


_COLUMNS = (
    "label", "model", "method", "plan_id", "runtime", "provider", "device", "device_name", "precision", "batch",
    "threads", "macs", "params", "latency_median_ms", "latency_p90_ms", "latency_p99_ms", "latency_mean_ms",
    "latency_std_ms", "latency_min_ms", "host_latency_median_ms", "samples", "throughput_ips",
    "energy_mj_per_image", "power_w", "timing", "session", "created_at",
)  # fmt: skip


def write_csv(comparisons: list[Comparison], path: str | os.PathLike[str]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*_COLUMNS, "macs_ratio", "speedup", "efficiency", "reference"])
    for c in comparisons:
        row = c.record.to_dict()
        writer.writerow(
            [
                *(row[k] for k in _COLUMNS),
                c.macs_ratio,
                c.speedup,
                c.efficiency,
                c.reference.label if c.reference else "",
            ]
        )
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown_table(comparisons: list[Comparison]) -> str:
    header = (
        "| model | plan | runtime | device | precision | batch | MMACs | MACs ratio | median ms | p90 ms | "
        "p99 ms | img/s | speed-up | speed-up / MACs reduction | mJ/img |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for c in comparisons:
        r = c.record
        lines.append(
            "| "
            + " | ".join(
                [
                    r.model,
                    r.label + (" (dense)" if r.is_dense and "dense" not in r.label else ""),
                    f"{r.runtime} ({r.provider})",
                    r.device_name,
                    r.precision,
                    str(r.batch),
                    f"{r.macs / 1e6:.2f}",
                    _fmt(c.macs_ratio, ".3f"),
                    f"{r.latency_median_ms:.3f}",
                    f"{r.latency_p90_ms:.3f}",
                    f"{r.latency_p99_ms:.3f}",
                    f"{r.throughput_ips:.1f}",
                    _fmt(c.speedup, ".2f"),
                    _fmt(c.efficiency, ".2f"),
                    _fmt(r.energy_mj_per_image, ".2f"),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


REPORT_FILES = BENCH_REPORT_FILES  # the name this module has always exported


def write_bench_report(
    records: list[BenchRecord], out: str | os.PathLike[str], *, plots: bool = True
) -> tuple[list[Comparison], dict[str, Path]]:
    """CSV, Markdown table and plots of the newest record of each model/plan and condition, into `out`."""
    out = check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    comparisons = compare(latest(records))
    files = {"csv": write_csv(comparisons, out / BENCH_REPORT_FILES["csv"])}
    atomic_write_text(out / BENCH_REPORT_FILES["markdown"], markdown_table(comparisons))
    files["markdown"] = out / BENCH_REPORT_FILES["markdown"]
    if plots:
        files["latency_vs_macs"] = latency_vs_macs_chart(comparisons, out / BENCH_REPORT_FILES["latency_vs_macs"])
        files["speedup_vs_batch"] = speedup_vs_batch_chart(comparisons, out / BENCH_REPORT_FILES["speedup_vs_batch"])
    return comparisons, files
