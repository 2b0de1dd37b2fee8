"""Running a saved model in a new Python process, to show a checkpoint rebuilds without this process's state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

__all__ = ["logits_in_fresh_process"]

_SCRIPT = (
    "import sys, torch; from lappdeploy import load_model;"
    "m = load_model(sys.argv[1]).model; x = torch.load(sys.argv[2]);"
    "torch.save(m(x).detach(), sys.argv[3])"
)


def logits_in_fresh_process(model_path: str | Path, images: torch.Tensor, workdir: str | Path) -> torch.Tensor:
    """The outputs on `images` of the portable checkpoint `model_path`, rebuilt by `load_model` in a new
    Python process (files exchanged through `workdir`)."""
    workdir = Path(workdir)
    torch.save(images, workdir / "images.pt")
    paths = [str(model_path), str(workdir / "images.pt"), str(workdir / "outputs.pt")]
    subprocess.run([sys.executable, "-c", _SCRIPT, *paths], check=True, timeout=120)
    return torch.load(workdir / "outputs.pt")
