"""Shared fixtures: run the real CLI in-process, and small data sets in real on-disk formats."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lappdeploy.cli import main
from lappdeploy.testing import same_threads_env, write_fashion_mnist, write_tiny_run


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Call `lappdeploy ARGS...` in this process; returns exit code, stdout and stderr."""

    def run(*args) -> CliResult:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(int(exc.value.code or 0), captured.out, captured.err)

    return run


@pytest.fixture
def cli_process():
    """Start `python -m lappdeploy ARGS...` as a separate process (one thread, unbuffered, stderr piped)."""

    def start(*args) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "lappdeploy", *map(str, args)],
            env={**same_threads_env(1), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    return start


@pytest.fixture(scope="session")
def fake_fashion_dir(tmp_path_factory) -> Path:
    """Fashion-MNIST-format IDX files: 256 train / 64 val images."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"), n_train=256, n_val=64)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory (untrained tiny_resnet on 3x16x16 synthetic data: model.pt + config.yaml)."""
    return write_tiny_run(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(autouse=True)
def _restore_lappdeploy_logger():
    """The in-process CLI (`cli` fixture) installs a rich handler on the "lappdeploy" logger and stops
    propagation; undo it after every test so later tests' caplog/capfd see what they expect."""
    import logging

    logger = logging.getLogger("lappdeploy")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(autouse=True)
def _isolate_environment(monkeypatch, tmp_path):
    # Never let a developer's $LAPPDEPLOY_DATA or download cache change what a test sees.
    monkeypatch.delenv("LAPPDEPLOY_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    torch.set_num_threads(_THREADS)


# Under pytest-xdist the workers share the cores: more threads than cores makes OpenMP spin-wait and
# slows every worker down many times over.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))


PYTHON = sys.executable
