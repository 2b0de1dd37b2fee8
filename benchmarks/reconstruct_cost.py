"""Wall time and peak memory of `--reconstruct MODE` (every mode) on full-size networks (docs/ldrf.md#cost).

A network at its input size (random weights; BatchNorm statistics re-estimated on the calibration images so
activations have a trained network's scale), a uniform plan at --target of the dense MACs, the channels
removed, then the layers reading removed channels refitted on --calib-images images with --calib-positions
positions each. Timed from the frozen copy of the network to the last refit, as `report.json` records it;
the peak resident memory is the process's during that stretch (reset at its start on Linux), so it includes
the model, its frozen copy and the calibration images. Targets (2-core CPU): resnet50 at 224 px with 512
images x 10 positions under 10 min and 6 GiB.

    python benchmarks/reconstruct_cost.py
    python benchmarks/reconstruct_cost.py --models resnet20:1x28 --modes ls,ldrf
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lappdeploy.environment import write_benchmark
from lappdeploy.methods.common import frozen_copy, recalibrate_bn_
from lappdeploy.methods.reconstruct import ReconstructionSettings, ResourceMeter, reconstruct_
from lappdeploy.models import create_model
from lappdeploy.surgery import analyze, remove_channels_, uniform_plan

RESULTS = Path(__file__).with_name("results")


def _model(spec: str) -> tuple[str, torch.nn.Module, tuple[int, int, int]]:
    """`name:CxS` (e.g. resnet50:3x224) -> (name, model, input shape)."""
    name, _, shape = spec.partition(":")
    channels, size = (int(v) for v in (shape or "3x224").split("x"))
    classes = 1000 if size >= 64 else 10
    return name, create_model(name, num_classes=classes, in_channels=channels), (channels, size, size)


def measure(spec: str, mode: str, args) -> dict:
    torch.manual_seed(0)
    name, model, shape = _model(spec)
    images = torch.randn(args.calib_images, *shape)
    recalibrate_bn_(model, images[:128].split(32))  # running statistics of these images: activations at scale
    model.eval()
    example = images[:1]
    groups = analyze(model, example)
    plan = uniform_plan(groups, args.target)
    # NAME+relu: the fit after the BatchNorm and ReLU that follow a layer (--reconstruct-relu)
    settings = ReconstructionSettings(
        mode=mode.removesuffix("+relu"), positions=args.calib_positions, relu=mode.endswith("+relu")
    )
    meter = ResourceMeter()
    teacher = frozen_copy(model)
    remove_channels_(model, plan, example, groups=groups)
    record = meter.stop(reconstruct_(teacher, model, groups, plan, images, settings))
    row = {
        "model": name,
        "input": list(shape),
        "mode": mode,
        "target_macs": args.target,
        "calib_images": args.calib_images,
        "calib_positions": args.calib_positions,
        "refitted": len(record.fitted),
        "skipped": len(record.skipped),
        "wall_s": record.seconds,
        "peak_rss_mb": record.peak_rss_mb,
        "peak_rss_scope": record.peak_rss_scope,
        "resumed_passes": record.resumed_passes,  # the pruned network's passes ran from cached activations
    }
    print(
        f"{name:12s} {'x'.join(map(str, shape)):>9s} {mode:15s} refitted {row['refitted']:3d} "
        f"skipped {row['skipped']:3d}  {row['wall_s']:8.1f} s  peak RSS {row['peak_rss_mb']:8.0f} MB"
        f"{'  resumed passes' if row['resumed_passes'] else ''}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet50:3x224", help="name:CxS, comma-separated")
    parser.add_argument(
        "--modes",
        default="ls,ldrf",
        help="of ls, ldrf, ldrf-patch, ldrf-joint, ls-joint; NAME+relu: --reconstruct-relu",
    )
    parser.add_argument("--target", type=float, default=0.5, help="uniform plan's MACs, fraction of dense")
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--calib-positions", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=RESULTS / "reconstruct_cost.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(spec, mode, args) for spec in args.models.split(",") for mode in args.modes.split(",")]
    write_benchmark("reconstruct_cost", rows, args.out, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
