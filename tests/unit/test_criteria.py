"""The channel criteria registry: each formula on a real tiny model, the gradient criterion's contract, plan
composition and the refusal of a stale channel analysis."""

from __future__ import annotations

import pytest
import torch

from lappdeploy.errors import SurgeryError, UnknownNameError
from lappdeploy.models import create_model
from lappdeploy.surgery import (
    CRITERIA,
    ChannelPlan,
    GroupPlan,
    analyze,
    channel_scores,
    compose_plans,
    random_plan,
    remove_channels_,
)
from lappdeploy.surgery.criteria import group_vectors
from lappdeploy.testing import randomize_norms_


def _convnet():
    torch.manual_seed(0)
    model = randomize_norms_(create_model("tiny_convnet", num_classes=4))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, x, analyze(model, x)


def test_every_criterion_is_registered_with_its_formula():
    assert set(CRITERIA.names()) >= {"l1", "l2", "fpgm", "cos", "bn", "taylor", "group_l2"}
    assert all(CRITERIA.get(n).summary for n in CRITERIA.names())
    assert CRITERIA.get("taylor").needs_grad and not CRITERIA.get("l1").needs_grad
    with pytest.raises(UnknownNameError, match="unknown criterion 'l3'"):
        channel_scores(_convnet()[2], "l3")


def test_magnitude_and_distance_criteria_match_their_formulas():
    model, _, groups = _convnet()
    g = groups.group("features.0")  # conv1's channels: one producer, conv1
    weights = model.features[0].weight.detach().flatten(1)
    part = slice(g.offset, g.offset + g.channels)
    assert torch.allclose(channel_scores(groups, "l1")[part], weights.abs().sum(1))
    assert torch.allclose(channel_scores(groups, "l2")[part], weights.norm(dim=1))
    assert torch.allclose(channel_scores(groups, "bn")[part], model.features[1].weight.detach().abs())
    assert torch.equal(group_vectors(groups, g), model.features[0].weight.flatten(1))
    pairwise = torch.cdist(weights, weights)
    assert torch.allclose(channel_scores(groups, "fpgm")[part], pairwise.sum(1), rtol=1e-5)
    unit = torch.nn.functional.normalize(weights, dim=1)
    assert torch.allclose(channel_scores(groups, "cos")[part], (1 - unit @ unit.T).sum(1), atol=1e-5)


def test_a_redundant_channel_scores_lowest_by_fpgm_and_cos():
    model, _, groups = _convnet()
    with torch.no_grad():  # channel 3 becomes the mean of the others: the group's geometric centre
        w = model.features[0].weight
        w[3] = (w.sum(0) - w[3]) / (w.shape[0] - 1)
    g = groups.group("features.0")
    for name in ("fpgm", "cos"):
        assert int(channel_scores(groups, name)[g.offset : g.offset + g.channels].argmin()) == 3, name


def test_taylor_needs_gradients_then_scores_first_order_terms():
    model, x, groups = _convnet()
    with pytest.raises(SurgeryError, match="needs gradients"):
        channel_scores(groups, "taylor")
    model(x).logsumexp(1).sum().backward()
    g = groups.group("features.0")
    conv, bn = model.features[0], model.features[1]
    expected = (conv.weight * conv.weight.grad).flatten(1).sum(1) + bn.weight * bn.weight.grad + bn.bias * bn.bias.grad
    got = channel_scores(groups, "taylor")[g.offset : g.offset + g.channels]
    assert torch.allclose(got, expected.detach() ** 2, rtol=1e-4, atol=1e-12)


def test_plans_compose_to_dense_indices_and_replay_to_the_same_model():
    model, x, groups = _convnet()
    first = random_plan(groups, 0.75, seed=0)
    remove_channels_(model, first, x, groups=groups)
    again = analyze(model, x)
    then = random_plan(again, 0.5, seed=1)
    remove_channels_(model, then, x, groups=again)
    composed = compose_plans(first, then)
    for gid, gp in then.groups.items():
        dense_kept = first.groups[gid].keep
        assert composed.groups[gid].keep == sorted(dense_kept[i] for i in gp.keep)
        assert composed.groups[gid].channels == groups.group(gid).channels
    fresh, _, fresh_groups = _convnet()  # the same weights again (same seed)
    remove_channels_(fresh, composed, x, groups=fresh_groups)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters(), strict=True))
    with pytest.raises(SurgeryError, match="remain after the earlier plan"):
        compose_plans(first, ChannelPlan({"features.0": GroupPlan(8, [0])}))


def test_a_stale_channel_analysis_is_refused():
    model, x, groups = _convnet()
    remove_channels_(model, random_plan(groups, 0.5), x, groups=groups)
    with pytest.raises(SurgeryError, match="analysis is stale"):
        remove_channels_(model, ChannelPlan(), x, groups=groups)
