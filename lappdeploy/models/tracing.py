"""One switch for the surgery's dependency trace: modules that torch-pruning cannot follow op by op
(ChannelShuffle, the width bypass's channel scatter and its deploy form) run as one autograd node while
it is on, so the trace sees each of them as a single layer that the surgery registers as a barrier."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["as_one_op", "one_op_active"]

_ONE_OP = {"active": False}


def one_op_active() -> bool:
    """True inside `as_one_op()`."""
    return _ONE_OP["active"]


@contextlib.contextmanager
def as_one_op() -> Iterator[None]:
    """Within this block the barrier modules run as one autograd node each (for dependency tracing)."""
    before = _ONE_OP["active"]
    _ONE_OP["active"] = True
    try:
        yield
    finally:
        _ONE_OP["active"] = before
