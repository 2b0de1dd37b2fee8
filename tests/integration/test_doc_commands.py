"""Every `lappdeploy` command in the README's and docs/'s shell blocks, so the documentation cannot drift from the
CLI: each one is parsed by the real command line (its options, their values and choices; a --config file is
read), and each page's commands then run in order, as a reader would type them, with tiny settings (a few
Fashion-MNIST-format images, 1-2 epochs, short timings) in a scratch directory where the earlier commands left
their runs. A command that needs what this machine has not (a GPU, TensorRT, a Jetson, CIFAR, the internet) is
skipped with that reason."""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
from pathlib import Path

import click
import pytest
import torch

from lappdeploy.cli import cli

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", re.S | re.M)


def page_commands(page: str) -> list[tuple[int, list[str]]]:
    """(line, argv) of every `lappdeploy ...` line of the page's shell blocks (continuations joined, comments
    dropped)."""
    text = (ROOT / page).read_text()
    found = []
    for match in _BLOCK.finditer(text):
        first = text[: match.start(1)].count("\n") + 1
        joined = match.group(1).replace("\\\n", " ")
        for offset, line in enumerate(joined.splitlines()):
            argv = shlex.split(line, comments=True)
            if argv[:1] == ["lappdeploy"]:
                found.append((first + offset, argv[1:]))
    return found


ALL = [pytest.param(page, line, argv, id=f"{page}:{line}") for page in PAGES for line, argv in page_commands(page)]


def test_the_docs_have_commands_to_check():
    assert len(ALL) >= 30, "the extraction of documented commands broke"


@pytest.mark.parametrize(("page", "line", "argv"), ALL)
def test_every_documented_command_parses(page, line, argv, monkeypatch):
    """The subcommand exists and accepts every option and value as written (nothing runs)."""
    if "..." in argv:
        pytest.skip("elided (...) in the docs")
    monkeypatch.chdir(ROOT)  # --config files are read relative to the repository, as a reader runs them
    group = cli.make_context("lappdeploy", [argv[0]], resilient_parsing=True)
    command = cli.get_command(group, argv[0])
    assert command is not None, f"{page}:{line}: no command {argv[0]!r}"
    with contextlib.suppress(click.exceptions.Exit):  # --help
        command.make_context(argv[0], list(argv[1:]), parent=group)


# --------------------------------------------------------------------------------------------------
# running them, tiny


def _skip_reason(argv: list[str]) -> str | None:
    text = " ".join(argv)
    reasons = [
        ("...", "elided (...) in the docs"),
        ("~/", "runs on the Jetson"),
        ("--runtime trt", "needs TensorRT and a GPU"),
        ("--runtime trtexec", "needs trtexec results from a device"),
        ("--ingest", "needs a directory timed on a device"),
        ("jetson-bench", "reads bench results timed on a Jetson"),
        ("--precision int8", "a tiny untrained run's INT8 graph is refused by the export's parity check"),
        ("--device cuda", "needs a GPU"),
        ("cifar10", "CIFAR-10 is not on this machine"),
        ("--resume", "nothing to resume: the run finished"),
    ]
    return next((reason for marker, reason in reasons if marker in text), None)


