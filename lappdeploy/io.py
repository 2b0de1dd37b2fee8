"""Atomic file output: write to a temporary file in the same directory, fsync, then rename.

A reader (or a crash) never sees a half-written checkpoint, report or config.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_open",
    "atomic_torch_save",
    "atomic_write_json",
    "atomic_write_text",
    "cache_root",
    "can_create_in",
    "give_default_permissions",
    "nearest_existing",
    "read_json",
]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file next to `path`; on clean exit rename it over `path`, else delete it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def give_default_permissions(path: str | os.PathLike[str]) -> None:
    """chmod a file or directory made by mkstemp/mkdtemp (0600/0700) to what open()/mkdir() would give."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path) as handle:
        return json.load(handle)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def nearest_existing(path: str | os.PathLike[str]) -> Path:
    """`path` itself or its closest existing ancestor (where a new directory would be created)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def can_create_in(directory: str | os.PathLike[str]) -> bool:
    """Probe by creating and removing an empty directory: permission bits do not tell (root, read-only
    mounts, /proc)."""
    try:
        probe = tempfile.mkdtemp(prefix=".lappdeploy-write-probe-", dir=directory)
    except OSError:
        return False
    os.rmdir(probe)
    return True


def cache_root() -> Path:
    """lappdeploy's cache directory: $XDG_CACHE_HOME/lappdeploy, else ~/.cache/lappdeploy (downloads,
    TensorRT timing caches, latency tables)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lappdeploy"
