"""Training throughput (images/s) of ResNet-20 and ResNet-56 on Fashion-MNIST, fp32 vs channels_last.

Measures steady-state training steps (batched augmentation on the device, forward, backward, SGD
step) on real Fashion-MNIST batches after a warm-up, prints a table and writes JSON.

    python benchmarks/train_throughput.py                       # CPU (or CUDA when available)
    python benchmarks/train_throughput.py --device cuda --amp   # adds bf16 autocast rows
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lappdeploy.data import DataRequest, DeviceLoader, create_dataset
from lappdeploy.environment import write_benchmark
from lappdeploy.models import create_model
from lappdeploy.train import resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model_name: str, *, bundle, device, batch_size, channels_last, amp, warmup_steps, min_steps, min_seconds):
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=bundle.info.num_classes, in_channels=bundle.info.in_channels).to(
        device
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loader = DeviceLoader(
        bundle.train, batch_size=batch_size, train=True, batch_transform=bundle.train_batch_transform, device=device
    )
    batches = iter(loader)
    step_s: list[float] = []  # seconds per step, after warm-up
    started = None
    step = 0
    model.train()
    while True:
        try:
            images, labels = next(batches)
        except StopIteration:
            loader.set_epoch(step)
            batches = iter(loader)
            images, labels = next(batches)
        t0 = time.perf_counter()
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        step += 1
        if step > warmup_steps:
            step_s.append(time.perf_counter() - t0)
            started = started or t0
            if len(step_s) >= min_steps and time.perf_counter() - started >= min_seconds:
                break
    total = sum(step_s)
    return {
        "model": model_name,
        "memory_format": "channels_last" if channels_last else "contiguous",
        "precision": "bf16-autocast" if amp else "fp32",
        "batch_size": batch_size,
        "steps": len(step_s),
        "images_per_s": round(batch_size * len(step_s) / total, 1),
        "step_ms_median": round(1000 * statistics.median(step_s), 2),
        "step_ms_p90": round(1000 * statistics.quantiles(step_s, n=10)[-1], 2),
        "epoch_s_estimate": round(len(bundle.train) / (batch_size * len(step_s) / total), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet20,resnet56")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--amp", action="store_true", help="also measure bf16 autocast")
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--min-steps", type=int, default=30)
    parser.add_argument("--min-seconds", type=float, default=10.0)
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args()

    from rich.table import Table

    from lappdeploy.cli.common import stdout_console

    device = resolve_device(args.device)
    bundle = create_dataset(args.dataset, DataRequest(data_dir=args.data_dir))
    rows = []
    for name in args.models.split(","):
        for channels_last in (False, True):
            for amp in (False, True) if args.amp else (False,):
                row = measure(
                    name,
                    bundle=bundle,
                    device=device,
                    batch_size=args.batch_size,
                    channels_last=channels_last,
                    amp=amp,
                    warmup_steps=args.warmup_steps,
                    min_steps=args.min_steps,
                    min_seconds=args.min_seconds,
                )
                rows.append(row)
                print(
                    f"{name:10s} {row['memory_format']:13s} {row['precision']:13s} {row['images_per_s']:8.1f} img/s",
                    flush=True,
                )

    table = Table(title=f"training throughput on {args.dataset}, batch {args.batch_size}, {device}")
    for column in ("model", "memory format", "precision"):
        table.add_column(column)
    for column in ("img/s", "step ms (p50)", "step ms (p90)", "epoch s (est.)"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["model"],
            r["memory_format"],
            r["precision"],
            f"{r['images_per_s']:.0f}",
            f"{r['step_ms_median']:.1f}",
            f"{r['step_ms_p90']:.1f}",
            f"{r['epoch_s_estimate']:.0f}",
        )
    stdout_console().print(table)

    write_benchmark("train_throughput", rows, args.out, device=device, dataset=args.dataset)


if __name__ == "__main__":
    main()
