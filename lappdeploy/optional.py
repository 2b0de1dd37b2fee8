"""The one place heavy optional dependencies are imported (lazily, with an actionable error)."""

from __future__ import annotations

import importlib
from types import ModuleType

from lappdeploy.errors import MissingDependencyError

__all__ = ["require"]

# module name -> extra of lappdeploy that installs it
_EXTRA_FOR = {
    "onnx": "onnx",
    "onnxruntime": "ort",  # or lappdeploy[ort-gpu]: onnxruntime-gpu (never both)
    "onnxslim": "onnx",
    "modelopt": "modelopt",  # FP16 (AutoCast) and INT8 Q/DQ graphs
    "tensorrt": "trt",
    "matplotlib": "report",
}


def require(module: str, *, purpose: str) -> ModuleType:
    """Import `module` or raise one clear line saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = _EXTRA_FOR.get(top)
        how = f"pip install 'lappdeploy[{extra}]'" if extra else f"pip install {top}"
        raise MissingDependencyError(f"{purpose} needs {top!r}, which is not installed ({exc}); fix: {how}") from None
