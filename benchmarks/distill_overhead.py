"""What distillation costs per training step: the teacher's forward pass (eval mode, torch.inference_mode) against
a whole training step of the student (forward, backward, SGD), the two timed interleaved on the same batch, for a
same-size teacher (the dense model teaching its own architecture) and for the dense model teaching a pruned
student (0.5 of the MACs, uniform).

    python benchmarks/distill_overhead.py                           # ResNet-20, 28 px, batch 128
    python benchmarks/distill_overhead.py --model resnet56 --threads 2

The target: for a same-size teacher, its forward pass under 35% of a training step. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from lappdeploy.environment import write_benchmark
from lappdeploy.models import create_model
from lappdeploy.surgery import analyze, remove_channels_, uniform_plan


def _step(model, optimizer, images, labels) -> float:
    started = time.perf_counter()
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - started


def _teacher(teacher, images) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        teacher(images)
    return time.perf_counter() - started


def measure(args, student_keep: float | None) -> dict:
    torch.manual_seed(0)
    shape = (1, args.size, args.size)
    teacher = create_model(args.model, num_classes=10, in_channels=1).eval().to(memory_format=torch.channels_last)
    student = copy.deepcopy(teacher).train()
    if student_keep is not None:
        groups = analyze(student, torch.zeros((2, *shape)))
        remove_channels_(student, uniform_plan(groups, student_keep), torch.zeros((2, *shape)), groups=groups)
    student = student.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    images = torch.randn(args.batch, *shape).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.batch,))
    steps, forwards = [], []
    for index in range(args.rounds + 3):  # interleaved; the first 3 rounds warm up
        step, forward = _step(student, optimizer, images, labels), _teacher(teacher, images)
        if index >= 3:
            steps.append(step)
            forwards.append(forward)
    step_ms, teacher_ms = 1e3 * statistics.median(steps), 1e3 * statistics.median(forwards)
    return {
        "model": args.model,
        "student": "same size" if student_keep is None else f"uniform {student_keep} of the widths",
        "batch": args.batch,
        "step_ms": round(step_ms, 2),
        "teacher_ms": round(teacher_ms, 2),
        "teacher_vs_step": round(teacher_ms / step_ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/distill_overhead.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(args, None), measure(args, 0.7)]
    for row in rows:
        print(f"{row['model']} {row['student']:>24}: step {row['step_ms']:.1f} ms, teacher forward "
              f"{row['teacher_ms']:.1f} ms, {100 * row['teacher_vs_step']:.0f}% of a step")  # fmt: skip
    write_benchmark("distill_overhead", rows, args.out, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
