"""A pruning method from another package: tests/fixtures/random_method, installed for real (pip, into a
folder on PYTHONPATH), is found through the `lappdeploy.methods` entry-point group; its flag appears in
`compress --help` and `list methods`; `compress --method random` runs end to end under a parameter budget;
its option given to another method is a one-line error; a plug-in that fails to import is left out with a
warning. The README's plug-in example is this package's files, word for word."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "tests" / "fixtures" / "random_method"
RUN = [
    "--model", "tiny_resnet", "--dataset", "synthetic", "--synthetic-shape", "3x16x16", "--synthetic-samples", "64",
    "--batch-size", "32", "--epochs", "2", "--prune-epochs", "1", "--round-to", "1", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The plug-in installed by pip into a folder, with a broken plug-in's distribution beside it."""
    work = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(PLUGIN, work / "source")  # pip builds in the source tree: not in the repository's
    target = work / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target"]
    subprocess.run([*pip, str(target), str(source)], check=True, capture_output=True, timeout=300)
    broken = target / "lappdeploy_broken-0.1.dist-info"
    broken.mkdir()
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: lappdeploy-broken\nVersion: 0.1\n")
    (broken / "entry_points.txt").write_text("[lappdeploy.methods]\nbroken = lappdeploy_no_such_module\n")
    return target


def _lappdeploy(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    command = [sys.executable, "-m", "lappdeploy", *map(str, args)]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_an_installed_method_is_listed_and_a_broken_one_left_out_with_a_warning(site):
    listed = _lappdeploy(site, "list", "methods")
    assert listed.returncode == 0, listed.stderr
    assert "random" in listed.stdout and "--random-seed 0" in listed.stdout
    assert "lapp" in listed.stdout and "pcp" in listed.stdout, "the built-in methods are found too"
    assert "'broken'" in listed.stderr and "failed to import" in listed.stderr, listed.stderr
    helped = _lappdeploy(site, "compress", "--help")
    assert "random options (--method random):" in helped.stdout and "--random-seed" in helped.stdout


def test_compress_runs_an_installed_method_end_to_end(site, tmp_path):
    out = tmp_path / "run"
    done = _lappdeploy(site, "compress", *RUN, "--method", "random", "--random-seed", "3", "--target-params", "0.5",
                       "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "random" and report["random_seed"] == 3
    assert report["budget"]["kind"] == "params" and report["budget"]["ratio"] <= 0.5
    assert report["method_options"]["name"] == "random"
    refused = _lappdeploy(site, "compress", *RUN, "--method", "uniform", "--random-seed", "3", "--out", tmp_path / "x")
    assert refused.returncode == 2 and not (tmp_path / "x").exists()
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith("Error: --random-seed is an option of method random, not of uniform")
    ), refused.stderr


@pytest.mark.parametrize("name", ["pyproject.toml", "lappdeploy_random/__init__.py", "lappdeploy_random/hook.py"])
def test_the_readme_plugin_example_is_the_tested_package(name):
    readme = (ROOT / "README.md").read_text()
    text = (PLUGIN / name).read_text().strip()
    assert text in readme, f"README's plug-in example differs from tests/fixtures/random_method/{name}"
