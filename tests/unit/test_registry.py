from __future__ import annotations

import pytest

from lappdeploy.errors import UnknownNameError
from lappdeploy.registry import Registry


def test_duplicate_names_raise():
    reg: Registry[int] = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("a", 2)


def test_unknown_name_suggests_close_matches():
    reg: Registry[int] = Registry("widget")
    for name in ("resnet20", "resnet32", "vgg16"):
        reg.add(name, 0)
    with pytest.raises(UnknownNameError) as exc:
        reg.get("resnet21")
    message = str(exc.value)
    assert "unknown widget 'resnet21'" in message
    assert "resnet20" in message and "vgg16" not in message


def test_unknown_name_without_match_lists_few_names_or_points_to_list():
    small: Registry[int] = Registry("widget")
    small.add("alpha", 0)
    assert "valid names: alpha" in small.unknown_message("zzz")
    big: Registry[int] = Registry("widget")
    for i in range(30):
        big.add(f"name{i}", i)
    message = big.unknown_message("qqqqqq")
    assert "no close match among 30 widgets" in message
    assert "name7" not in message


def test_loader_runs_once_on_first_query():
    calls = []
    reg: Registry[int] = Registry("widget")
    reg.add_loader(lambda r: (calls.append(1), r.add("lazy", 7)))
    assert calls == []
    assert reg.get("lazy") == 7
    assert "lazy" in reg and len(reg) == 1
    assert calls == [1]


def test_every_built_in_method_is_declared_in_the_entry_point_group():
    """Built-in and installed methods are found the same way (setup.cfg declares the built-in ones; after an
    edit there, `make install` refreshes the installed metadata)."""
    from importlib.metadata import entry_points

    from lappdeploy.methods import ENTRY_POINT_GROUP, METHODS

    declared = {entry.name: entry.value for entry in entry_points(group=ENTRY_POINT_GROUP)}
    for name in ("lapp", "uniform", "global", "laasp", "pcp", "ldrf"):
        assert name in METHODS.names() and declared.get(name, "").startswith("lappdeploy.methods."), declared
