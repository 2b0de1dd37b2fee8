"""The pruned network's calibration passes, resumed from cached activations where the network traces.

Layers are solved front to back, each through the already refitted network before it, and each solve runs the
pruned network over the calibration images up to the layer (one to three times: its samples, its output
offset). From the input every time, that is (refitted layers) x (passes per layer) x (the network up to the
layer): on torchvision ResNet-50 at 224 px, 32 layers and 512 images, ~30 minutes on two CPU cores, 97% of
it in those passes. Everything upstream of the earliest module a remaining solve can still change is final,
so its result is computed once: with a torch.fx trace of the network, the values live at that point (the cut:
one or two tensors per image on a ResNet) are kept per batch, and each pass runs the traced graph from there.
The cut moves forward as layers are solved. The traced graph calls the very modules of the network (hooks and
in-place weight updates apply), and it is checked once to give the network's own output bit for bit; a network
that does not trace, or whose trace differs, runs from the input as before.

The cache is bounded (ReconstructionSettings.cache_bytes: the activations of all calibration images at the cut):
where the values at a cut would exceed it, the passes keep the previous cut (or the input) until a later, smaller
one.
"""

from __future__ import annotations

import contextlib
import logging
import operator
from collections.abc import Callable, Iterator

import torch
from torch import fx, nn

__all__ = ["StopForward", "StudentPasses", "evaluating"]

log = logging.getLogger(__name__)

_IN_PLACE_OPERATORS = {
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.imod,
    operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift, operator.setitem,
}  # fmt: skip


class StopForward(Exception):
    """Ends a forward pass as soon as the layer being solved has its input."""


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """`model` in eval mode without gradients, its training flag restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _traced(model: nn.Module, example: torch.Tensor) -> fx.GraphModule | None:
    """An fx trace of `model` (eval mode) that gives its output bit for bit on `example`, or None."""
    try:
        with evaluating(model):
            graph = fx.symbolic_trace(model)
            if len([n for n in graph.graph.nodes if n.op == "placeholder"]) != 1:
                return None
            same = _equal(graph(example), model(example))
    except Exception as exc:  # any network fx cannot trace runs its passes from the input
        log.debug("calibration passes from the input: %s does not trace (%s)", type(model).__name__, exc)
        return None
    return graph if same else None


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return False


def _mutates(node: fx.Node, graph: fx.GraphModule) -> bool:
    """Whether `node` may write into one of its inputs (an in-place operator, a method or module like add_ or
    ReLU(inplace=True)): a cached value it reads is copied before each pass."""
    if node.op == "call_function":
        return node.target in _IN_PLACE_OPERATORS or getattr(node.target, "__name__", "").endswith("_")
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_module":
        return bool(getattr(graph.get_submodule(node.target), "inplace", False))
    return False


def _bytes(values: dict) -> int:
    return sum(v.numel() * v.element_size() for v in values.values() if isinstance(v, torch.Tensor))


class StudentPasses:
    """Forward passes of the pruned network over the calibration batches (images.split(batch_size)), from the
    cached values at the cut where there is one, else from the input; `cache_limit` bounds the cache (bytes)."""

    def __init__(self, model: nn.Module, images: torch.Tensor, batch_size: int, cache_limit: int):
        self.model = model
        self.batches = images.split(batch_size)
        self.cache_limit = cache_limit
        self.graph = _traced(model, self.batches[0]) if len(images) else None
        self.nodes = list(self.graph.graph.nodes) if self.graph is not None else []
        self.cut = 0  # index of the first node a pass runs; 0: the whole network, eagerly
        self.cache: list[dict[fx.Node, object]] = []  # per batch, the values live at the cut
        self._copied: set[fx.Node] = set()  # cached values an in-place node reads: copied for each pass
        if self.graph is not None:
            self.interpreter = fx.Interpreter(self.graph)
            self._index = {node: i for i, node in enumerate(self.nodes)}

    @property
    def traced(self) -> bool:
        return self.graph is not None

    def run(self, before_batch: Callable[[int], None]) -> int:
        """One pass over every batch, `before_batch(index)` first; a StopForward raised by a hook ends that batch's
        pass. Returns how many batches ran to the end without being stopped."""
        finished = 0
        with evaluating(self.model):
            for index, batch in enumerate(self.batches):
                before_batch(index)
                with contextlib.suppress(StopForward):
                    self._forward(index, batch)
                    finished += 1
        return finished

    def advance(self, changing: list[str]) -> None:
        """Move the cut to the first node that runs (or reads a tensor of) a module named in `changing` (the modules
        the remaining solves write), if the values live there fit the cache limit."""
        if self.graph is None:
            return
        cut = self._first_node(changing)
        if cut <= self.cut:
            return
        with evaluating(self.model):
            moved = [self._execute(self._load(0), self.cut, cut)]
            if _bytes(moved[0]) * len(self.batches) > self.cache_limit:
                return  # keep the cut where it is: a later one may hold less
            for index in range(1, len(self.batches)):
                moved.append(self._execute(self._load(index), self.cut, cut))
                if self.cache:
                    self.cache[index] = {}  # batch by batch, so the old and new caches are never held whole
        self.cache = moved
        self.cut = cut
        self._copied = {n for n in self.cache[0] if any(_mutates(user, self.graph) for user in n.users)}

    def _first_node(self, changing: list[str]) -> int:
        prefixes = tuple(name + "." for name in changing)
        for i, node in enumerate(self.nodes):
            if node.op in ("call_module", "get_attr") and (node.target in changing or node.target.startswith(prefixes)):
                return i
        return len(self.nodes) - 1  # none runs: everything before the output is final

    def _load(self, index: int) -> dict:
        if self.cut == 0:
            return {self.nodes[0]: self.batches[index]}  # the placeholder: the batch itself
        return {n: (v.clone() if n in self._copied else v) for n, v in self.cache[index].items()}

    def _forward(self, index: int, batch: torch.Tensor) -> None:
        if self.cut == 0:
            self.model(batch)
        else:
            self._execute(self._load(index), self.cut, len(self.nodes))

    def _execute(self, env: dict, start: int, stop: int) -> dict:
        """Run nodes[start:stop] in `env` (the values live before `start`), dropping each value after its last
        use; returns the values live before `stop`."""
        self.interpreter.env = env
        for node in self.nodes[max(start, 1) : stop]:  # node 0 is the placeholder, given by _load
            env[node] = self.interpreter.run_node(node)
            for dead in self.interpreter.user_to_last_uses.get(node, []):
                env.pop(dead, None)
            if not node.users:
                env.pop(node, None)
        return env
