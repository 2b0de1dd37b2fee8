"""Running a saved model in a new Python process, to show a checkpoint rebuilds without this process's state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

__all__ = ["logits_in_fresh_process", "reload_errors_in_fresh_process"]

_SCRIPT = (
    "import sys, torch; from lappdeploy import load_model;"
    "m = load_model(sys.argv[1]).model; x = torch.load(sys.argv[2]);"
    "torch.save(m(x).detach(), sys.argv[3])"
)


def _same_threads_env() -> dict[str, str]:
    """This environment with the new process's OpenMP and MKL pools at this process's thread count: bit-equal
    outputs need the same reduction order, and an MKL_NUM_THREADS inherited from the shell (a job runner's,
    say) would otherwise make some kernels split their work differently from here (measured: DenseNet-121's
    logits 6e-7 apart, MobileNetV3-small's 2e-16; a plain Linear or 3x3 conv was unaffected)."""
    threads = str(torch.get_num_threads())
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def logits_in_fresh_process(model_path: str | Path, images: torch.Tensor, workdir: str | Path) -> torch.Tensor:
    """The outputs on `images` of the portable checkpoint `model_path`, rebuilt by `load_model` in a new
    Python process (files exchanged through `workdir`)."""
    workdir = Path(workdir)
    torch.save(images, workdir / "images.pt")
    paths = [str(model_path), str(workdir / "images.pt"), str(workdir / "outputs.pt")]
    subprocess.run([sys.executable, "-c", _SCRIPT, *paths], check=True, timeout=120, env=_same_threads_env())
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
    "print(json.dumps(worst))\n"
)


def reload_errors_in_fresh_process(saved_dir: str | Path, names: list[str]) -> dict[str, float]:
    """{name: max |logits - expected|} of each DIR/NAME.pt rebuilt by `load_model` in one new Python process,
    against DIR/NAME.expected ({"inputs", "logits"}), run with this process's thread count."""
    result = subprocess.run(
        [sys.executable, "-c", _RELOAD_SCRIPT, str(saved_dir), *names], capture_output=True, text=True, check=True,
        env=_same_threads_env(),
    )  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])
