"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

__all__ = [
    "BenchError",
    "ConfigError",
    "DataNotFoundError",
    "ExportError",
    "LappDeployError",
    "MissingDependencyError",
    "RunDirError",
    "SurgeryError",
    "TensorRTUnavailableError",
    "UnknownNameError",
    "first_line",
]


class LappDeployError(Exception):
    """Base class for problems caused by the input (not by a bug); the message says how to fix it."""

    exit_code = 2


class ConfigError(LappDeployError, ValueError):
    """A configuration value is invalid."""


class UnknownNameError(LappDeployError, KeyError):
    """A registry was asked for a name it does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataNotFoundError(LappDeployError, FileNotFoundError):
    """A dataset's files are not where we looked."""


class RunDirError(LappDeployError):
    """A run directory cannot be created, written or resumed."""


class SurgeryError(LappDeployError):
    """A model or plan cannot be operated on as asked."""


class MissingDependencyError(LappDeployError, ImportError):
    """An optional dependency is not installed."""


class ExportError(LappDeployError):
    """A model cannot be exported, or its export does not pass the checks (checker, parity, MACs)."""


class BenchError(LappDeployError):
    """A model cannot be timed as asked (missing engine, a runtime that fell back to another device...)."""


class TensorRTUnavailableError(LappDeployError):
    """--trt without the TensorRT Python package: the ONNX and a trtexec.sh were written instead.

    Exit code 3, distinct from bad input (2): the export itself succeeded; the engine must be built on
    the target."""

    exit_code = 3


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type's name when empty), for one-line errors that
    wrap a library's multi-line ones (ONNX Runtime, torch.onnx, ModelOpt)."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]
