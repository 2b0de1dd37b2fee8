"""Which timm families lappdeploy compresses, as measured by benchmarks/timm_zoo.py (timm 1.0.31): the smallest
model of every family (timm module) at 64 px (128 for the Inception family), a random plan keeping about half of
every channel group removed physically and checked against the masked dense model, analytic MACs equal to
measured, ONNX export with ONNX Runtime parity. `lappdeploy list models --timm` lists the models of the families
that passed; docs/own-model.md#timm-families gives the reasons for the others."""

from __future__ import annotations

__all__ = ["TIMM_CHECKED_VERSION", "TIMM_COMPRESSIBLE", "TIMM_NOT_CNN", "TIMM_UNSUPPORTED", "timm_models"]

TIMM_CHECKED_VERSION = "1.0.31"

# family -> the model it was checked on (tests/integration/test_timm_zoo.py checks them again)
TIMM_COMPRESSIBLE = {
    "byobnet": "mobileone_s1",
    "convmixer": "convmixer_768_32",
    "cspnext": "cspnext_tiny",
    "densenet": "densenet121",
    "dla": "dla46x_c",
    "dpn": "dpn48b",
    "efficientnet": "mobilenetv2_035",
    "fastvit": "fastvit_t8",
    "hardcorenas": "hardcorenas_b",
    "hgnet": "hgnetv2_b0",
    "hrnet": "hrnet_w18_small",
    "inception_resnet_v2": "inception_resnet_v2",
    "inception_v3": "inception_v3",
    "inception_v4": "inception_v4",
    "lcnetv2": "lcnetv2_small",
    "metaformer": "poolformerv2_s12",
    "mobilenetv3": "lcnet_035",
    "rdnet": "rdnet_tiny",
    "regnet": "regnetx_002",
    "repghost": "repghostnet_050",
    "repvit": "repvit_m1",
    "res2net": "res2next50",
    "resnest": "resnest14d",
    "resnet": "resnet10t",
    "resnetv2": "resnetv2_18",
    "selecsls": "selecsls42",
    "senet": "legacy_seresnet18",
    "starnet": "starnet_s050",
    "vgg": "vgg11",
    "vovnet": "ese_vovnet19b_slim_dw",
    "xception": "legacy_xception",
    "xception_aligned": "xception41p",
}

# convolutional families without attention or LayerNorm over channels that do not compress, and why
TIMM_UNSUPPORTED = {
    "cpubone": "a removal empties a coupled layer: channel groups split across branches of different widths",
    "cspnet": "torch-pruning cannot trace its cross-stage split (an int + None in the traced graph)",
    "fasternet": "partial convolutions act on a slice of the channels: torch-pruning's index maps break",
    "ghostnet": "ghost modules concatenate and then slice channels: the removal is not exact",
    "inception_next": "its downsampling layer couples channels of different widths: a removal empties a layer",
    "nasnet": "cells couple channels of different widths: a removal empties a layer",
    "nfnet": "weight-standardised convolutions renormalise each filter over its input channels: removing one "
    "changes the others",
    "pnasnet": "cells couple channels of different widths: a removal empties a layer",
    "rexnet": "residual additions onto a slice of the channels: the dependency graph does not finish in 5 minutes",
    "sknet": "selective-kernel attention splits and reweights channels: the removal is not exact",
    "tresnet": "space-to-depth stem and in-place activated BatchNorm: the removal is not exact",
}

# families with attention (vision transformers, hybrids) or LayerNorm over channels: lappdeploy prunes the
# channels of convolutional networks; their LayerNorm-coupled groups are left whole where they build at all
TIMM_NOT_CNN = (
    "beit", "byoanet", "cait", "coat", "convit", "convnext", "crossvit", "csatv2", "davit", "deepseek_vit", "deit",
    "edgenext", "efficientformer", "efficientformer_v2", "efficientvim", "efficientvit_mit", "efficientvit_msra",
    "eva", "focalnet", "gcvit", "gemma4_vit", "hiera", "hieradet_sam2", "iformer", "levit", "lowformer", "mambaout",
    "maxxvit", "mlp_mixer", "mobilenetv5", "mobilevit", "mvitv2", "naflexvit", "nest", "nextvit", "pit", "pvt_v2",
    "qwen3_vit", "sequencer", "shvit", "swiftformer", "swin_transformer", "swin_transformer_v2",
    "swin_transformer_v2_cr", "tiny_vit", "tnt", "twins", "visformer", "vision_transformer",
    "vision_transformer_hybrid", "vision_transformer_relpos", "vision_transformer_sam", "vitamin", "volo", "xcit",
)  # fmt: skip


def timm_models() -> list[tuple[str, str]]:
    """(model, family) of every timm model of a compressible family, sorted by family then name."""
    from lappdeploy.models.sources import timm_module

    timm = timm_module()
    return [(name, family) for family in sorted(TIMM_COMPRESSIBLE) for name in timm.list_models(module=family)]
