"""Which timm families lappdeploy compresses: the smallest model of every timm family (module), at 64 px
(or the family's minimum), through channel analysis, a random plan keeping ~50% of every group, physical
removal checked against the masked dense model, analytic MACs against measured, and ONNX export with
ONNX Runtime parity. One subprocess per family (a family that hangs or crashes cannot stop the sweep).

    python benchmarks/timm_zoo.py --out benchmarks/results/timm_zoo          # every family, ~1 h on 2 cores
    python benchmarks/timm_zoo.py --families resnet,cspnet --out /tmp/zoo    # some

Writes OUT/timm_zoo.json (one record per family, atomically after each) and prints a table. Resumable: a
family already in the JSON is skipped unless --redo.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# families of timm's vision transformers, MLP-mixers and hybrids: attention or LayerNorm over channels
# everywhere (lappdeploy prunes convolution channels); swept too, to say what happens, but not the goal
TIMEOUT_S = 300
MEMORY_LIMIT = 6 * 2**30  # bytes of address space per family's process (efficientvim once took 15 GiB)


def smallest_models(family: str, count: int = 1) -> list[str]:
    """The `count` architectures of `family` with the fewest parameters (built on the meta device), test
    models (timm's `test_*`) left out."""
    import timm
    import torch

    sizes = []
    for name in timm.list_models(module=family):
        if name.startswith("test_"):
            continue
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, num_classes=10)
            sizes.append((sum(p.numel() for p in model.parameters()), name))
        except Exception:
            continue
    return [name for _, name in sorted(sizes)[:count]]


def _check_one(name: str, size: int) -> dict:
    """Run in a subprocess: every stage on one model; the first failure ends it with its stage and reason."""
    import copy
    import tempfile

    import timm
    import torch

    from lappdeploy.export import to_onnx
    from lappdeploy.models import count_macs
    from lappdeploy.surgery import ChannelMasker, analyze, fold_bn_, plan_cost, random_plan, remove_channels_
    from lappdeploy.testing import randomize_norms_

    record: dict = {"model": name, "size": size}
    stage = "build"
    try:
        torch.manual_seed(0)
        model = randomize_norms_(timm.create_model(name, pretrained=False, num_classes=10)).eval()
        record["params"] = sum(p.numel() for p in model.parameters())
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            dense = model(x)
        stage = "analyze"
        started = time.perf_counter()
        groups = analyze(model, x)
        record["analyze_s"] = round(time.perf_counter() - started, 2)
        record["groups"] = len(groups.groups)
        record["prunable"] = len(groups.prunable)
        excluded = sorted({g.excluded for g in groups.groups if g.excluded})
        record["excluded_reasons"] = excluded[:4]
        if not groups.prunable:
            raise RuntimeError("no prunable channel group")
        plan = random_plan(groups, 0.5, seed=2)
        with ChannelMasker(groups) as masker, torch.no_grad():
            masker.set(plan)
            masked = model(x)
        predicted = plan_cost(groups, plan)
        stage = "remove"
        remove_channels_(model, plan, x, groups=groups)
        with torch.no_grad():
            pruned = model(x)
        record["removal_error"] = float(((pruned - masked).abs().max() / masked.abs().max()).item())
        if not record["removal_error"] < 1e-4:
            raise RuntimeError(f"pruned logits differ from the masked model's by {record['removal_error']:.2e}")
        stage = "macs"
        deploy = fold_bn_(copy.deepcopy(model), x)
        measured = count_macs(deploy, (3, size, size))
        if measured.macs != predicted.macs:
            raise RuntimeError(f"analytic MACs {predicted.macs} != measured {measured.macs}")
        stage = "onnx"
        with tempfile.TemporaryDirectory() as tmp:
            export = to_onnx(model.eval(), x, Path(tmp) / "model.onnx")
        record["onnx_exporter"] = export.exporter
        record["onnx_parity"] = max(row["relative_error"] for row in export.parity)
        record["dense_logit_scale"] = float(dense.abs().max())
        record["status"] = "ok"
    except Exception as exc:
        record["status"] = "failed"
        record["stage"] = stage
        record["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"
    return record


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _run_family(family: str, size: int) -> dict:
    names = smallest_models(family)
    if not names:
        return {"family": family, "status": "failed", "stage": "build", "error": "no model builds"}
    started = time.perf_counter()
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import timm_zoo; " \
           f"print('RESULT ' + json.dumps(timm_zoo._check_one({names[0]!r}, {size})))"  # fmt: skip
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S, env=os.environ,
            preexec_fn=_limit_memory,
        )  # fmt: skip
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if lines:
            record = json.loads(lines[-1][len("RESULT ") :])
        else:
            tail = " ".join(done.stderr.split())[-300:]
            record = {"model": names[0], "status": "failed", "stage": "crash", "error": tail}
    except subprocess.TimeoutExpired:
        record = {"model": names[0], "status": "failed", "stage": "timeout", "error": f"over {TIMEOUT_S} s"}
    return {"family": family, **record, "wall_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="", help="comma-separated timm modules (default: all)")
    parser.add_argument("--size", type=int, default=64, help="input size in px")
    parser.add_argument("--out", default="benchmarks/results/timm_zoo")
    parser.add_argument("--redo", action="store_true", help="re-run families already in the JSON")
    args = parser.parse_args()
    import timm

    from lappdeploy.io import atomic_write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "timm_zoo.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    families = [f for f in args.families.split(",") if f] or timm.list_modules()
    for family in families:
        if family in results and not args.redo:
            continue
        record = _run_family(family, args.size)
        results[family] = record
        atomic_write_json(path, {"timm": timm.__version__, **results} if False else results)
        what = record.get("error", "")[:100]
        print(f"{family:28s} {record.get('model', '-'):32s} {record['status']:7s} {record.get('stage', ''):8s} "
              f"{record.get('wall_s', 0):6.1f}s {what}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
