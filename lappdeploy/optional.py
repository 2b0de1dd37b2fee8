"""Lazy imports: the one place heavy optional dependencies are imported (with an actionable error), and
the PEP 562 `__getattr__` that packages use to load their public names on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from lappdeploy.errors import MissingDependencyError

__all__ = ["lazy_exports", "require"]

# module name -> extra of lappdeploy that installs it
_EXTRA_FOR = {
    "onnx": "onnx",
    "onnxruntime": "ort",  # or lappdeploy[ort-gpu]: onnxruntime-gpu (never both)
    "onnxslim": "onnx",
    "modelopt": "modelopt",  # FP16 (AutoCast) and INT8 Q/DQ graphs
    "tensorrt": "trt",
    "matplotlib": "report",
    "timm": "timm",
    "safetensors": "safetensors",
    "tensorboard": "tensorboard",
    "openvino": "openvino",
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


def lazy_exports(namespace: dict[str, Any], package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) that imports `table[name]` (a module path) on the first access of
    `name` and caches the value in `namespace` (the package's globals()), so later look-ups are plain."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
