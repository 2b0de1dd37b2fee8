"""The user's-model path, measured: a state dict trained by a plain PyTorch script (train_plain.py) is
evaluated, compressed by lappdeploy after training to --target of its MACs with each method and fine-tuned
--epochs, exported, and benched against the dense model on ONNX Runtime CPU, all through the CLI a user runs.

    python benchmarks/own_model/compress_own.py --model resnet18 --weights r18_fmnist.pth --methods uniform,pcp
    python benchmarks/own_model/compress_own.py --model timm:efficientnet_b0 --weights effb0.pth --methods uniform
    python benchmarks/own_model/compress_own.py ... --methods uniform[lr=0.1],uniform[lr=0.001]   # other settings

Every run holds --holdout training images out (the same split for every run; pcp decides on them, and every run
logs their top-1 for choosing settings); the test split gives only the reported top-1. Runs whose report.json
exists are reused, so the script can be stopped and started again. Writes OUT/own_model.json and OUT/summary.md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from lappdeploy.io import atomic_write_json, atomic_write_text, read_json

DATA = ["--dataset", "fashion-mnist"]


def lappdeploy(*args, log: Path) -> None:
    """Run the CLI as a user would; its output goes to `log`; a failure stops the benchmark."""
    with open(log, "a") as handle:
        handle.write(f"$ lappdeploy {' '.join(map(str, args))}\n")
        handle.flush()
        done = subprocess.run([sys.executable, "-m", "lappdeploy", *map(str, args)], stdout=handle, stderr=handle)
    if done.returncode != 0:
        raise SystemExit(f"lappdeploy {args[0]} failed (exit {done.returncode}); see {log}")


def parse_methods(text: str) -> list[tuple[str, str, dict[str, str]]]:
    """'uniform,uniform[lr=0.1]' -> [(label, method, {option: value})]."""
    out = []
    for item in re.findall(r"[\w-]+(?:\[[^\]]*\])?", text):
        name, _, rest = item.partition("[")
        options = dict(kv.split("=", 1) for kv in rest.rstrip("]").split(",") if kv)
        out.append((item.replace("[", "-").replace("]", "").replace("=", "").replace(",", "-"), name, options))
    return out


def compress(args, label: str, method: str, options: dict[str, str], log: Path) -> Path:
    out = args.out / "runs" / label
    if (out / "report.json").is_file():
        return out
    flags = [f"--{k.replace('_', '-')}" if v == "" else f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    schedule = ["--prune-epochs", "1"] if method in ("lapp", "laasp") else ["--prune-epochs", "0"]
    if method in ("pcp", "laasp"):
        schedule += ["--prune-span", "1"]
    lappdeploy("compress", "--model", args.model, "--init-from", args.weights, *DATA, "--method", method,
               "--target-macs", args.target, *schedule, "--epochs", args.epochs, "--holdout", args.holdout,
               "--seed", args.seed, *flags, "--out", out, "--force", log=log)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="--model spec of the weights, e.g. resnet18")
    parser.add_argument("--weights", required=True, type=Path, help="the state dict train_plain.py saved")
    parser.add_argument("--methods", default="uniform,pcp")
    parser.add_argument("--target", default="0.5", help="--target-macs")
    parser.add_argument("--epochs", default="2", help="fine-tuning epochs")
    parser.add_argument("--holdout", default="5000")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--threads", default="1", help="ONNX Runtime CPU threads of the bench")
    parser.add_argument("--min-seconds", default="10")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "commands.log"
    dense = args.out / "runs" / "dense"
    if not (dense / "report.json").is_file():  # the starting point, evaluated without training
        lappdeploy("train", "--model", args.model, "--init-from", args.weights, *DATA, "--epochs", "0",
                   "--out", dense, "--force", log=log)  # fmt: skip
    runs = {
        label: compress(args, label, method, options, log) for label, method, options in parse_methods(args.methods)
    }
    for run in [dense, *runs.values()]:
        if not (run / "export" / "export.json").is_file():
            lappdeploy("export", run, "--force", log=log)
    bench = args.out / "bench"
    lappdeploy("bench", dense, *runs.values(), "--runtime", "ort", "--device", "cpu", "--batch", "1,8", "--threads",
               args.threads, "--min-seconds", args.min_seconds, "--out", bench, log=log)  # fmt: skip
    rows = summarise(dense, runs, bench)
    table = markdown(rows)
    print(table)
    atomic_write_json(args.out / "own_model.json", {"model": args.model, "weights": str(args.weights), "rows": rows})
    atomic_write_text(args.out / "summary.md", table)


def summarise(dense: Path, runs: dict[str, Path], bench: Path) -> list[dict]:
    records = [json.loads(line) for line in (bench / "bench.jsonl").read_text().splitlines()]
    session = records[-1]["session"]
    latency = {(Path(r["source"]).name, r["batch"]): r["latency_median_ms"] for r in records if r["session"] == session}
    base = read_json(dense / "report.json")
    rows = []
    for label, run in [("dense (your weights)", dense), *runs.items()]:
        report = read_json(run / "report.json")
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        epochs = [m for m in metrics if "val_top1" in m]
        rows.append({
            "run": label,
            "top1": report["top1"],
            "top1_after_first_epoch": epochs[0]["val_top1"] if len(epochs) > 1 else None,
            "holdout_top1": epochs[-1].get("holdout_top1"),
            "macs_ratio": report.get("macs_ratio", 1.0),
            "macs": report["macs"],
            "params": report["params"],
            "ms_b1": latency.get((run.name, 1)),
            "ms_b8": latency.get((run.name, 8)),
            "speedup_b1": latency.get((dense.name, 1)) / latency[(run.name, 1)] if (run.name, 1) in latency else None,
            "speedup_b8": latency.get((dense.name, 8)) / latency[(run.name, 8)] if (run.name, 8) in latency else None,
            "wall_s": report["wall_s"],
            "dense_top1": base["top1"],
        })  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| run | test top-1 % | held-out top-1 % | MACs / dense | params | ORT CPU ms b1 / b8 | speed-up b1 / b8 | "
        "fine-tuning wall min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms = f"{r['ms_b1']:.3f} / {r['ms_b8']:.3f}" if r["ms_b1"] else ""
        speed = f"{r['speedup_b1']:.2f}x / {r['speedup_b8']:.2f}x" if r["speedup_b1"] else ""
        held = f"{100 * r['holdout_top1']:.2f}" if r["holdout_top1"] is not None else ""
        lines.append(f"| {r['run']} | {100 * r['top1']:.2f} | {held} | {r['macs_ratio']:.3f} | "
                     f"{r['params'] / 1e6:.2f}M | {ms} | {speed} | {r['wall_s'] / 60:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
