"""The run-directory contract: every path a command reads or writes, the resolved config, and the one set
of output checks (`--force`, `--resume`, foreign directories), shared by train, compress, export, bench
and report.

    RUN/config.yaml      resolved configuration, nested by stage (`train:`, and `method:` for compress)
    RUN/metrics.jsonl    one JSON line per epoch (plus per-step lines of pruning methods)
    RUN/checkpoint.pt    training state after the last finished epoch (resume point)
    RUN/model.pt         portable final model
    RUN/report.json      final numbers; its presence marks the run complete
    RUN/plan.json        the channel plan a pruning method applied (compress)
    RUN/export/          `lappdeploy export`: export.json marks it (model.onnx, engines, trtexec.sh)
    RUN/bench/           `lappdeploy bench`: bench.jsonl (append-only) and the report made from it

A directory is only ever replaced (`--force`) when its marker file says it is lappdeploy's own output of
the same kind; everything is checked before the first byte is written.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lappdeploy import __version__
from lappdeploy.config import RESUMABLE_CHANGES, TrainConfig, field_names, load_yaml_mapping, split_sections
from lappdeploy.data import DataRequest, DeviceLoader, create_dataset, fixed_subset
from lappdeploy.errors import ConfigError, ExportError, RunDirError
from lappdeploy.io import atomic_write_text, can_create_in, nearest_existing, read_json

__all__ = [
    "BENCH",
    "BENCH_FILE",
    "BENCH_REPORT_FILES",
    "CALIBRATION_BATCH",
    "EXPORT",
    "EXPORT_FILE",
    "RUN",
    "OutputKind",
    "RunConfig",
    "RunDir",
    "calibration_images",
    "check_appendable",
    "check_new_output",
    "check_resumable",
    "check_resumed_config",
    "check_writable",
    "config_yaml",
    "create_output",
    "data_request",
    "read_run_config",
    "resumable_config",
    "run_method",
    "write_run_config",
]

CONFIG_FILE = "config.yaml"
EXPORT_FILE = "export.json"
BENCH_FILE = "bench.jsonl"
# what `lappdeploy report` writes next to bench.jsonl (and may overwrite there)
BENCH_REPORT_FILES = {
    "csv": "bench.csv",
    "markdown": "bench.md",
    "latency_vs_macs": "latency_vs_macs.png",
    "speedup_vs_batch": "speedup_vs_batch.png",
}


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser())

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def bench_dir(self) -> Path:
        return self.root / "bench"


# --------------------------------------------------------------------------------------------------
# output checks: one set of rules for every kind of output directory


@dataclass(frozen=True)
class OutputKind:
    """A kind of output directory: what to call it, and the file that marks one as lappdeploy's."""

    noun: str  # "run directory"
    marker: str  # file name present in every complete or in-progress directory of this kind
    retry_hint: str  # how to keep the existing directory instead, e.g. "--resume to continue it"
    owned: frozenset[str] = frozenset()  # names an appendable directory may hold (bench)


RUN = OutputKind("run directory", CONFIG_FILE, "--resume to continue it")
EXPORT = OutputKind("export directory", EXPORT_FILE, "choose --out")
BENCH = OutputKind(
    "bench", BENCH_FILE, "choose --out", owned=frozenset({BENCH_FILE, "onnx", *BENCH_REPORT_FILES.values()})
)


def check_writable(path: str | os.PathLike[str]) -> Path:
    """`path` (expanded), after checking that it or its nearest existing ancestor is a writable directory."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} exists and is not a directory; choose another --out")
    anchor = nearest_existing(path)
    if not anchor.is_dir() or not can_create_in(anchor):
        raise RunDirError(f"cannot write to {path}: {anchor} is not a writable directory; choose another --out")
    return path


def check_new_output(path: str | os.PathLike[str], kind: OutputKind, *, force: bool = False) -> Path:
    """Validate `path` for a new output of `kind` without writing: absent, empty, or (with `force`) an
    earlier output of the same kind. A non-empty directory without the kind's marker is never replaced."""
    path = check_writable(path)
    if path.is_dir() and any(path.iterdir()):
        if not force:
            raise RunDirError(f"{kind.noun} {path} already exists; pass --force to overwrite it or {kind.retry_hint}")
        if not (path / kind.marker).is_file():
            raise RunDirError(
                f"{path} is not empty and not a lappdeploy {kind.noun} (no {kind.marker}); refusing to delete it "
                "even with --force; choose another --out"
            )
    return path


