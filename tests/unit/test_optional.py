from __future__ import annotations

import sys

import pytest

from lappdeploy.errors import MissingDependencyError
from lappdeploy.optional import require


def test_require_returns_the_module():
    assert require("json", purpose="testing").dumps([1]) == "[1]"


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails, also where TensorRT is installed
    with pytest.raises(MissingDependencyError) as exc:
        require("tensorrt", purpose="building engines")
    assert "building engines needs 'tensorrt'" in str(exc.value)
    assert "pip install 'lappdeploy[trt]'" in str(exc.value)


def test_unknown_package_gets_a_plain_pip_hint():
    with pytest.raises(MissingDependencyError, match="pip install no_such_package_xyz"):
        require("no_such_package_xyz", purpose="testing")
