"""The pruned network's calibration passes, resumed from cached activations where the network traces.

Layers are solved front to back, each through the already refitted network before it, and each solve runs the
pruned network over the calibration images up to the layer (one to three times: its samples, its output
offset). From the input every time, that is (refitted layers) x (passes per layer) x (the network up to the
layer): on torchvision ResNet-50 at 224 px, 32 layers and 512 images, ~30 minutes on two CPU cores, 97% of
it in those passes. Everything upstream of the earliest module a remaining solve can still change is final,
so its result is computed once: with a torch.fx trace of the network, the values live at that point (the cut:
one or two tensors per image on a ResNet) are kept per batch, and each pass runs the traced graph from there.
The cut moves forward as layers are solved. The trace keeps every conv, linear and norm layer (subclasses
included) as one call of the network's own module, so hooks and in-place weight updates apply; it is checked
once to give the network's own output bit for bit. A network that does not trace, or whose trace differs,
runs from the input as before. Each pass works on copies of the cached values, so a node that writes into its
input (an in-place ReLU, a view written to) cannot change the cache.

The cache is bounded (ReconstructionSettings.cache_bytes: the activations of all calibration images at the cut):
where the values at a cut would exceed it, the passes keep the previous cut (or the input) until a later, smaller
one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
from torch import fx, nn

__all__ = ["StopForward", "StudentPasses", "evaluating"]

log = logging.getLogger(__name__)


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


class _LayerTracer(fx.Tracer):
    """Keeps every conv, linear and norm layer one call of its module, subclasses defined outside torch.nn too
    (a padded conv, a custom Linear), so the hooks the fits put on them fire and their names are node targets."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        kept = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase)
        return isinstance(module, kept) or super().is_leaf_module(module, qualified_name)


def _traced(model: nn.Module, example: torch.Tensor) -> fx.GraphModule | None:
    """An fx trace of `model` (eval mode) that gives its output bit for bit on `example`, or None."""
    name = type(model).__name__
    try:
        with evaluating(model):
            graph = fx.GraphModule(model, _LayerTracer().trace(model), name)
            if len([n for n in graph.graph.nodes if n.op == "placeholder"]) != 1:
                log.debug("calibration passes from the input: %s takes more than one input", name)
                return None
            same = _equal(graph(example), model(example))
    except Exception as exc:  # any network fx cannot trace runs its passes from the input
        log.debug("calibration passes from the input: %s does not trace (%s)", name, exc)
        return None
    if not same:
        log.debug("calibration passes from the input: the trace of %s computes another output", name)
    return graph if same else None


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return False


def _bytes(values: dict) -> int:
    sizes: list[int] = []
    for value in values.values():  # a value may be a tensor, a tuple of them (a split), or a number
        fx.node.map_aggregate(value, lambda v: sizes.append(v.numel() * v.element_size()) if _tensor(v) else None)
    return sum(sizes)


def _tensor(value) -> bool:
    return isinstance(value, torch.Tensor)


def _copy(value):
    return value.clone() if _tensor(value) else value


def _touches(node: fx.Node, name: str) -> bool:
    """Whether `node` calls module `name` (or one inside it, or the leaf holding it) or reads one of its tensors."""
    if node.op not in ("call_module", "get_attr"):
        return False
    return node.target == name or node.target.startswith(name + ".") or name.startswith(node.target + ".")


class StudentPasses:
    """Forward passes of the pruned network over the calibration batches (images.split(batch_size)), from the
    cached values at the cut where there is one, else from the input; `cache_limit` bounds the cache (bytes; 0:
    every pass from the input)."""

    def __init__(self, model: nn.Module, images: torch.Tensor, batch_size: int, cache_limit: int):
        self.model = model
        self.batches = images.split(batch_size)
        self.cache_limit = cache_limit
        self.graph = _traced(model, self.batches[0]) if len(images) and cache_limit > 0 else None
        self.nodes = list(self.graph.graph.nodes) if self.graph is not None else []
        self.cut = 0  # index of the first node a pass runs; 0: the whole network, eagerly
        self.cache: list[dict[fx.Node, torch.Tensor]] = []  # per batch, the values live at the cut
        if self.graph is not None:
            self.interpreter = fx.Interpreter(self.graph)

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
        the remaining solves write), if every one of them is found in the trace and the values live there fit the
        cache limit."""
        cut = self._first_node(changing) if self.graph is not None else None
        if cut is None or cut <= self.cut:
            return
        try:
            with evaluating(self.model):
                moved = [self._execute(self._load(0), self.cut, cut)]
                if _bytes(moved[0]) * len(self.batches) > self.cache_limit:
                    return  # keep the cut where it is: a later one may hold less
                for index in range(1, len(self.batches)):
                    moved.append(self._execute(self._load(index), self.cut, cut))
                    if self.cache:
                        self.cache[index] = {}  # batch by batch, so the old and new caches are never held whole
        except BaseException:
            self.cut, self.cache = 0, []  # the old cache may be half released: start over from the input
            raise
        self.cache, self.cut = moved, cut

    def _first_node(self, changing: list[str]) -> int | None:
        """The index of the first node that calls, or reads a tensor of, a module in `changing` (or one inside it,
        or the leaf module holding it); None where one of them is not in the trace."""
        firsts = [next((i for i, node in enumerate(self.nodes) if _touches(node, name)), None) for name in changing]
        if None in firsts:
            return None  # not called as a module here: nothing tells where it runs, so nothing is final
        return min(firsts, default=None)

    def _load(self, index: int) -> dict:
        """The values a pass of batch `index` starts from: copies of the cached ones (a node may write into its
        input), or the batch itself at the placeholder."""
        if self.cut == 0:
            return {self.nodes[0]: self.batches[index]}
        return {node: fx.node.map_aggregate(value, _copy) for node, value in self.cache[index].items()}

    def _forward(self, index: int, batch: torch.Tensor) -> None:
        if self.cut == 0:
            self.model(batch)
        else:
            self._execute(self._load(index), self.cut, len(self.nodes))

    def _execute(self, env: dict, start: int, stop: int) -> dict:
        """Run nodes[start:stop] in `env` (the values live before `start`), dropping each value after its last
        use; returns the values live before `stop`."""
        self.interpreter.env = env
        try:
            for node in self.nodes[max(start, 1) : stop]:  # node 0 is the placeholder, given by _load
                env[node] = self.interpreter.run_node(node)
                for dead in self.interpreter.user_to_last_uses.get(node, []):
                    env.pop(dead, None)
                if not node.users:
                    env.pop(node, None)
        finally:
            self.interpreter.env = {}  # a stopped pass's activations go with its env
        return env
