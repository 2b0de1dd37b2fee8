"""`import lappdeploy` stays cheap: no onnxruntime, tensorrt, matplotlib, and no CUDA initialisation."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("onnxruntime", "tensorrt", "matplotlib", "onnx")


def _modules_after(code: str) -> dict:
    probe = (
        "import sys, json\n"
        f"{code}\n"
        "torch = sys.modules.get('torch')\n"
        "cuda_init = bool(torch is not None and torch.cuda.is_initialized())\n"
        "print(json.dumps({'modules': sorted(sys.modules), 'cuda_initialized': cuda_init}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_import_lappdeploy_is_light():
    result = _modules_after("import lappdeploy")
    loaded = set(result["modules"])
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert "torch" not in loaded, "import lappdeploy should not even import torch"
    assert result["cuda_initialized"] is False


def test_library_and_cli_modules_do_not_pull_optional_dependencies():
    code = (
        "import lappdeploy, lappdeploy.models, lappdeploy.data, lappdeploy.train, lappdeploy.cli, lappdeploy.testing\n"
        "import lappdeploy.export, lappdeploy.export.run, lappdeploy.export.tensorrt, lappdeploy.export.trtexec\n"
        "import lappdeploy.bench.run, lappdeploy.bench.runtimes, lappdeploy.bench.trtexec_results\n"
        "import lappdeploy.report.bench_report\n"
        "lappdeploy.create_model('resnet20')\n"
        "lappdeploy.list_models()\n"
    )
    result = _modules_after(code)
    loaded = set(result["modules"])
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert result["cuda_initialized"] is False


def test_public_api_resolves_lazily():
    import lappdeploy

    for name in lappdeploy.__all__:
        assert getattr(lappdeploy, name) is not None, name
    assert lappdeploy.__version__.count(".") == 2


def test_single_version_source():
    from importlib import metadata

    import lappdeploy

    assert metadata.version("lappdeploy") == lappdeploy.__version__
