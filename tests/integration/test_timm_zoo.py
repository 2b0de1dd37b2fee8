"""timm's CNN families through surgery, export and reload, like the torchvision zoo: for the model each family
was checked on (lappdeploy.models.timm_support), a random plan keeping about half of every channel group is
removed (the removal checks itself against the masked dense model), the pruned model computes the masked
model's logits, its measured MACs equal the analytic ones, and it saves and loads (here and in a fresh process)
with identical logits; a few families also export to ONNX with ONNX Runtime parity, every family under
`pytest -m slow`. The default suite takes one model per family; `-m slow` adds each family's second smallest."""

from __future__ import annotations

import copy
import os

import pytest
import torch

timm = pytest.importorskip("timm")

from lappdeploy.models import count_macs, create_model, model_card  # noqa: E402
from lappdeploy.models.timm_support import TIMM_COMPRESSIBLE  # noqa: E402
from lappdeploy.surgery import (  # noqa: E402
    ChannelMasker,
    analyze,
    fold_bn_,
    load_model,
    plan_cost,
    random_plan,
    remove_channels_,
    save_model,
)
from lappdeploy.testing import randomize_norms_, reload_errors_in_fresh_process  # noqa: E402

SIZE = {"inception_v3": 96, "inception_v4": 96, "inception_resnet_v2": 96}  # px; 64 for the others
ONNX_DEFAULT = {"resnet", "efficientnet", "regnet", "hgnet"}  # the rest export under -m slow
# 10-40 s each on a CPU core (graph analysis of many concatenations, or a 130M-parameter classifier): -m slow
SLOW_SURGERY = {"resnest", "densenet", "inception_resnet_v2", "inception_v4", "vgg"}


def _second_smallest(family: str) -> str | None:
    names = [n for n in timm.list_models(module=family) if not n.startswith("test_") and n != TIMM_COMPRESSIBLE[family]]
    sizes = []
    for name in names:
        with torch.device("meta"):
            sizes.append((sum(p.numel() for p in timm.create_model(name, num_classes=10).parameters()), name))
    return min(sizes)[1] if sizes else None


def _params():
    for family, name in sorted(TIMM_COMPRESSIBLE.items()):
        marks = [pytest.mark.slow] if family in SLOW_SURGERY else []
        yield pytest.param(family, name, marks=marks, id=f"{family}-{name}")


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("pruned_timm")


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _check_family(family: str, name: str, saved_dir) -> None:
    torch.manual_seed(0)
    size = SIZE.get(family, 64)
    model = randomize_norms_(create_model(f"timm:{name}", num_classes=10)).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    groups = analyze(model, x)
    assert groups.prunable, f"{name} has no prunable group"
    plan = random_plan(groups, 0.5, seed=2)
    with ChannelMasker(groups) as masker, torch.no_grad():
        masker.set(plan)
        masked = model(x)
    predicted = plan_cost(groups, plan)
    remove_channels_(model, plan, x, groups=groups)  # raises if the removal is not exact
    with torch.no_grad():
        assert _relative_error(model(x), masked) < 1e-4
    deploy = fold_bn_(copy.deepcopy(model), x)
    measured = count_macs(deploy, (3, size, size))
    assert (measured.macs, measured.params) == (predicted.macs, predicted.params)
    path = saved_dir / f"{name}.pt"
    save_model(model, path, model_card(model, input_shape=(3, size, size)))
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(load_model(path).model(x), logits)
    torch.save({"inputs": x, "logits": logits}, saved_dir / f"{name}.expected")
    if family in ONNX_DEFAULT or os.environ.get("LAPPDEPLOY_TIMM_ONNX"):
        from lappdeploy.export import to_onnx

        record = to_onnx(model, x, saved_dir / f"{name}.onnx")
        assert max(row["relative_error"] for row in record.parity) <= 1e-4
        assert record.macs == record.torch_macs - record.zero_bias_adds_dropped


@pytest.mark.parametrize(("family", "name"), list(_params()))
def test_a_random_half_plan_is_removed_exactly(family, name, saved_dir):
    _check_family(family, name, saved_dir)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(TIMM_COMPRESSIBLE))
def test_the_family_s_second_smallest_model_too(family, saved_dir, monkeypatch):
    name = _second_smallest(family)
    if name is None:
        pytest.skip(f"{family} has one model")
    monkeypatch.setenv("LAPPDEPLOY_TIMM_ONNX", "1")
    _check_family(family, name, saved_dir)


def test_pruned_timm_models_load_in_a_fresh_process(saved_dir):
    names = sorted(p.stem for p in saved_dir.glob("*.pt"))
    if not names:
        pytest.skip("no pruned model was saved (the per-family tests were deselected)")
    worst = reload_errors_in_fresh_process(saved_dir, names)
    assert set(worst) == set(names) and all(value == 0.0 for value in worst.values()), worst
