"""Running a saved model in a new Python process, to show a checkpoint rebuilds without this process's state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

__all__ = ["logits_in_fresh_process", "reload_errors_in_fresh_process", "same_threads_env"]

_SCRIPT = (
    "import sys, torch; from lappdeploy import load_model;"
    "m = load_model(sys.argv[1]).model; x = torch.load(sys.argv[2]);"
    "torch.save(m(x).detach(), sys.argv[3])"
)


def same_threads_env(threads: int | None = None) -> dict[str, str]:
    """This environment with a child Python's thread pool pinned at `threads` (default: this process's count).
    PyTorch sizes its pool from MKL_NUM_THREADS before OMP_NUM_THREADS, so both are set: an MKL_NUM_THREADS=2
    inherited from a job runner ran children on 2 threads against their parent's 1, and kernels whose reduction
    order follows the thread count gave other logits (DenseNet-121: 6e-7 apart; a Linear or a plain 3x3 conv did
    not change)."""
    count = str(threads or torch.get_num_threads())
    return {**os.environ, "OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count}


def logits_in_fresh_process(model_path: str | Path, images: torch.Tensor, workdir: str | Path) -> torch.Tensor:
    """The outputs on `images` of the portable checkpoint `model_path`, rebuilt by `load_model` in a new
    Python process (files exchanged through `workdir`)."""
    workdir = Path(workdir)
    torch.save(images, workdir / "images.pt")
    paths = [str(model_path), str(workdir / "images.pt"), str(workdir / "outputs.pt")]
    subprocess.run([sys.executable, "-c", _SCRIPT, *paths], check=True, timeout=120, env=same_threads_env())
    return torch.load(workdir / "outputs.pt")


_RELOAD_SCRIPT = (
    "import json, sys, torch\n"
    "from lappdeploy import load_model\n"
    "d = sys.argv[1]; worst = {}\n"
    "for name in sys.argv[2:]:\n"
    "    expected = torch.load(f'{d}/{name}.expected', weights_only=True)\n"
    "    model = load_model(f'{d}/{name}.pt').model\n"
    "    with torch.no_grad():\n"
    "        worst[name] = (model(expected['inputs']) - expected['logits']).abs().max().item()\n"
    "print(json.dumps({'threads': torch.get_num_threads(), 'errors': worst}))\n"
)


def reload_errors_in_fresh_process(saved_dir: str | Path, names: list[str]) -> dict[str, float]:
    """{name: max |logits - expected|} of each DIR/NAME.pt rebuilt by `load_model` in one new Python process,
    against DIR/NAME.expected ({"inputs", "logits"}), run with this process's thread count (checked: a count that
    differs would move the errors off zero for a reason other than the checkpoint)."""
    result = subprocess.run(
        [sys.executable, "-c", _RELOAD_SCRIPT, str(saved_dir), *names], capture_output=True, text=True, check=True,
        env=same_threads_env(),
    )  # fmt: skip
    reply = json.loads(result.stdout.strip().splitlines()[-1])
    if reply["threads"] != torch.get_num_threads():
        raise RuntimeError(f"the new process ran {reply['threads']} threads, this one {torch.get_num_threads()}")
    return reply["errors"]
