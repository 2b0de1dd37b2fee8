"""Calibration passes over the calibration images, in eval mode without gradients.

A layer's inputs are sampled at a few positions per image (k x k patches around output positions for `ls`
on a conv, input pixels otherwise); the positions depend only on (seed, layer, batch), so the original and
the pruned network are sampled at the same places. The original network runs once for all layers and keeps
each refitted layer's targets at those positions, all of them until each layer is solved (the caller drops a
layer's targets after its solve): images x positions x (outputs for `ls`, rank d for `ldrf`) x 4 bytes
(float32; 8 for a float64 model), summed over the refitted layers. ResNet-50 with every in-block layer
refitted, 512 images x 10 positions: per bottleneck of width w (summing to 3776 over its 16 blocks) the 3x3
conv has w outputs and the last 1x1 4w, and d is at most a layer's w inputs, so at most 5 x 3776 x 5120 x 4
bytes ~ 390 MB for `ls` and 2 x 3776 x 5120 x 4 bytes ~ 155 MB for `ldrf`. The pruned network runs one to
three times per layer (its samples; the output offset; ldrf-joint's producer samples), each pass stopped as
soon as that layer has its input and started from the values cached at the cut where the network traces
(passes.py: up to ReconstructionSettings.cache_bytes, 2 GiB, for all images); its samples go straight into Gram
matrices (X^T X, X^T Y in float64): none of its activations beyond the cut's outlives its batch. The fits that
iterate keep their samples for one layer at a time (float64): the ReLU fits images x positions x unknowns, the
joint modes the producer's patches too, images x positions x (producer unknowns + 1), k x k times that for
ls-joint (a 3x3 layer: 9 rows per position, fewer at borders).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lappdeploy.data import epoch_seed
from lappdeploy.errors import SurgeryError
from lappdeploy.methods.reconstruct.passes import StopForward, StudentPasses, evaluating

__all__ = [
    "Statistics",
    "Target",
    "conv_patches_at",
    "output_size",
    "sample_rows",
    "sampled_outputs",
    "student_statistics",
    "teacher_targets",
]


def _positions(available: int, images: int, count: int, seed: int, device: torch.device) -> torch.Tensor:
    """(images, min(count, available)) distinct positions per image, reproducible from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(images, available, generator=generator)
    return scores.topk(min(count, available), dim=1).indices.to(device)


