"""Torch-Pruning's dependency graph, as this package uses it: building one (with the recurrent layers' pruner),
removing channels for real (``shrink``), and the removal as data (``Structure``) that ``rebuild`` replays on a
freshly built model of the same factory, so an exported smaller model loads without unpickling a module."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from autoprune.errors import ModelError

if TYPE_CHECKING:
    from autoprune.pruning.channels import ChannelGraph


def _quiet(fn: Callable) -> Callable:
    """``fn`` with Torch-Pruning's warnings (unwrapped parameters, shape inference) silenced: what it builds is
    checked here, by the probes and by the callers' comparisons."""

    @functools.wraps(fn)
    def quiet(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)

    return quiet


def _dependency_graph(model: nn.Module, example: Tensor):
    import torch_pruning as tp

    from autoprune.pruning._recurrent import RECURRENT_PRUNERS

    return tp.DependencyGraph().build_dependency(
        model, example_inputs=example, customized_pruners=dict(RECURRENT_PRUNERS)
    )


@dataclass(frozen=True)
class Structure:
    """A structured removal as plain data: for each group, the root module path and the channels removed, in the
    order they were removed. ``rebuild`` replays it on the dense model of the same architecture."""

    removed: tuple[tuple[str, tuple[int, ...]], ...]

    def to_data(self) -> list[list]:
        return [[root, list(idxs)] for root, idxs in self.removed]

    @classmethod
    def from_data(cls, data: object, where: str = "structure") -> Structure:
        if not isinstance(data, list):
            raise ModelError(f"{where} must be a list of [module path, [channel, ...]], got {type(data).__name__}")
        removed = []
        for item in data:
            ok = isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], list)
            if not ok or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in item[1]):
                raise ModelError(f"{where}: each entry must be [module path, [channel, ...]], got {item!r:.80}")
            removed.append((item[0], tuple(item[1])))
        return cls(tuple(removed))


@_quiet
def shrink(
    model: nn.Module, graph: ChannelGraph, removed: Mapping[str, Tensor], input_shape: Sequence[int]
) -> Structure:
    """Remove the ``removed`` channels of each group from ``model`` in place; the removal as data."""
    x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    was = model.training
    model.eval()
    dg = _dependency_graph(model, x)
    modules = dict(model.named_modules())
    done = []
    for name, idx in removed.items():
        idxs = sorted(int(i) for i in idx.tolist())
        if not idxs:
            continue
        root = modules[graph.groups[name].root]
        dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs).prune()
        done.append((graph.groups[name].root, tuple(idxs)))
    model.train(was)
    return Structure(tuple(done))


@_quiet
def rebuild(model: nn.Module, structure: Structure, input_shape: Sequence[int]) -> nn.Module:
    """Apply a recorded ``structure`` to a freshly built dense ``model`` in place: its parameters and buffers take
    the smaller shapes, ready for the pruned model's ``state_dict``."""
    if not structure.removed:
        return model
    x = torch.zeros(1, *input_shape)
    was = model.training
    model.eval()
    try:
        dg = _dependency_graph(model, x)
        modules = dict(model.named_modules())
        for root, idxs in structure.removed:
            if root not in modules:
                raise ModelError(f"the structure names a layer {root!r} this model does not have")
            module = modules[root]
            pruner = dg.get_pruner_of_module(module)
            n = pruner.get_out_channels(module) if pruner is not None else None
            if n is None or not all(i < n for i in idxs) or len(set(idxs)) >= n:
                raise ModelError(f"the structure removes channels {list(idxs)[:8]} of {root}, which has {n}")
            dg.get_pruning_group(module, pruner.prune_out_channels, list(idxs)).prune()
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"the recorded structure does not apply to this model: {type(exc).__name__}: {exc}") from None
    model.train(was)
    return model
