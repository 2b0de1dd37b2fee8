"""What produced a number: library versions and the machine (recorded with every report)."""

from __future__ import annotations

import platform
from importlib import metadata

__all__ = ["package_version", "versions"]

_PACKAGES = ("lappdeploy", "torch", "torchvision", "torch-pruning", "numpy")


def package_version(name: str) -> str | None:
    """Installed distribution version (importlib.metadata: torch-pruning's own __version__ is stale)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    out.update({name: package_version(name) for name in _PACKAGES})
    if out["lappdeploy"] is None:  # running from a source tree that is not installed
        from lappdeploy import __version__

        out["lappdeploy"] = __version__
    return out