def _conv_patches(conv: nn.Conv2d, x: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """The k x k input patches behind `count` output positions per image: (images * count, c_in k k), laid
    out like conv.weight.flatten(1)."""
    return conv_patches_at(conv, x, sampled_outputs(conv, x, count, seed))


def output_size(conv: nn.Conv2d, x: torch.Tensor) -> tuple[int, int]:
    """(height, width) of `conv`'s output on the input `x`."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = conv.kernel_size, conv.stride, conv.dilation, conv.padding
    return (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def sampled_outputs(conv: nn.Conv2d, x: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """(images, count) output positions (row-major indices into the output map) sampled from `seed`."""
    out_h, out_w = output_size(conv, x)
    return _positions(out_h * out_w, len(x), count, seed, x.device)


def conv_patches_at(conv: nn.Conv2d, x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The k x k input patches behind the output positions `where` (images, P): (images * P, c_in k k), laid out
    like conv.weight.flatten(1), zero padding included."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = conv.kernel_size, conv.stride, conv.dilation, conv.padding
    out_w = output_size(conv, x)[1]
    rows = (where // out_w * sh)[..., None] + torch.arange(kh, device=x.device) * dh  # (images, P, kh)
    cols = (where % out_w * sw)[..., None] + torch.arange(kw, device=x.device) * dw  # (images, P, kw)
    padded = F.pad(x, (pw, pw, ph, ph))
    batch = torch.arange(len(x), device=x.device)[:, None, None, None]
    picked = padded[batch, :, rows[:, :, :, None], cols[:, :, None, :]]  # (images, P, kh, kw, c_in)
    return picked.permute(0, 1, 4, 2, 3).reshape(-1, x.shape[1] * kh * kw)


def _pixels(module: nn.Module, x: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """The channel vectors at `count` input positions per image (pixels of a conv's input, rows of a Linear's):
    (images * count, channels)."""
    sequence = x.flatten(2).transpose(1, 2) if isinstance(module, nn.Conv2d) else x.reshape(len(x), -1, x.shape[-1])
    where = _positions(sequence.shape[1], len(x), count, seed, x.device)
    picked = torch.gather(sequence, 1, where[..., None].expand(-1, -1, sequence.shape[2]))
    return picked.reshape(-1, sequence.shape[2])


def sample_rows(module: nn.Module, x: torch.Tensor, *, patches: bool, count: int, seed: int) -> torch.Tensor:
    """Samples of `module`'s input `x` as float64 rows: patches at output positions (`patches`, conv only) or
    pixels / rows."""
    if patches and isinstance(module, nn.Conv2d):
        return _conv_patches(module, x, count, seed).double()
    return _pixels(module, x, count, seed).double()


@dataclass
class Target:
    """What one layer is fitted to: its samples in the original network times `matrix` (+ `bias`)."""

    name: str
    index: int  # seeds the layer's positions
    module: nn.Module  # the layer in the original network
    patches: bool
    matrix: torch.Tensor  # (features, outputs), float64
    bias: torch.Tensor | None = None


def teacher_targets(
    teacher: nn.Module, targets: list[Target], images: torch.Tensor, *, count: int, seed: int, batch_size: int
) -> tuple[list[str], dict[str, list[torch.Tensor]]]:
    """One pass of the original network: (names of the layers that ran exactly once per forward pass, in the
    order they ran; per layer, its target rows per batch, float32 on the CPU unless the model is float64)."""
    dtype = torch.float64 if next(teacher.parameters()).dtype == torch.float64 else torch.float32
    rows: dict[str, list[torch.Tensor]] = {t.name: [] for t in targets}
    calls: dict[str, int] = dict.fromkeys(rows, 0)
    order: list[str] = []
    batch = {"index": 0}

    def hook_for(target: Target):
        def hook(_module: nn.Module, args: tuple) -> None:
            calls[target.name] += 1
            if target.name not in order:
                order.append(target.name)
            if len(rows[target.name]) > batch["index"]:
                return  # a second call in the same forward pass: the layer is refused below
            layer_seed = epoch_seed(seed, batch["index"], target.index)
            sampled = sample_rows(target.module, args[0], patches=target.patches, count=count, seed=layer_seed)
            value = sampled @ target.matrix + (target.bias if target.bias is not None else 0.0)
            rows[target.name].append(value.to(dtype).cpu())

        return hook

    handles = [t.module.register_forward_pre_hook(hook_for(t)) for t in targets]
    try:
        with evaluating(teacher):
            for index, chunk in enumerate(images.split(batch_size)):
                batch["index"] = index
                teacher(chunk)
    finally:
        for handle in handles:
            handle.remove()
    batches = -(-len(images) // batch_size)
    once = [name for name in order if calls[name] == batches]
    return once, {name: rows[name] for name in once}


@dataclass
class Statistics:
    """Everything a least-squares fit needs, accumulated over the calibration samples (and, for the fits that
    iterate on them, the samples themselves)."""

    gram: torch.Tensor  # A^T A, (unknowns, unknowns), float64
    cross: torch.Tensor  # A^T Y, (unknowns, outputs)
    energy: float  # |Y|^2
    samples: int
    rows: torch.Tensor | None = None  # A (samples, unknowns), kept only when asked for
    targets: torch.Tensor | None = None  # Y (samples, outputs)


def student_statistics(
    passes: StudentPasses,
    module: nn.Module,
    target: Target,
    batches: list[torch.Tensor],
    *,
    count: int,
    seed: int,
    intercept: bool,
    keep: bool = False,
) -> Statistics:
    """One pass of the pruned network per calibration batch, stopped at `module` (the layer being solved):
    its input samples (and a column of ones for an `intercept`) against `target`'s rows; with `keep`, the
    samples and targets themselves too."""
    stats: dict = {"gram": 0.0, "cross": 0.0, "energy": 0.0, "samples": 0}
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    batch = {"index": 0}

    def hook(_module: nn.Module, args: tuple) -> None:
        layer_seed = epoch_seed(seed, batch["index"], target.index)
        rows = sample_rows(module, args[0], patches=target.patches, count=count, seed=layer_seed)
        if intercept:
            rows = torch.cat([rows, rows.new_ones(len(rows), 1)], dim=1)
        wanted = batches[batch["index"]].to(rows.device, torch.float64)
        stats["gram"] = stats["gram"] + rows.T @ rows
        stats["cross"] = stats["cross"] + rows.T @ wanted
        stats["energy"] += float((wanted**2).sum())
        stats["samples"] += len(rows)
        if keep:
            kept.append((rows, wanted))
        raise StopForward

    handle = module.register_forward_pre_hook(hook)
    try:
        if passes.run(lambda index: batch.update(index=index)):
            raise SurgeryError(f"the pruned network never reached layer {target.name}")
    finally:
        handle.remove()
    rows, wanted = (torch.cat([r for r, _ in kept]), torch.cat([t for _, t in kept])) if keep else (None, None)
    return Statistics(stats["gram"], stats["cross"], stats["energy"], stats["samples"], rows, wanted)
