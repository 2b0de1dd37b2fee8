"""Surgery: channel groups and plans, physical channel removal, the foldable bypass, BN folding,
width rounding and the analytic deploy-cost model. Everything goes through torch-pruning's public
DependencyGraph API; nothing edits tensor shapes by hand. Portable checkpoints (`save_model`,
`load_model`) record these steps and replay them on the dense architecture."""

from lappdeploy.surgery.bypass import add_bypass_, bypass_candidates, fold_bn_, fold_bypass_, has_bypass
from lappdeploy.surgery.cost import CostModel, DeployCost, cost_model, deploy_cost, plan_cost
from lappdeploy.surgery.criteria import CRITERIA, Criterion, channel_scores, register_criterion
from lappdeploy.surgery.graph import ChannelGroup, ChannelGroups, SurgeryError, analyze, build_dependency_graph
from lappdeploy.surgery.history import replay_, surgery_steps
from lappdeploy.surgery.masking import ChannelMasker
from lappdeploy.surgery.plan import (
    ChannelPlan,
    GroupPlan,
    compose_plans,
    fill_plan,
    kept_first,
    plan_from_scores,
    random_plan,
    random_widths_plan,
    round_plan,
    uniform_plan,
)
from lappdeploy.surgery.portable import LoadedModel, load_model, save_model
from lappdeploy.surgery.remove import kept_elements, remove_channels_
from lappdeploy.surgery.repconv import RepConvBN, fuse_conv_bn

__all__ = [
    "CRITERIA",
    "ChannelGroup",
    "ChannelGroups",
    "ChannelMasker",
    "ChannelPlan",
    "CostModel",
    "Criterion",
    "DeployCost",
    "GroupPlan",
    "LoadedModel",
    "RepConvBN",
    "SurgeryError",
    "add_bypass_",
    "analyze",
    "build_dependency_graph",
    "bypass_candidates",
    "channel_scores",
    "compose_plans",
    "cost_model",
    "deploy_cost",
    "fill_plan",
    "fold_bn_",
    "fold_bypass_",
    "fuse_conv_bn",
    "has_bypass",
    "kept_elements",
    "kept_first",
    "load_model",
    "plan_cost",
    "plan_from_scores",
    "random_plan",
    "random_widths_plan",
    "register_criterion",
    "remove_channels_",
    "replay_",
    "round_plan",
    "save_model",
    "surgery_steps",
    "uniform_plan",
]
