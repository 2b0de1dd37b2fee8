"""Surgery: channel groups and plans, physical channel removal, the foldable bypass, BN folding,
width rounding and the analytic deploy-cost model. Everything goes through torch-pruning's public
DependencyGraph API; nothing edits tensor shapes by hand."""

from lappdeploy.surgery.bypass import RepConvBN, add_bypass_, bypass_candidates, fold_bn_, fold_bypass_, has_bypass
from lappdeploy.surgery.cost import CostModel, DeployCost, cost_model, deploy_cost, plan_cost
from lappdeploy.surgery.graph import ChannelGroup, ChannelGroups, SurgeryError, analyze, build_dependency_graph
from lappdeploy.surgery.history import replay_, surgery_steps
from lappdeploy.surgery.masking import ChannelMasker
from lappdeploy.surgery.plan import (
    ChannelPlan,
    GroupPlan,
    channel_scores,
    plan_from_scores,
    random_plan,
    round_plan,
    uniform_plan,
)
from lappdeploy.surgery.remove import kept_elements, remove_channels_

__all__ = [
    "ChannelGroup",
    "ChannelGroups",
    "ChannelMasker",
    "ChannelPlan",
    "CostModel",
    "DeployCost",
    "GroupPlan",
    "RepConvBN",
    "SurgeryError",
    "add_bypass_",
    "analyze",
    "build_dependency_graph",
    "bypass_candidates",
    "channel_scores",
    "cost_model",
    "deploy_cost",
    "fold_bn_",
    "fold_bypass_",
    "has_bypass",
    "kept_elements",
    "plan_cost",
    "plan_from_scores",
    "random_plan",
    "remove_channels_",
    "replay_",
    "round_plan",
    "surgery_steps",
    "uniform_plan",
]
