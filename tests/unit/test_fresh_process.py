"""A saved model rerun in a new process gives this process's logits bit for bit, whatever thread settings the
shell hands down (the reload tests of the model zoos rely on it)."""

from __future__ import annotations

import torch

from lappdeploy import create_model, save_model
from lappdeploy.models.portable import model_card
from lappdeploy.testing import reload_errors_in_fresh_process


def test_an_inherited_mkl_thread_count_does_not_change_the_reloaded_logits(tmp_path, monkeypatch):
    # A job runner exporting MKL_NUM_THREADS=2 made the new process split some kernels (MobileNetV3's among
    # them) differently from this one, run at torch.get_num_threads() == 1: logits 1e-16 to 2e-6 apart.
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
