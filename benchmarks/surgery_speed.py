"""Wall time of surgery on full-size networks: dependency-graph build (analyze), channel removal by a
uniform 50%-MACs plan, and BN folding, on the CPU at 224x224 (target: under 10 s each per network); and what
the removal's self-check costs (the pruned model's outputs against the masked dense model's on the example
inputs): the same removal timed on a copy without it.

    python benchmarks/surgery_speed.py
    python benchmarks/surgery_speed.py --models resnet50,mobilenet_v2,densenet121 --size 224
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from lappdeploy.environment import write_benchmark
from lappdeploy.models import count_macs, create_model
from lappdeploy.surgery import ChannelPlan, analyze, fold_bn_, plan_cost, remove_channels_, uniform_plan


def measure(name: str, size: int, macs_ratio: float) -> dict:
    torch.manual_seed(0)
    model = create_model(name, num_classes=1000).eval()
    x = torch.randn(1, 3, size, size)
    unchecked = copy.deepcopy(model)
    t0 = time.perf_counter()
    groups = analyze(model, x)
    t1 = time.perf_counter()
    plan = uniform_plan(groups, macs_ratio)
    t2 = time.perf_counter()
    remove_channels_(model, plan, x, groups=groups)
    t3 = time.perf_counter()
    unchecked_groups = analyze(unchecked, x)
    started = time.perf_counter()
    remove_channels_(unchecked, plan, x, groups=unchecked_groups, verify=False)
    unchecked_s = time.perf_counter() - started
    fold_bn_(model, x)
    t4 = time.perf_counter()
    measured = count_macs(model, (3, size, size)).macs
    dense = plan_cost(groups, ChannelPlan()).macs
    assert measured == plan_cost(groups, plan).macs, "analytic and measured MACs disagree"
    return {
        "model": name,
        "input": [3, size, size],
        "groups": len(groups.prunable),
        "graph_s": round(t1 - t0, 3),
        "plan_s": round(t2 - t1, 3),
        "remove_s": round(t3 - t2, 3),
        "remove_unchecked_s": round(unchecked_s, 3),
        "check_s": round(t3 - t2 - unchecked_s, 3),
        "fold_s": round(t4 - t3, 3),
        "total_s": round(t4 - t0 - (t2 - t1), 3),  # graph + removal + fold (the plan is the method's work)
        "dense_macs": dense,
        "pruned_macs": measured,
        "macs_ratio": round(measured / dense, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet50,mobilenet_v2")
    parser.add_argument("--size", type=int, default=224, help="input height and width (px)")
    parser.add_argument("--macs-ratio", type=float, default=0.5)
    parser.add_argument("--out", default="benchmarks/results/surgery_speed.json")
    args = parser.parse_args()

    from rich.table import Table

    from lappdeploy.cli.common import stdout_console

    rows = [measure(name, args.size, args.macs_ratio) for name in args.models.split(",")]
    title = f"surgery wall time on the CPU, {args.size}x{args.size}, uniform plan at {args.macs_ratio} MACs"
    table = Table(title=title)
    table.add_column("model")
    columns = ("groups", "graph s", "removal s", "of it: check s", "fold s", "total s", "dense GMACs", "pruned GMACs")
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["model"],
            str(r["groups"]),
            f"{r['graph_s']:.2f}",
            f"{r['remove_s']:.2f}",
            f"{r['check_s']:.2f}",
            f"{r['fold_s']:.2f}",
            f"{r['total_s']:.2f}",
            f"{r['dense_macs'] / 1e9:.3f}",
            f"{r['pruned_macs'] / 1e9:.3f}",
        )
    stdout_console().print(table)
    write_benchmark("surgery_speed", rows, args.out)


if __name__ == "__main__":
    main()
