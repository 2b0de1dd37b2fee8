"""Every torchvision classification CNN, adapted to a dataset's input channels and class count.

Vision transformers (ViT, Swin, MaxViT) are left out: lappdeploy prunes convolution channels.
Models are built from scratch (`weights=None`): pretrained weights are a download we do not assume.
"""

from __future__ import annotations

import functools

from torch import nn

from lappdeploy.models.adapt import replace_stem_input_channels_

__all__ = ["MIN_INPUT_SIZE", "TRANSFORMER_PREFIXES", "build_torchvision_model", "torchvision_cnn_names"]

TRANSFORMER_PREFIXES = ("vit_", "swin_", "swin3d", "maxvit")

# Smallest square input (px) each family forward-passes at, found by a forward-pass search over
# sizes 1..80 with torchvision 0.29 (tests/unit/test_models.py re-checks every entry). Families not
# listed accept any size, thanks to adaptive pooling.
MIN_INPUT_SIZE = {
    "alexnet": 63,
    "convnext": 32,
    "densenet": 29,
    "googlenet": 15,
    "inception_v3": 75,
    "squeezenet1_0": 21,
    "squeezenet1_1": 17,
    "vgg": 32,
}


def min_input_size(name: str) -> int:
    for prefix, size in MIN_INPUT_SIZE.items():
        if name.startswith(prefix):
            return size
    return 1


@functools.cache
def torchvision_cnn_names() -> tuple[str, ...]:
    import torchvision.models

    names = torchvision.models.list_models(module=torchvision.models)
    return tuple(n for n in names if not n.startswith(TRANSFORMER_PREFIXES))


def build_torchvision_model(name: str, *, num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    import torchvision.models

    extra = {}
    if name in ("googlenet", "inception_v3"):
        # Auxiliary heads change the output type in training mode, and `transform_input` re-normalises
        # 3-channel ImageNet inputs for ported weights; neither is wanted when training from scratch.
        extra = {"aux_logits": False, "transform_input": False, "init_weights": True}
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
    if in_channels != 3:
        replace_stem_input_channels_(model, in_channels)
    if name.startswith("shufflenet_v2"):
        from lappdeploy.models.shuffle import use_shuffle_modules_

        use_shuffle_modules_(model)  # the channel shuffle as a module the surgery can trace
    return model
