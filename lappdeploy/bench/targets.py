"""What `lappdeploy bench` times: run directories, checkpoints or export directories, resolved to a model
(for torch), its export directory (ONNX, engines, trtexec results), its MACs and its plan."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lappdeploy.errors import BenchError
from lappdeploy.export.onnx_export import deploy_copy
from lappdeploy.models import checkpoint_in, count_macs, create_model
from lappdeploy.rundir import EXPORT_FILE, RunDir, run_method
from lappdeploy.surgery import load_model
from lappdeploy.surgery.history import recorded_plans
from lappdeploy.surgery.plan import plan_id

__all__ = ["BenchTarget", "dense_twin", "load_targets", "model_target"]


@dataclass
class BenchTarget:
    label: str
    source: str
    architecture: str
    input_shape: tuple[int, int, int]
    macs: int  # conv + linear MACs per image of the deploy model
    params: int
    plan_id: str
    method: str
    model: Any = None  # nn.Module (eval, CPU) or None for an export directory given alone
    card: Any = None  # ModelCard, or None for an export directory given alone
    export_dir: Path | None = None
    checkpoint: Path | None = None
    twin_of: str | None = None  # label of the run whose dense architecture this is (--vs-dense)

    @property
    def is_dense(self) -> bool:
        return self.plan_id == "dense"

    @property
    def slug(self) -> str:
        """A file-name-safe version of the label (for cached ONNX / engines)."""
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.label)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _export_dir_of(path: Path) -> Path | None:
    for candidate in (path, path / "export"):
        if (candidate / EXPORT_FILE).is_file():
            return candidate
    return None


def _deploy_form(model, input_shape):
    """The model as it deploys (bypass and BN folded, eval), what ONNX and TensorRT run too; MACs are
    counted on it, so the pruned and the dense model are counted alike."""
    return deploy_copy(model, torch.zeros((2, *input_shape)))


def _load(path: Path) -> BenchTarget:
    if not path.exists():
        raise BenchError(f"{path} does not exist; expected a run directory, a model.pt or an export directory")
    export_dir = _export_dir_of(path) if path.is_dir() else None
    has_checkpoint = path.is_file() or RunDir(path).model.is_file() or RunDir(path).checkpoint.is_file()
    if not has_checkpoint:
        if export_dir is None:
            raise BenchError(f"{path} holds no model.pt, checkpoint.pt or export.json; is it a lappdeploy run?")
        # an export directory alone (e.g. copied back from a Jetson after trtexec.sh): numbers from export.json
        info = _read_json(export_dir / EXPORT_FILE)
        onnx = info.get("onnx") or {}
        if "macs" not in onnx:
            raise BenchError(f"{export_dir / EXPORT_FILE} has no ONNX MACs; re-export with `lappdeploy export`")
        return BenchTarget(
            label=path.name if path.name != "export" else path.parent.name,
            source=str(path),
            architecture=info.get("model", "?"),
            input_shape=tuple(info.get("input_shape", ())),
            macs=int(onnx["macs"]),
            params=int(onnx.get("params", 0)),
            plan_id=info.get("plan_id", "unknown"),
            method=info.get("method", "unknown"),
            export_dir=export_dir,
        )
    checkpoint = checkpoint_in(path)
    run_dir = checkpoint.parent
    loaded = load_model(checkpoint)
    shape = tuple(int(s) for s in loaded.card.input_shape)
    deploy = _deploy_form(loaded.model, shape)
    macs = count_macs(deploy, shape)
    pid = plan_id(recorded_plans(loaded.model))
    recorded = run_method(run_dir)
    method = "dense" if pid == "dense" else ("pruned" if recorded is None else recorded)
    return BenchTarget(
        label=(path if path.is_dir() else run_dir).name,
        source=str(path),
        architecture=loaded.card.architecture,
        input_shape=shape,
        macs=macs.macs,
        params=macs.params,
        plan_id=pid,
        method=method,
        model=deploy,
        card=loaded.card,
        export_dir=export_dir or _export_dir_of(run_dir),
        checkpoint=checkpoint,
    )


def model_target(name: str, loaded) -> BenchTarget:
    """A model built in memory from a spec (`lappdeploy bench --model`), e.g. the user's dense starting point."""
    shape = tuple(int(s) for s in loaded.card.input_shape)
    deploy = _deploy_form(loaded.model, shape)
    macs = count_macs(deploy, shape)
    pid = plan_id(recorded_plans(loaded.model))
    weights = (loaded.card.extra.get("init_from") or {}).get("source", "random")
    return BenchTarget(
        label=name,
        source=f"{name}, {weights} weights",
        architecture=loaded.card.architecture,
        input_shape=shape,
        macs=macs.macs,
        params=macs.params,
        plan_id=pid,
        method="dense" if pid == "dense" else "pruned",
        model=deploy,
        card=loaded.card,
    )


def load_targets(paths: list[str | os.PathLike[str]], models: list[BenchTarget] = ()) -> list[BenchTarget]:
    """Resolve every path (after the `models` built in memory); labels are made unique (parent/name) where two
    runs share a name."""
    targets = [*models, *(_load(Path(p).expanduser()) for p in paths)]
    seen = [t.label for t in targets]
    for t in targets:
        if seen.count(t.label) > 1:
            t.label = str(Path(t.source))
    if len({t.label for t in targets}) != len(targets):
        raise BenchError("the same run is given twice; give each run directory once")
    return targets


def dense_twin(target: BenchTarget) -> BenchTarget:
    """The run's dense architecture with random weights (latency does not depend on the weights)."""
    if target.card is None:
        raise BenchError(f"--vs-dense needs the run's checkpoint; {target.source} is an export directory alone")
    torch.manual_seed(0)
    model = _deploy_form(create_model(target.card.architecture, **target.card.kwargs), target.input_shape)
    macs = count_macs(model, target.input_shape)
    return BenchTarget(
        label=f"{target.architecture} dense",
        source=f"{target.architecture}(**{target.card.kwargs}) with random weights (dense twin of {target.label})",
        architecture=target.architecture,
        input_shape=target.input_shape,
        macs=macs.macs,
        params=macs.params,
        plan_id="dense",
        method="dense",
        model=model,
        card=target.card,
        twin_of=target.label,
    )