def check_appendable(path: str | os.PathLike[str], kind: OutputKind) -> Path:
    """Validate `path` for output that is added to an existing directory of `kind` (bench records): the
    directory may hold only the kind's own files."""
    path = check_writable(path)
    if path.is_dir() and any(p.name not in kind.owned for p in path.iterdir()):
        names = ", ".join(sorted(kind.owned))
        raise RunDirError(
            f"{path} holds files that are not lappdeploy {kind.noun} output ({names}); choose another --out"
        )
    return path


def check_resumable(path: str | os.PathLike[str]) -> RunDir:
    """The run directory to continue with --resume: it exists, is lappdeploy's, and is not complete."""
    run = RunDir(Path(path))
    if not run.root.is_dir():
        raise RunDirError(f"--resume: run directory {run.root} does not exist")
    if not run.config.is_file():
        raise RunDirError(f"--resume: {run.root} has no {CONFIG_FILE}, so it is not a lappdeploy run directory")
    if run.report.is_file():
        raise RunDirError(f"--resume: run {run.root} is already complete (report.json exists); nothing to resume")
    return run


def create_output(path: Path, *, force: bool) -> None:
    """Create a checked output directory, deleting the earlier output of the same kind under --force
    (only ever after `check_new_output` said it is one)."""
    if force and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------------------------------
# the resolved configuration


@dataclass(frozen=True)
class RunConfig:
    """A run's saved configuration: the training config, and for a compress run the pruning method's
    section ({"name": method, **its options}; typed by `lappdeploy.methods.method_config`)."""

    train: TrainConfig
    method: dict[str, Any] | None = None
    flat: bool = False  # a flat config.yaml, written by lappdeploy 0.1 (its training options still read)


def config_yaml(train: TrainConfig, method: dict[str, Any] | None = None) -> str:
    """The text of config.yaml: a header, then `train:` and (compress runs) `method:` sections."""
    header = f"# lappdeploy {__version__}: resolved config (flags > --config file > defaults)\n"
    data: dict[str, Any] = {"train": train.to_dict()}
    if method is not None:
        data["method"] = dict(method)
    return header + yaml.safe_dump(data, sort_keys=False)


def write_run_config(run: RunDir, train: TrainConfig, method: dict[str, Any] | None = None) -> None:
    atomic_write_text(run.config, config_yaml(train, method))


def read_run_config(run: RunDir) -> RunConfig:
    train, method, flat = split_sections(load_yaml_mapping(run.config))
    return RunConfig(TrainConfig.from_dict(train), method, flat)


# options a run resolves where they are unset (from the named weights): unset on resume, they resolve alike
RESOLVED_BY_RUN = frozenset({"mean", "std", "image_size"})


def resumable_config(run: RunDir) -> RunConfig:
    """The saved config of a run to resume; a flat config.yaml of 0.1 is refused naming the version."""
    saved = read_run_config(run)
    if saved.flat:
        raise ConfigError(
            f"--resume: {run.root} was written by lappdeploy 0.1 (a flat config.yaml); 0.3 resumes runs of 0.2 "
            "and later: finish it with lappdeploy 0.2, or start a new run"
        )
    return saved


def check_resumed_config(run: RunDir, train: TrainConfig, method: dict[str, Any] | None) -> None:
    """The resume contract, for the CLI and the Python API alike: a resumed run continues with the config it
    was started with (`train` resolved as a new run would be; `method` its `method:` section, None for a
    training run). Only where the data lives and how it is loaded may change (RESUMABLE_CHANGES); any other
    difference from config.yaml is a ConfigError naming each option with the given and the saved value."""
    saved = resumable_config(run)
    if saved.method is None and method is not None:
        raise ConfigError(
            f"--resume: {run.root} is a training run, not a compress run; resume it with `lappdeploy train`"
        )
    if saved.method is not None and method is None:
        raise ConfigError(f"--resume: {run.root} is a compress run; resume it with `lappdeploy compress --resume`")
    if method is not None and method.get("name") != saved.method.get("name"):
        raise ConfigError(
            f"--resume: {run.root} was compressed with --method {saved.method.get('name')}; drop --method "
            f"{method.get('name')}"
        )
    _refuse_differences(run, _differences(train, saved.train, method, saved.method))


