"""Figures a person would rather look at than read: kept channels per group, a LAPP run's schedule,
and benchmark results (latency vs MACs, speed-up vs batch).

matplotlib is imported lazily (the `report` extra) with the non-interactive Agg backend; files are
written atomically (temporary file, then rename).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lappdeploy.io import atomic_open
from lappdeploy.optional import require

__all__ = [
    "keep_ratio_chart",
    "lapp_run_figure",
    "latency_vs_macs_chart",
    "pareto_front",
    "read_metrics",
    "speedup_vs_batch_chart",
]


def _pyplot():
    matplotlib = require("matplotlib", purpose="plotting")
    matplotlib.use("Agg")  # files only: no display needed, never opens a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike[str]) -> Path:
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format=Path(path).suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    return Path(path)


def keep_ratio_chart(layers: list[dict[str, Any]], path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Horizontal bars of kept / total channels per group (a report's `layers`), in network order."""
    plt = _pyplot()
    names = [layer["name"] for layer in layers]
    ratios = [layer["kept"] / layer["total"] for layer in layers]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(layers) + 1.2))
    try:
        bars = ax.barh(range(len(layers)), ratios, color="#4C72B0")
        for bar, layer in zip(bars, layers, strict=True):
            ax.text(
                bar.get_width() + 0.01,
                bar.get_y() + bar.get_height() / 2,
                f"{layer['kept']}/{layer['total']}",
                va="center",
                fontsize=7,
            )
        ax.set_yticks(range(len(layers)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.15)
        ax.set_xlabel("kept fraction of channels")
        ax.set_title(title or "kept channels per group")
        ax.grid(axis="x", alpha=0.3)
        return _save(fig, path)
    finally:
        plt.close(fig)


def read_metrics(run_dir: str | os.PathLike[str]) -> tuple[list[dict], list[dict]]:
    """(per-epoch records, per-step pruning records) of a run's metrics.jsonl."""
    epochs, steps = [], []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "type" not in record:
            epochs.append(record)
        elif record["type"] == "lapp":
            steps.append(record)
    return epochs, steps


def lapp_run_figure(run_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Three panels over (fractional) epochs: every group's threshold, deploy MACs vs the budget, and
    validation top-1."""
    plt = _pyplot()
    epochs, steps = read_metrics(run_dir)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    try:
        thresholds_ax, macs_ax, accuracy_ax = axes
        if steps:
            x = [s["epoch"] for s in steps]
            for gid in steps[0]["thresholds"]:
                thresholds_ax.plot(x, [s["thresholds"][gid] for s in steps], linewidth=1, label=gid)
            if len(steps[0]["thresholds"]) <= 14:
                thresholds_ax.legend(fontsize=6, ncol=2)
            macs_ax.plot(x, [s["budget"] for s in steps], "--", color="black", label="budget")
            macs_ax.plot(x, [s["macs"] for s in steps], color="#C44E52", label="MACs of the masked model")
        compact = [e for e in epochs if e.get("pruned")]
        if compact:
            macs_ax.plot(
                [e["epoch"] for e in compact],
                [e["macs_ratio"] for e in compact],
                "o",
                color="#C44E52",
                label="MACs after removal",
            )
        thresholds_ax.set_title("per-group thresholds")
        thresholds_ax.set_xlabel("epoch")
        macs_ax.set_title("deploy MACs / dense")
        macs_ax.set_xlabel("epoch")
        macs_ax.set_ylim(0, 1.05)
        macs_ax.legend(fontsize=8)
        if epochs and "val_top1" in epochs[0]:
            accuracy_ax.plot([e["epoch"] for e in epochs], [100 * e["val_top1"] for e in epochs], "o-")
        accuracy_ax.set_title("validation top-1 (%)")
        accuracy_ax.set_xlabel("epoch")
        for ax in axes:
            ax.grid(alpha=0.3)
        fig.suptitle(str(run_dir))
        return _save(fig, path)
    finally:
        plt.close(fig)


def _panels(comparisons, by) -> dict[tuple, list]:
    panels: dict[tuple, list] = {}
    for c in comparisons:
        panels.setdefault(by(c.record), []).append(c)
    return panels


def _condition(r) -> str:
    return f"{r.runtime} {r.provider} {r.precision} on {r.device_name}"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (MACs, latency) points that no other point beats with both more MACs (the capacity kept) and
    less latency: the best latency each MACs level can buy. Ordered by increasing latency (and MACs)."""
    front: list[tuple[float, float]] = []
    for macs, latency in sorted(points, key=lambda p: (p[1], -p[0])):
        if not front or macs > front[-1][0]:
            front.append((macs, latency))
    return front


def latency_vs_macs_chart(comparisons, path: str | os.PathLike[str]) -> Path:
    """Median latency against MACs per image, one panel per (runtime, precision, device, batch), one point
    per model/plan: dense models as stars, each architecture's Pareto front as a step line, and the ideal
    'latency proportional to MACs' line through its dense point for reference. Log-log axes."""
    plt = _pyplot()
    panels = _panels(comparisons, lambda r: (_condition(r), r.batch))
    keys = sorted(panels, key=lambda k: (k[0], k[1]))
    columns = min(3, len(keys))
    rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.2 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes.flat, keys, strict=False):
        models = sorted({c.record.model for c in panels[key]})
        for index, model in enumerate(models):
            color = colors[index % len(colors)]
            group = [c.record for c in panels[key] if c.record.model == model]
            points = [(r.macs / 1e9, r.latency_median_ms) for r in group]
            pruned = [p for p, r in zip(points, group, strict=True) if not r.is_dense]
            dense = [p for p, r in zip(points, group, strict=True) if r.is_dense]
            if pruned:
                ax.scatter(*zip(*pruned, strict=True), color=color, s=22, label=model, zorder=3)
            if dense:
                ax.scatter(*zip(*dense, strict=True), color=color, marker="*", s=160, edgecolor="black",
                           zorder=4, label=f"{model} dense" if not pruned else None)  # fmt: skip
                d_macs, d_latency = dense[-1]
                low = min(p[0] for p in points)
                ax.plot([low, d_macs], [d_latency * low / d_macs, d_latency], color=color, linestyle=":",
                        linewidth=1, zorder=1)  # fmt: skip
            front = pareto_front(points)
            if len(front) > 1:
                ax.plot(*zip(*front, strict=True), color=color, alpha=0.6, linewidth=1.2, zorder=2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{key[0]}, batch {key[1]}", fontsize=8)
        ax.set_xlabel("GMACs per image")
        ax.set_ylabel("median latency per batch (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(
        "latency vs MACs (star: dense; dotted: latency proportional to MACs; line: Pareto front, the most MACs "
        "for the latency)",
        fontsize=9,
    )
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def speedup_vs_batch_chart(comparisons, path: str | os.PathLike[str]) -> Path:
    """Measured speed-up over the dense model against batch size, one line per pruned model/plan; dashed
    in the same colour: the speed-up its MACs reduction would give if latency scaled perfectly."""
    plt = _pyplot()
    usable = [c for c in comparisons if c.speedup is not None and not c.record.is_dense]
    panels = _panels(usable, _condition)
    keys = sorted(panels) or ["no pruned model with a dense reference"]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes.flat, keys, strict=True):
        lines: dict[str, list] = {}
        for c in panels.get(key, []):
            lines.setdefault(f"{c.record.model}: {c.record.label}", []).append(c)
        for index, (name, group) in enumerate(sorted(lines.items())):
            color = colors[index % len(colors)]
            group.sort(key=lambda c: c.record.batch)
            batches = [c.record.batch for c in group]
            ratio = group[-1].macs_ratio
            ax.plot(batches, [c.speedup for c in group], marker="o", color=color, label=f"{name} (MACs {ratio:.2f})")
            ax.plot(batches, [1 / c.macs_ratio for c in group], linestyle="--", color=color, linewidth=1)
        ax.axhline(1.0, color="gray", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_title(str(key), fontsize=8)
        ax.set_xlabel("batch size")
        ax.set_ylabel("speed-up over dense (median latency)")
        ax.grid(True, alpha=0.3)
        if lines:
            ax.legend(fontsize=7)
    fig.suptitle("measured speed-up vs batch (dashed: ideal = 1 / MACs ratio)", fontsize=9)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out
