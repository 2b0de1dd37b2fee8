"""A saved model rerun in a new Python process runs on this process's thread count and gives its logits bit for
bit, whatever OMP_NUM_THREADS / MKL_NUM_THREADS the shell hands down (the reload tests of the model zoos rely on
it)."""

from __future__ import annotations

import subprocess
import sys

import torch

from lappdeploy import create_model, save_model
from lappdeploy.models.portable import model_card
from lappdeploy.testing import reload_errors_in_fresh_process, same_threads_env


def test_a_child_runs_this_process_thread_count_whatever_the_shell_exports(monkeypatch):
    # PyTorch reads MKL_NUM_THREADS before OMP_NUM_THREADS: pinning only the latter left a job runner's
    # MKL_NUM_THREADS=2 in charge of children whose parent ran one thread.
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(1)
    code = "import torch; print(torch.get_num_threads())"
    child = subprocess.run([sys.executable, "-c", code], env=same_threads_env(), capture_output=True, text=True)
    assert child.stdout.strip() == "1", child.stderr[-500:]


def test_an_inherited_mkl_thread_count_does_not_change_the_reloaded_logits(tmp_path, monkeypatch):
    # With the child on 2 threads and this process on 1, MobileNetV3-small's logits here came out 1.7e-16 apart
    # (DenseNet-121's 6e-7): kernels whose reduction order follows the thread count.
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
    save_model(model, tmp_path / "m.pt", model_card(model, input_shape=(3, 32, 32)))
    torch.save({"inputs": x, "logits": logits}, tmp_path / "m.expected")
    assert reload_errors_in_fresh_process(tmp_path, ["m"]) == {"m": 0.0}
