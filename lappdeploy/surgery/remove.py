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
import time

import torch
from torch import nn

from lappdeploy.surgery.graph import ChannelGroups, SurgeryError, analyze, resolve_module
from lappdeploy.surgery.history import record_step, replays
from lappdeploy.surgery.masking import ChannelMasker
from lappdeploy.surgery.plan import ChannelPlan

__all__ = ["VERIFY_TOLERANCE", "RemovalCheck", "kept_elements", "remove_channels_"]

log = logging.getLogger(__name__)

# Largest difference between the pruned and the masked dense model's outputs, relative to the largest
# masked output, that is float32 summation order rather than a wrong removal (measured on every torchvision
# and timm model that compresses: at most ~1e-6; a wrong removal is off by the output's own scale).
VERIFY_TOLERANCE = 1e-4


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
    verify: bool = True,
) -> nn.Module:
    """Physically remove every channel `plan` drops (in place; returns the model).

    Works on models with bypass blocks. With `optimizer`, its parameter groups are re-pointed at the new
    parameters and their per-element state is cut to the kept channels, so training continues as if the
    dropped channels had been frozen at zero. Prune before DDP wrapping, torch.compile or autocast.
    `groups` may pass an `analyze` result of this very model to skip re-tracing it (refused when stale).

    With `verify` (the default) the pruned model must compute, on `example_inputs` in eval mode, what the
    dense model computes with the plan's channels masked; otherwise a SurgeryError names the first group
    whose removal breaks the network and the layer where it does (the model is then unusable).
    """
    example_inputs = example_inputs.to(next(model.parameters()).device)
    if groups is not None and groups.model is model:
        groups.check_fresh()
    else:
        groups = analyze(model, example_inputs)
    plan.validate(groups)
    if plan.is_empty:
        return model
    check = RemovalCheck(model, groups, plan, example_inputs) if verify else None
    kept = kept_elements(model, plan, example_inputs) if optimizer is not None else None
    old_params = dict(model.named_parameters())
    requires_grad = {name: p.requires_grad for name, p in old_params.items()}
    _prune(model, groups, plan)
    if check is not None:
        check.verify(model)
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
    # the removal checked itself when it was first made; rebuilding a saved model replays the same steps on
    # the same architecture (and loading then checks the weights fit)
    remove_channels_(model, ChannelPlan.from_dict(step["plan"]), example_inputs, verify=False)


def _outputs(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor | None, str | None, str | None]:
    """(the model's first output tensor, or None; the layer it failed in or after; the error) in eval mode."""
    entered: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda _m, _i, name=name: entered.append(name))
        for name, module in model.named_modules()
        if name and not any(True for _ in module.children())
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            output = model.eval()(inputs)
        leaves = [t for t in torch.utils._pytree.tree_leaves(output) if torch.is_tensor(t)]
        return (leaves[0].float() if leaves else None), None, None
    except Exception as exc:
        return (
            None,
            (entered[-1] if entered else "the input"),
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
        )
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def _masked_output(model: nn.Module, groups: ChannelGroups, plan: ChannelPlan, inputs: torch.Tensor) -> torch.Tensor:
    with ChannelMasker(groups) as masker:
        masker.set(plan)
        output, layer, error = _outputs(model, inputs)
    if output is None:
        raise SurgeryError(
            f"the dense model does not run on its example inputs with channels masked ({layer}: {error})"
        )
    return output


def _subplan(plan: ChannelPlan, group_ids: list[str]) -> ChannelPlan:
    return ChannelPlan(groups={gid: plan.groups[gid] for gid in group_ids}, info=dict(plan.info))


class RemovalCheck:
    """The masked dense model's output on the example inputs, taken before a removal, and a copy of the dense
    model to find which group broke the network if the pruned model does not reproduce that output."""

    def __init__(self, model: nn.Module, groups: ChannelGroups, plan: ChannelPlan, inputs: torch.Tensor) -> None:
        started = time.perf_counter()
        self.plan, self.inputs = plan, inputs
        self.expected = _masked_output(model, groups, plan, inputs)
        self.dense = copy.deepcopy(model)  # only read when the check fails
        self.seconds = time.perf_counter() - started  # the check's cost (s), for reports

    def failure(self, model: nn.Module, expected: torch.Tensor) -> str | None:
        """Why `model` is not a correct removal (its output differs, or it fails), else None."""
        output, layer, error = _outputs(model, self.inputs)
        if output is None:
            return f"the pruned network fails at layer {layer} ({error})"
        if output.shape != expected.shape:
            return f"the pruned network returns shape {tuple(output.shape)}, not {tuple(expected.shape)}"
        relative = float((output - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
        if not relative <= VERIFY_TOLERANCE:
            return f"the pruned network's outputs differ from the masked model's by {relative:.2e} of their scale"
        return None

    def verify(self, model: nn.Module) -> None:
        started = time.perf_counter()
        reason = self.failure(model, self.expected)
        self.seconds += time.perf_counter() - started
        if reason is None:
            return
        group, why = self._first_breaking_group()
        raise SurgeryError(
            f"channel removal is not exact for {type(model).__name__}: removing group {group!r} alone breaks it: "
            f"{why}; this architecture is not supported for channel removal (nothing was saved); --ignore "
            f"'{group}' keeps that group whole"
        )

    def _first_breaking_group(self) -> tuple[str, str]:
        """Bisect the plan's groups (in plan order) for the shortest prefix whose removal already fails, and
        the reason for its last group alone where that fails alone (else for the prefix)."""
        ids = [gid for gid, gp in self.plan.groups.items() if gp.dropped]
        low, high = 0, len(ids)  # removing ids[:high] fails; ids[:low] does not
        while high - low > 1:
            middle = (low + high) // 2
            if self._fails(ids[:middle]):
                high = middle
            else:
                low = middle
        last = ids[high - 1]
        return last, self._fails([last]) or self._fails(ids[:high]) or "its removal changes the network's outputs"

    def _fails(self, group_ids: list[str]) -> str | None:
        probe = copy.deepcopy(self.dense)
        sub = _subplan(self.plan, group_ids)
        groups = analyze(probe, self.inputs)
        expected = _masked_output(probe, groups, sub, self.inputs)
        try:
            _prune(probe, groups, sub)
        except Exception as exc:
            return f"torch-pruning fails ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
        return self.failure(probe, expected)
