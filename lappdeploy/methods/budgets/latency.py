"""The budget in measured latency (docs/latency.md#a-latency-budget): the latency table of the run's model
(given, or profiled and cached), the differentiable latency model built from it, the target in ms per batch,
and the measured landing that times landed plans (docs/latency.md#the-measured-landing)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lappdeploy.errors import ConfigError, SurgeryError
from lappdeploy.latency import LatencyModel, LatencyTable, LatencyTableError, check_fingerprint, device_fingerprint
from lappdeploy.latency.profile import PROFILED_RUNTIMES, cached_profile, measure_models_ms
from lappdeploy.latency.steps import group_multiples
from lappdeploy.methods.base import PruneConfig
from lappdeploy.methods.budgets.base import Budget, Landed
from lappdeploy.methods.options import ROUND_TO_AUTO
from lappdeploy.models import unwrap
from lappdeploy.surgery import ChannelGroups, ChannelPlan, remove_channels_
from lappdeploy.surgery.plan import RoundTo

__all__ = ["MEASURED_ATTEMPTS", "MEASURED_TOLERANCE", "LatencyBudget", "latency_budget"]

log = logging.getLogger(__name__)

# The measured landing (docs/latency.md#the-measured-landing): a landed plan whose deploy model measures within
# this fraction of the target is kept; else the plan is landed again on a corrected limit, at most
# MEASURED_ATTEMPTS plans timed in all (each ~2 s of timed calls, interleaved with the dense model).
MEASURED_TOLERANCE = 0.03
MEASURED_ATTEMPTS = 4
MEASURED_SECONDS = 2.0


class LatencyBudget(Budget):
    """--target-latency / --target-latency-ms: predicted ms per batch (the table's batch size) on the latency
    table's runtime, from the differentiable latency model; with --measured-landing, a landed plan is also timed."""

    kind, unit = "latency", "ms (predicted latency)"

    def __init__(
        self, groups: ChannelGroups, model: LatencyModel, table: LatencyTable, *, source: str, target_ms: float,
        round_to: RoundTo, flag: str, profiled: bool = False, fraction: float | None = None,
        measured_landing: bool = False, dense_model: nn.Module | None = None,
    ) -> None:  # fmt: skip
        super().__init__(groups, dense=model.dense_ms, target=target_ms, round_to=round_to, flag=flag)
        self.model, self.table, self.source = model, table, source  # source: the table's path
        self.profiled = profiled  # profiled by this run (not given, not taken from the cache)
        self.fraction_of_dense = fraction  # --target-latency; None: --target-latency-ms
        self.measured_landing = measured_landing  # --measured-landing: time landed plans and correct the limit
        self.landing: list[dict[str, float]] = []  # the measured landing's attempts
        # a hookless CPU copy of the dense network, timed next to every plan and the final model (tables measured here)
        self.dense_model = dense_model
        self._current: tuple[ChannelGroups, LatencyModel] | None = None  # the model of the last other analysis

    def _model_for(self, groups: ChannelGroups | None) -> LatencyModel:
        """The latency model of an analysis: the dense one's, or of the model as an iterative method pruned it
        (layer names do not change with removal, so the same table reads it)."""
        if groups is None or groups is self.groups:
            return self.model
        if self._current is None or self._current[0] is not groups:
            self._current = (groups, LatencyModel(groups, self.table, source=f"latency table {self.source}"))
        return self._current[1]

    def soft(self, keep_mask: torch.Tensor, groups: ChannelGroups | None = None) -> torch.Tensor:
        return self._model_for(groups)(keep_mask)

    def cost(self, plan: ChannelPlan, groups: ChannelGroups | None = None) -> float:
        return self._model_for(groups).plan_ms(plan)

    def where(self) -> str:
        return f" on {self.table.describe()}"

    def identity(self) -> dict[str, Any]:
        """What a resumed run must budget again: the same table and target (kept in its checkpoint)."""
        return {"kind": self.kind, "table": self.table.digest(), "target_ms": round(self.target, 6),
                "source": self.source}  # fmt: skip

    def check_resumed(self, saved: dict[str, Any] | None) -> None:
        """ConfigError when a resumed run would budget another table or target than it started with."""
        if not saved or saved.get("kind", self.kind) != self.kind:
            super().check_resumed(saved)
            return
        now = self.identity()
        if (saved["table"], saved["target_ms"]) != (now["table"], now["target_ms"]):
            raise ConfigError(
                f"this run started with latency table {saved['source']} (digest {saved['table']}, target "
                f"{saved['target_ms']:.4g} ms); now it is {now['source']} (digest {now['table']}, target "
                f"{now['target_ms']:.4g} ms): resume with the run's table, or start a new run"
            )

    def report(self, plan: ChannelPlan | None) -> dict[str, Any]:
        """The budget fields and the `latency` section before the deploy model is timed."""
        section = {**self.describe(), "predicted_ms": round(self.cost(plan), 5) if plan is not None else None}
        if self.landing:
            section["measured_landing"] = self.landing
        return {**super().report(plan), "latency": section}

    def land(
        self,
        land: Callable[[float], tuple[ChannelPlan, Landed]],
        timer: Callable[[ChannelPlan], tuple[float, float]] | None = None,
    ) -> tuple[ChannelPlan, Landed]:
        """`land(limit)` (a plan landed under `limit` predicted ms, and what else the landing returns), checked
        by measurement: each landed plan's deploy model is timed with the dense model on the table's runtime;
        while it measures more than MEASURED_TOLERANCE off the target, the limit is scaled by target / measured
        and the plan landed again. Of the plans timed, the slowest within the tolerance above the target is
        kept (else the fastest). Without --measured-landing, or on a table from another machine, `land(target)`.

        `timer(plan)` -> (plan ms, dense ms), timed together; default: deploy copies of the dense network, one
        pruned by the plan, interleaved on the table's runtime."""
        landed = land(self.target)
        modelled = bool(self.table.provenance.get("synthetic"))  # nothing measured to correct toward
        if timer is None and not (self.measured_landing and self.dense_model is not None and not modelled):
            return landed
        timer = timer or self._time_plan
        limit, tried = self.target, []
        for _ in range(MEASURED_ATTEMPTS):
            plan_ms, dense_ms = timer(landed[0])
            target = self.target_now(dense_ms)
            tried.append((landed, plan_ms / target))
            self.landing.append({"limit_ms": round(limit, 5), "predicted_ms": round(self.cost(landed[0]), 5),
                                 "measured_ms": round(plan_ms, 5), "dense_ms": round(dense_ms, 5),
                                 "measured_vs_target": round(plan_ms / target, 4)})  # fmt: skip
            if abs(plan_ms / target - 1) <= MEASURED_TOLERANCE:
                break
            limit = _corrected_limit(limit, target / plan_ms, self.dense)
            try:
                candidate = land(limit)
            except SurgeryError:  # the corrected limit is below the narrowest widths
                break
            if _kept(candidate[0]) == _kept(landed[0]):
                break  # the limit moved less than one unit of width
            landed = candidate
        kept = _best_timed([ratio for _, ratio in tried])
        self.landing[kept]["kept"] = True
        best = tried[kept][0]
        self.limit = max(self.target, self.cost(best[0]))  # what the kept plan was landed under
        log.info("measured landing: %s", ", ".join(f"{a['measured_vs_target']:.3f}" for a in self.landing))
        return best

    def landing_fields(self) -> dict[str, Any]:
        """The measured landing's ratios, for the log record of a landing."""
        return {"measured_vs_target": [a["measured_vs_target"] for a in self.landing]} if self.landing else {}

    def _time_plan(self, plan: ChannelPlan) -> tuple[float, float]:
        """(ms of the dense network pruned by `plan`, ms of the dense network), timed interleaved."""
        example = torch.zeros((2, *self.table.input_shape))
        if plan.is_empty:
            return self.time_with_dense(self.dense_model)
        return self.time_with_dense(remove_channels_(copy.deepcopy(self.dense_model), plan, example))

    def time_with_dense(self, model: nn.Module) -> tuple[float, float]:
        """(ms of `model`, ms of the dense network) per batch on the table's runtime, batch and threads, timed
        interleaved in one session (drift of the machine's speed moves both alike)."""
        table = self.table
        plan_ms, dense_ms = measure_models_ms(
            [model, self.dense_model], tuple(table.input_shape), runtime=table.runtime, device=table.device,
            batch=table.batch, threads=table.threads, seconds=MEASURED_SECONDS,
            precision=table.provenance.get("precision", "fp32"),  # an OpenVINO bf16 or int8 table: at its precision
        )  # fmt: skip
        return plan_ms, dense_ms

    def target_now(self, dense_ms: float) -> float:
        """The target in ms against a dense latency timed now: a --target-latency fraction is read against the
        dense model timed alongside (drift since profiling cancels); --target-latency-ms is absolute."""
        return self.fraction_of_dense * dense_ms if self.fraction_of_dense is not None else self.target

    def deploy_report(self, plan: ChannelPlan | None, deploy_model: torch.nn.Module) -> dict[str, Any]:
        """The `latency` section with the final model's latency measured on the table's runtime (when the
        table was measured on this machine)."""
        section = self.report(plan)["latency"]
        section.update(measured_ms=None, dense_measured_now_ms=None, measured_vs_target=None, measured_vs_dense=None)
        if self.dense_model is not None:
            measured, dense_now = self.time_with_dense(deploy_model)
            section.update(
                measured_ms=round(measured, 5), dense_measured_now_ms=round(dense_now, 5),
                measured_vs_target=round(measured / self.target_now(dense_now), 4),
                measured_vs_dense=round(measured / dense_now, 4),
            )  # fmt: skip
        return {"latency": section}

    def describe(self) -> dict[str, Any]:
        return {
            "table": self.source,
            "runtime": self.table.runtime,
            "device": self.table.device,
            "processor": self.table.fingerprint.get("processor"),
            "batch": self.table.batch,
            "threads": self.table.threads,
            "target_ms": round(self.target, 5),
            "dense_measured_ms": self.table.dense_ms,
            "dense_predicted_ms": round(self.model.dense_ms, 5),
            "round_to": dict(self.round_to) if isinstance(self.round_to, dict) else self.round_to,
        }


def _table_for(groups: ChannelGroups, config: PruneConfig) -> tuple[LatencyTable, str, bool]:
    input_shape = tuple(int(s) for s in groups.example_inputs.shape[1:])
    if config.latency_table:
        table = LatencyTable.load(config.latency_table)
        check_fingerprint(table, config.latency_table, force=config.force_table)
        if tuple(table.input_shape) != input_shape:
            raise LatencyTableError(
                f"latency table {config.latency_table} was profiled at input {table.input_shape}, this run's input "
                f"is {list(input_shape)}; profile at this size (`lappdeploy profile --image-size`)"
            )
        return table, config.latency_table, False
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        raise ConfigError(
            "--target-latency under DDP needs --latency-table: every rank would profile at once on shared cores; "
            "run `lappdeploy profile` first"
        )
    name = getattr(groups.model, "lappdeploy_arch", {}).get("name", type(groups.model).__name__.lower())
    log.info("no --latency-table: profiling %s on ONNX Runtime CPU, batch 8 (cached)", name)
    table, path, reused = cached_profile(groups.model, input_shape, model_name=name)
    return table, str(path), not reused


def latency_budget(groups: ChannelGroups, config: PruneConfig) -> LatencyBudget:
    """The latency budget of a run: its table (given, or profiled and cached), the latency model built from it,
    the target in ms and --round-to auto resolved to the table's per-group width steps; ConfigError (before any
    training) when the target is not below the dense model's latency."""
    table, source, profiled = _table_for(groups, config)
    model = LatencyModel(groups, table, source=f"latency table {source}")
    target = config.target_latency_ms or config.target_latency * table.dense_ms
    flag = (
        f"--target-latency-ms {target:g}" if config.target_latency_ms else f"--target-latency {config.target_latency}"
    )
    if target >= min(table.dense_ms, model.dense_ms):  # measured, and the model the budget anneals from
        raise ConfigError(
            f"{flag} is at or above the dense model's latency (measured {table.dense_ms:.4g} ms, predicted "
            f"{model.dense_ms:.4g} ms; {table.describe()}): nothing to prune; lower the target"
        )
    round_to = config.round_to
    if round_to == ROUND_TO_AUTO:
        round_to = group_multiples(groups, table, source=source)
        log.info("--round-to auto: per-group multiples %s (from the width steps of %s)", round_to, source)
    return LatencyBudget(
        groups, model, table, source=source, target_ms=float(target), round_to=round_to, flag=flag,
        profiled=profiled, fraction=config.target_latency or None, measured_landing=config.measured_landing,
        dense_model=_hookless_copy(groups.model) if _measurable(table) else None,
    )  # fmt: skip


def _measurable(table: LatencyTable) -> bool:
    """Whether models can be timed on the table's runtime here (the table was measured on this machine)."""
    timeable = table.runtime in PROFILED_RUNTIMES
    return timeable and device_fingerprint(table.runtime, table.device) == table.fingerprint


def _corrected_limit(limit_ms: float, target_over_measured: float, dense_ms: float) -> float:
    """The next landing's limit: `limit_ms` scaled by target / measured, but upward by at most half the way to
    the dense prediction. Landing at the dense prediction itself prunes nothing, and the dense network measures
    1 / fraction of a fraction target by construction: a noisy timing of a fast plan must not step there."""
    scaled = limit_ms * target_over_measured
    return scaled if scaled <= limit_ms else min(scaled, (limit_ms + dense_ms) / 2)


def _best_timed(ratios: list[float]) -> int:
    """Of the timed landings' measured / target: the index of the slowest within the tolerance above the target
    (it keeps the most channels the budget allows), else of the fastest."""
    within = [i for i, ratio in enumerate(ratios) if ratio <= 1 + MEASURED_TOLERANCE]
    if within:
        return max(within, key=lambda i: ratios[i])
    return min(range(len(ratios)), key=lambda i: ratios[i])


def _kept(plan: ChannelPlan) -> dict[str, list[int]]:
    return {gid: group.keep for gid, group in plan.groups.items() if len(group.keep) < group.channels}


def _hookless_copy(model: nn.Module) -> nn.Module:
    """A CPU eval copy of `model` without forward hooks: what a method's masks or loggers hook onto the model in
    training does not belong to the network being timed (and would index channels that removal drops)."""
    copied = copy.deepcopy(unwrap(model)).cpu().eval()
    for module in copied.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    return copied
