"""Figures a person would rather look at than read: kept channels per group, and a LAPP run's schedule.

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

__all__ = ["keep_ratio_chart", "lapp_run_figure", "read_metrics"]


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