def _differences(train, saved_train, method, saved_method) -> list[tuple[str, Any, Any]]:
    """(option, given, saved) of every option that may not change on resume and did. Method options the saved
    section lacks (added by a later version, at their defaults) are not compared."""
    differing = [
        (name, getattr(train, name), getattr(saved_train, name))
        for name in field_names(TrainConfig)
        if name not in RESUMABLE_CHANGES
        and not (name in RESOLVED_BY_RUN and getattr(train, name) is None)
        and getattr(train, name) != getattr(saved_train, name)
    ]
    for name, value in (method or {}).items():
        if name != "name" and name in saved_method and value != saved_method[name]:
            differing.append((name, value, saved_method[name]))
    return differing


def _refuse_differences(run: RunDir, differing: list[tuple[str, Any, Any]]) -> None:
    if differing:
        flag = lambda name: "--" + name.replace("_", "-")  # noqa: E731
        shown = ", ".join(f"{flag(n)} {given!r} (saved: {saved!r})" for n, given, saved in differing)
        raise ConfigError(
            f"--resume continues {run.root} with its saved config.yaml, and {shown} differ from it; drop "
            f"{', '.join(flag(n) for n, _, _ in differing)} (or start a new run)"
        )


def run_method(root: str | os.PathLike[str]) -> str | None:
    """The pruning method recorded in a compress run's report.json (None for other runs or no report)."""
    report = RunDir(Path(root)).report
    try:
        return read_json(report).get("method") if report.is_file() else None
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# reading a run's data (training resumes, INT8 calibration)

CALIBRATION_BATCH = 16  # images per calibration batch (TensorRT calibrator and ONNX Runtime alike)


def data_request(config: TrainConfig, image_size: int | None = None) -> DataRequest:
    """How to load the dataset of a run configured by `config` (at `image_size` px when given)."""
    return DataRequest(
        data_dir=config.data_dir,
        download=config.download,
        image_size=image_size if image_size is not None else config.image_size,
        augment=config.augment,
        synthetic_shape=config.synthetic_shape,
        synthetic_classes=config.synthetic_classes,
        synthetic_samples=config.synthetic_samples,
        seed=config.seed,
    )


def calibration_images(
    source: str | os.PathLike[str],
    card,
    count: int,
    *,
    data_dir: str | None = None,
    batch_size: int = CALIBRATION_BATCH,
) -> list[np.ndarray]:
    """Up to `count` images of the training set of the model at `source` (a run directory, or a checkpoint
    whose card names its dataset): the first of a fixed shuffle, no augmentation, normalised and resized
    exactly as in validation, as float32 batches of `batch_size` images."""
    source = Path(source)
    run = RunDir(source) if source.is_dir() else None
    image_size = int(card.input_shape[1])
    if run is not None and run.config.is_file():
        train = read_run_config(run).train  # the method's settings do not matter here
        if data_dir is not None:
            train = train.replace(data_dir=data_dir)
        dataset, request = train.dataset, data_request(train, image_size)
    elif card.dataset:
        dataset, request = card.dataset, DataRequest(data_dir=data_dir, image_size=image_size)
    else:
        raise ExportError("INT8 calibration needs images, but the checkpoint names no dataset; export a run directory")
    request = DataRequest(**{**request.__dict__, "augment": False, "download": False})
    bundle = create_dataset(dataset, request)
    subset = fixed_subset(bundle.train, count)
    loader = DeviceLoader(
        subset,
        batch_size=min(batch_size, len(subset)),
        train=False,
        batch_transform=bundle.val_batch_transform,
        device="cpu",
    )
    # equal batch sizes: TensorRT's calibrator has one batch size and ONNX Runtime's entropy calibration
    # stacks the batches' histograms; a smaller last batch is dropped
    batches = [images.numpy().astype(np.float32) for images, _ in loader]
    batches = [b for b in batches if b.shape[0] == batches[0].shape[0]]
    got = tuple(batches[0].shape[1:]) if batches else None
    if got != tuple(card.input_shape):
        raise ExportError(f"calibration images have shape {got}, the model expects {tuple(card.input_shape)}")
    return batches
