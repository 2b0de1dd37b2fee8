"""Physical channel removal by plan, through torch-pruning, carrying optimizer state across.

torch-pruning replaces every pruned Parameter by a new, smaller one. To continue training mid-run, the
optimizer must point at the new parameters and keep the state (SGD momentum, Adam moments) of the kept
elements. Which elements survive is found without re-implementing torch-pruning's per-layer rules: the
same plan is applied to a float64 copy of the model whose every parameter holds its own element
indices, so the pruned copy lists, for every new parameter, where each element came from.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from lappdeploy.surgery.graph import ChannelGroups, SurgeryError, analyze, resolve_module
from lappdeploy.surgery.history import record_step, replays
from lappdeploy.surgery.plan import ChannelPlan

__all__ = ["kept_elements", "remove_channels_"]

log = logging.getLogger(__name__)


def _prune(model: nn.Module, groups: ChannelGroups, plan: ChannelPlan) -> None:
    graph = groups.graph
    for gid, gp in plan.groups.items():
        dropped = gp.dropped
        if not dropped:
            continue
        root = resolve_module(model, gid)
        pruner = graph.get_pruner_of_module(root)
        tp_group = graph.get_pruning_group(root, pruner.prune_out_channels, dropped)
        if not graph.check_pruning_group(tp_group):
            raise SurgeryError(f"removing {len(dropped)} channels of group {gid!r} would empty a layer")
        tp_group.prune()


def kept_elements(model: nn.Module, plan: ChannelPlan, example_inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """For every parameter name: flat indices (into the dense parameter) of the elements the plan keeps,
    in the order the pruned parameter stores them. The model itself is not changed."""
    probe = copy.deepcopy(model).double()
    with torch.no_grad():
        for p in probe.parameters():
            # float64 holds integers exactly up to 2**53 elements
            p.copy_(torch.arange(p.numel(), dtype=torch.float64, device=p.device).view_as(p))
    probe_groups = analyze(probe, example_inputs.double())
    _prune(probe, probe_groups, plan)
    return {name: p.detach().flatten().round().long() for name, p in probe.named_parameters()}


def _carry_optimizer_state(
    optimizer: torch.optim.Optimizer,
    old_params: dict[str, nn.Parameter],
    new_params: dict[str, nn.Parameter],
    kept: dict[str, torch.Tensor],
) -> None:
    by_id = {id(p): name for name, p in old_params.items()}
    for group in optimizer.param_groups:
        replaced = []
        for p in group["params"]:
            name = by_id.get(id(p))
            if name is None:
                replaced.append(p)  # not a model parameter (e.g. LAPP thresholds): untouched
                continue
            new = new_params[name]
            state = optimizer.state.pop(p, None)
            if state:
                optimizer.state[new] = {
                    key: (
                        value.flatten()[kept[name].to(value.device)].view_as(new)
                        if torch.is_tensor(value) and value.shape == p.shape and value.dim() > 0
                        else value
                    )
                    for key, value in state.items()
                }
            replaced.append(new)
        group["params"] = replaced


def remove_channels_(
    model: nn.Module,
    plan: ChannelPlan,
    example_inputs: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    groups: ChannelGroups | None = None,
) -> nn.Module:
    """Physically remove every channel `plan` drops (in place; returns the model).

    Works on models with bypass blocks. With `optimizer`, its parameter groups are re-pointed at the new
    parameters and their per-element state is cut to the kept channels, so training continues as if the
    dropped channels had been frozen at zero. Prune before DDP wrapping, torch.compile or autocast.
    `groups` may pass an `analyze` result of this very model to skip re-tracing it (refused when stale).
    """
    example_inputs = example_inputs.to(next(model.parameters()).device)
    if groups is not None and groups.model is model:
        groups.check_fresh()
    else:
        groups = analyze(model, example_inputs)
    plan.validate(groups)
    if plan.is_empty:
        return model
    kept = kept_elements(model, plan, example_inputs) if optimizer is not None else None
    old_params = dict(model.named_parameters())
    requires_grad = {name: p.requires_grad for name, p in old_params.items()}
    _prune(model, groups, plan)
    new_params = dict(model.named_parameters())
    if set(new_params) != set(old_params):
        raise SurgeryError("channel removal changed the set of parameter names; this architecture is not supported")
    for name, p in new_params.items():
        p.requires_grad_(requires_grad[name])  # torch-pruning's new Parameters all require grad
        p.grad = None
    if optimizer is not None:
        _carry_optimizer_state(optimizer, old_params, new_params, kept)
    record_step(model, "remove_channels", plan=plan.to_dict())
    removed = sum(len(gp.dropped) for gp in plan.groups.values())
    log.debug("removed %d channels from %d groups", removed, len(plan.groups))
    return model


@replays("remove_channels")
def _replay_remove_channels(model: nn.Module, step: dict, example_inputs: torch.Tensor) -> None:
    remove_channels_(model, ChannelPlan.from_dict(step["plan"]), example_inputs)