def _set(argv: list[str], flag: str, value: str | None) -> list[str]:
    """argv with `flag`'s value replaced (appended where absent; removed with value None)."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == flag:
            skip = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            continue
        out.append(arg)
    return out if value is None else [*out, flag, value]


def _value(argv: list[str], flag: str, default: str) -> str:
    return argv[argv.index(flag) + 1] if flag in argv else default


def tiny(argv: list[str], data_dir: Path) -> list[str]:
    """The command with tiny settings: the same command, options and runs, on little data and short timings."""
    command = argv[0]
    if "--help" in argv or command in ("list", "inspect", "report"):
        return argv
    if "fashion-mnist" in argv or command in ("train", "compress"):
        argv = _set(argv, "--data-dir", str(data_dir))
    if command in ("train", "compress"):
        epochs = 0 if _value(argv, "--epochs", "2") == "0" else 2
        argv = _set(_set(_set(argv, "--epochs", str(epochs)), "--batch-size", "32"), "--train-subset", "672")
        argv = _set(_set(argv, "--val-subset", "32"), "--holdout", "576")
        if "--prune-epochs" in argv:
            argv = _set(argv, "--prune-epochs", str(min(int(_value(argv, "--prune-epochs", "1")), max(epochs - 1, 0))))
        if ("--method" in argv and _value(argv, "--method", "") in ("ldrf", "pcp", "laasp")) or "--reconstruct" in argv:
            # 520: ResNet-18's classifier reads 512 pooled features plus its offset, one sample per image
            argv = _set(_set(argv, "--calib-images", "520"), "--calib-positions", "4")
    if command == "bench":
        argv = _set(_set(_set(argv, "--min-seconds", "0.1"), "--warmup-seconds", "0"), "--min-samples", "3")
    if command == "profile":
        argv = [*_set(_set(_set(argv, "--points", "2"), "--batch", "2"), "--no-probe-steps", None), "--no-probe-steps"]
    return argv


_ARCHITECTURE = {"r18": "resnet18", "r20": "resnet20", "r56": "resnet56"}  # as the docs name their runs


def _inputs(argv: list[str]) -> list[str]:
    """The run directories (and bench directories) a command reads: not what it writes (--out)."""
    after_out = {argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("--out", "-o")}
    return [a for a in argv[1:] if a.startswith("runs/") and a not in after_out]


def given(argv: list[str], cli, data_dir: Path) -> None:
    """What a page's command reads but the page does not make (a trained dense run it assumes, a bench
    directory of an earlier section): made here, tiny, the way the docs say elsewhere."""
    for path in _inputs(argv):
        if Path(path).exists():
            continue
        if path.endswith("/bench"):
            given([argv[0], path[: -len("/bench")]], cli, data_dir)
            result = cli("bench", path[: -len("/bench")], "--min-seconds", "0.1", "--warmup-seconds", "0",
                         "--min-samples", "3", "--batch", "1")  # fmt: skip
        else:
            model = next((arch for tag, arch in _ARCHITECTURE.items() if tag in Path(path).name), "resnet20")
            result = cli(*tiny(["train", "--model", model, "--dataset", "fashion-mnist", "--out", path], data_dir))
        assert result.code == 0, f"making {path}: {result.err}"


@pytest.fixture(scope="module")
def doc_data(tmp_path_factory) -> Path:
    """Fashion-MNIST-format files with enough held-out images for the post-training recipes (calibration)."""
    from lappdeploy.testing import write_fashion_mnist

    return write_fashion_mnist(tmp_path_factory.mktemp("doc_fashion"), n_train=768, n_val=64)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A working directory holding the repository's configs and a user's ResNet-18 weights (r18.pth)."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    torch.manual_seed(0)
    from lappdeploy.models import create_model

    torch.save(create_model("resnet18", num_classes=10, in_channels=1).state_dict(), tmp_path / "r18.pth")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if page_commands(p)])
def test_every_documented_command_runs(page, cli, scratch, doc_data):
    ran, skipped = 0, []
    for line, argv in page_commands(page):
        reason = _skip_reason(argv)
        if reason is not None:
            skipped.append(f"{line}: {reason}")
            continue
        given(argv, cli, doc_data)
        result = cli(*tiny(argv, doc_data))
        if "--trt" in argv:  # no TensorRT here: trtexec.sh is written and the exit code says so
            assert result.code == 3, f"{page}:{line}: {result.err}"
        else:
            assert result.code == 0, f"{page}:{line}: lappdeploy {' '.join(argv)}\n{result.err}"
        ran += 1
    assert ran or skipped
