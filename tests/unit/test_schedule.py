from __future__ import annotations

import itertools
import math

import pytest

from lappdeploy.train.schedule import LRSchedule


def test_cosine_starts_at_base_and_ends_near_zero():
    s = LRSchedule(base_lr=0.1, steps_per_epoch=10, epochs=4)
    assert s(0) == pytest.approx(0.1)
    assert s(20) == pytest.approx(0.05)  # half-way
    assert s(39) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 39 / 40)))
    values = [s(i) for i in range(40)]
    assert all(a >= b for a, b in itertools.pairwise(values)), "cosine must not increase"


def test_warmup_is_linear_then_cosine():
    s = LRSchedule(base_lr=0.2, steps_per_epoch=10, epochs=3, warmup_epochs=1)
    assert [round(s(i), 6) for i in range(3)] == [0.02, 0.04, 0.06]
    assert s(9) == pytest.approx(0.2)
    assert s(10) == pytest.approx(0.2)
    assert s(29) < 0.01


def test_step_schedule_default_and_explicit_milestones():
    s = LRSchedule(base_lr=1.0, steps_per_epoch=10, epochs=8, kind="step")  # milestones 4 and 6
    assert s(39) == 1.0 and s(40) == pytest.approx(0.1) and s(60) == pytest.approx(0.01)
    s = LRSchedule(base_lr=1.0, steps_per_epoch=10, epochs=8, kind="step", milestones=(2,), gamma=0.5)
    assert s(19) == 1.0 and s(20) == 0.5 and s(79) == 0.5
