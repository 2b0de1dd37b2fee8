"""lappdeploy: deployment-oriented CNN compression (LAPP pruning from scratch, export, benchmarks).

Importing the package is cheap: it imports neither torch's CUDA runtime, nor onnxruntime, tensorrt
or matplotlib. The public names below resolve lazily on first use (PEP 562).
"""

from __future__ import annotations

from lappdeploy.optional import lazy_exports

__version__ = "0.3.0"

# public name -> module that defines it
_LAZY_EXPORTS = {
    "LappDeployError": "lappdeploy.errors",
    "TrainConfig": "lappdeploy.config",
    "PruneConfig": "lappdeploy.methods",
    "LappConfig": "lappdeploy.methods",
    "UniformConfig": "lappdeploy.methods",
    "GlobalConfig": "lappdeploy.methods",
    "LaaspConfig": "lappdeploy.methods",
    "PcpConfig": "lappdeploy.methods",
    "LdrfConfig": "lappdeploy.methods",
    "ExportConfig": "lappdeploy.config",
    "BenchConfig": "lappdeploy.config",
    "create_model": "lappdeploy.models",
    "list_models": "lappdeploy.models",
    "register_model": "lappdeploy.models",
    "count_macs": "lappdeploy.models",
    "save_model": "lappdeploy.surgery.portable",
    "load_model": "lappdeploy.surgery.portable",
    "create_dataset": "lappdeploy.data",
    "list_datasets": "lappdeploy.data",
    "register_dataset": "lappdeploy.data",
    "Trainer": "lappdeploy.train",
    "Hook": "lappdeploy.hooks",
    "run_training": "lappdeploy.train",
    "run_compress": "lappdeploy.methods.compress",
    "to_onnx": "lappdeploy.export",
    "export_run": "lappdeploy.export",
    "bench_runs": "lappdeploy.bench",
}

__all__ = ["__version__", *_LAZY_EXPORTS]


__getattr__ = lazy_exports(globals(), __name__, _LAZY_EXPORTS)


def __dir__() -> list[str]:
    return sorted(__all__)
