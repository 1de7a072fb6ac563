"""Structured pruning of any model: channel groups found by a dependency graph, masks, and the smaller model.

Torch-Pruning's ``DependencyGraph`` (DepGraph, Fang et al., CVPR 2023) traces a model once and finds which
parameter slices are coupled: a convolution's output channels with its BatchNorm entries and the next layers'
input channels, both branches of a residual addition, the parts of a concatenation, a depthwise convolution's
channels with those of the layer feeding it. Each such set is a *channel group*, pruned as one: removing channel
``c`` of a group removes every coupled slice. The output layer (the last layer with weights that a forward pass
runs) keeps its outputs.

What the graph gives is turned into plain data once per model (``ChannelGraph``): for every parameter and
dimension a group touches, which channel each position belongs to. It is found by pruning float64 copies of the
model whose entries carry their own index, a few times (about ``log2`` of the largest group plus twice ``log2``
of the number of groups), and reading which positions went: so every layer type Torch-Pruning can prune, and the
recurrent layers added here, is handled the same way, with no per-type table to keep in step. From that data come
the masks a pruned-but-not-yet-removed model trains under (``masks``), the per-channel importance of any element
score (``channel_scores``), the group lasso's norms (``sparsity.CoupledGroupLasso``) and the parameter count of a
removal before training (``planned_nonzero``). At the end ``shrink`` removes the channels for real and returns the
removal as data (``Structure``), which ``rebuild`` replays on a freshly built model of the same factory.

Not pruned, and said by ``kept_whole``: groups coupled to a normalisation over channels (``LayerNorm``,
``GroupNorm``, ``RMSNorm``: removing a channel changes the statistics of the others) or to an attention's embedding
width (it changes the head width), and groups of a single channel. Attention's feed-forward width is pruned.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from autoprune.errors import ConfigError, ModelError
from autoprune.pruning._depgraph import Structure, _dependency_graph, _quiet, rebuild, shrink

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "Member",
    "Structure",
    "channel_graph",
    "rebuild",
    "removed_channels",
    "shrink",
]

# Layers whose channel statistics mix channels, or whose width sets another (attention's head width): a group that
# touches one is left whole, since removing a channel would change what the others compute.
_MIXING = (nn.LayerNorm, nn.GroupNorm, nn.MultiheadAttention, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
_ROOTS = (nn.modules.conv._ConvNd, nn.Linear, nn.LSTM, nn.GRU, nn.RNN)


def removed_channels(rate: float, channels: int) -> int:
    """Channels a group of ``channels`` loses at ``rate``: ``round(rate * channels)``, always leaving one."""
    return min(round(rate * channels), channels - 1)


@dataclass(frozen=True)
class Member:
    """The positions of one parameter dimension that a group owns: ``channel[i]`` is the group's channel that
    position ``i`` of dimension ``dim`` belongs to, or -1."""

    path: str  # parameter path ("layer1.0.conv1.weight")
    dim: int
    channel: Tensor  # int64, one entry per position of the dimension


@dataclass(frozen=True)
class ChannelGroup:
    """Channels pruned together: every coupled slice of every parameter, by channel."""

    name: str  # the root layer's module path: what ``prune.sparsity`` rates
    root: str  # the same path, where the removal starts
    channels: int
    members: tuple[Member, ...]
    layers: tuple[str, ...]  # module paths of the layers whose weights the group slices


@dataclass
class ChannelGraph:
    """The channel groups of a model (see the module doc), and what was left whole and why."""

    groups: dict[str, ChannelGroup]
    kept_whole: dict[str, str] = field(default_factory=dict)  # group root -> reason
    output: str = ""  # the output layer's module path

    def names(self) -> list[str]:
        return list(self.groups)

    def restricted(self, modules: set[str], why: str) -> ChannelGraph:
        """The graph with only the groups rooted at ``modules``; the others are kept whole for ``why``."""
        kept = dict(self.kept_whole)
        kept.update({name: why for name in self.groups if name not in modules})
        return ChannelGraph({n: g for n, g in self.groups.items() if n in modules}, kept, self.output)

    def kept_whole_line(self) -> str | None:
        """One line naming the groups left whole and why (None when every group may be pruned)."""
        if not self.kept_whole:
            return None
        parts = [f"{name} ({why})" for name, why in list(self.kept_whole.items())[:4]]
        more = len(self.kept_whole) - len(parts)
        return "channels not pruned: " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")

    def check_rates(self, rates: Mapping[str, float]) -> dict[str, float]:
        """``rates`` (group name -> fraction of channels removed), each checked; unknown names refused."""
        out = {}
        for name, rate in rates.items():
            if name not in self.groups:
                raise ConfigError(self.unknown(name))
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
                raise ConfigError(f"prune.sparsity.{name} must be a number in [0, 1), got {rate!r}")
            out[name] = float(rate)
        return out

    def unknown(self, name: str) -> str:
        if name == self.output:
            return f"prune.sparsity.{name}: the output layer keeps its outputs under structured pruning; remove it"
        if name in self.kept_whole:
            return f"prune.sparsity.{name}: its channels are not pruned ({self.kept_whole[name]}); remove it"
        for group in self.groups.values():
            if name in group.layers:
                return (
                    f"prune.sparsity.{name}: its channels are coupled with {group.name}'s and pruned with them; "
                    f"rate {group.name} instead"
                )
        return f"prune.sparsity.{name}: no channel group starts there; groups: {', '.join(self.groups) or 'none'}"

    def removal(self, rates: Mapping[str, float]) -> dict[str, int]:
        """Channels each group loses at ``rates`` (absent groups: none)."""
        return {n: removed_channels(rates.get(n, 0.0), g.channels) for n, g in self.groups.items()}

    def masks(self, model: nn.Module, removed: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Parameter masks (1 keeps, 0 removes) that zero every slice of the ``removed`` channels of each group:
        the model then computes what the smaller model ``shrink`` builds computes. Only parameters touched."""
        params = dict(model.named_parameters())
        masks: dict[str, Tensor] = {}
        for name, idx in removed.items():
            if len(idx) == 0:
                continue
            for m in self.groups[name].members:
                p = params[m.path]
                gone = torch.isin(m.channel.to(p.device), idx.to(p.device))
                if not bool(gone.any()):
                    continue
                mask = masks.setdefault(m.path, torch.ones_like(p))
                shape = [1] * p.dim()
                shape[m.dim] = -1
                mask.mul_((~gone).to(p.dtype).view(shape))
        return masks

    def channel_scores(self, scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per-channel importance of each group: the L2 norm, over every coupled slice, of the element ``scores``
        (parameter path -> score of each entry; parameters without one do not count)."""
        out = {}
        for name, group in self.groups.items():
            total = None
            for m in group.members:
                s = scores.get(m.path)
                if s is None:
                    continue
                dims = [d for d in range(s.dim()) if d != m.dim]
                sq = s.detach().float().pow(2).sum(dim=dims) if dims else s.detach().float().pow(2)
                valid = m.channel >= 0
                part = torch.zeros(group.channels, device=sq.device)
                part.index_add_(0, m.channel[valid].to(sq.device), sq[valid.to(sq.device)])
                total = part if total is None else total + part
            out[name] = (total if total is not None else torch.zeros(group.channels)).sqrt()
        return out

    def group_lasso(self, model: nn.Module, eps: float = 1e-12) -> Callable[[float], None]:
        """``add(λ)``: ``grad += λ·w_c/‖w_c‖`` in place for every channel ``c`` of every group, ``‖w_c‖`` the norm
        of all the weight slices the channel owns (every coupled layer's, inputs and outputs; biases and
        normalisation are not penalised): the group lasso over what structured pruning removes together."""
        params = dict(model.named_parameters())
        terms: list[tuple[Tensor, int, Tensor]] = []
        offset = 0
        for group in self.groups.values():
            for m in group.members:
                p = params[m.path]
                if p.dim() >= 2:
                    idx = torch.where(m.channel >= 0, m.channel + offset, -1)
                    terms.append((p, m.dim, idx.to(p.device)))
            offset += group.channels
        sink = offset  # positions outside every group add to a slot whose scale is 0
        terms = [(p, d, torch.where(i >= 0, i, sink)) for p, d, i in terms]

        @torch.no_grad()
        def add(lam: float) -> None:
            if lam == 0.0 or not terms:
                return
            sq = torch.zeros(sink + 1, device=terms[0][0].device)
            for p, d, idx in terms:
                dims = [k for k in range(p.dim()) if k != d]
                sq.index_add_(0, idx, p.detach().float().pow(2).sum(dim=dims))
            inv = sq.sqrt_().clamp_min_(eps).reciprocal_()
            inv[sink] = 0.0
            for p, d, idx in terms:
                if p.grad is None:
                    continue
                shape = [1] * p.dim()
                shape[d] = -1
                p.grad.add_(p * inv[idx].view(shape).to(p.dtype), alpha=lam)

        return add

    def planned_nonzero(self, model: nn.Module, removal: Mapping[str, int]) -> int:
        """Parameters ``model`` keeps when each group loses ``removal[name]`` channels (which ones does not matter:
        every channel of a group owns as many entries)."""
        total = sum(p.numel() for p in model.parameters())
        removed = {n: torch.arange(k) for n, k in removal.items() if k}
        return total - sum(int(m.numel() - m.count_nonzero()) for m in self.masks(model, removed).values())


def _output_layer(model: nn.Module, example: Tensor) -> str:
    """The module path of the last layer with its own weights that a forward pass runs."""
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_hook(lambda *_a, name=name: order.append(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    inner = [name for name in order if name]  # the model itself runs last when it holds a parameter of its own
    if not order:
        raise ModelError("structured pruning found no layer with weights in the model's forward pass")
    return inner[-1] if inner else order[-1]


def _groups(dg, output: nn.Module) -> list[tuple[str, list]]:
    """Each group the graph roots at a layer (not the output layer), named by the first layer, in the model's
    order, whose outputs it holds; and the modules it couples."""
    order = {m: i for i, m in enumerate(dg.model.modules())}
    out = []
    for group in dg.get_all_groups(ignored_layers=[output], root_module_types=_ROOTS):
        targets = [item.dep.target.module for item in group]
        producers = [
            item.dep.target.module
            for item in group
            if isinstance(item.dep.target.module, _ROOTS) and dg.is_out_channel_pruning_fn(item.dep.handler)
        ]
        root = min(producers, key=lambda m: order.get(m, len(order)))
        out.append((order.get(root, len(order)), dg._module2name[root], targets))
    return [(name, targets) for _, name, targets in sorted(out, key=lambda item: item[0])]


def _probe(model: nn.Module, example: Tensor, removal: Mapping[str, list[int]], shape: torch.Size):
    """Prune a float64 copy whose entries carry their index; return, per parameter and dimension, which
    positions went (bool vectors)."""
    tagged = copy.deepcopy(model).double()
    names = {}
    with torch.no_grad():
        for name, p in tagged.named_parameters():
            p.copy_(torch.arange(p.numel(), dtype=torch.float64).view(p.shape))
            names[name] = tuple(p.shape)
    x = example.double() if example.is_floating_point() else example
    dg = _dependency_graph(tagged, x)
    modules = dict(tagged.named_modules())
    for root, idxs in removal.items():
        if idxs:
            module = modules[root]
            dg.get_pruning_group(module, dg.get_pruner_of_module(module).prune_out_channels, list(idxs)).prune()
    with torch.no_grad():
        if tagged(x).shape != shape:
            raise ModelError(
                "structured pruning changed the model's output shape: its last layer with weights is not the one "
                "that produces the output; exclude the layers after it (prune.exclude)"
            )
    gone = {}
    for name, p in tagged.named_parameters():
        before = names.get(name)
        if before is None:
            continue
        flat = p.detach().flatten().long()
        for d, size in enumerate(before):
            if p.shape[d] == size:
                continue
            alive = torch.zeros(size, dtype=torch.bool)
            stride = math.prod(before[d + 1 :])
            alive[(flat // stride) % size] = True
            gone[(name, d)] = ~alive
    return gone


@_quiet
def channel_graph(model: nn.Module, input_shape: Sequence[int], *, example: Tensor | None = None) -> ChannelGraph:
    """The channel groups of ``model`` for inputs of ``input_shape`` (one sample's shape); see the module doc."""
    model = copy.deepcopy(model).cpu().eval()
    x = example.cpu()[:1] if example is not None else torch.zeros(1, *input_shape)
    try:
        output = _output_layer(model, x)
        with torch.no_grad():
            out_shape = model(x).shape
        dg = _dependency_graph(model, x)
        found = _groups(dg, dict(model.named_modules())[output])
    except ModelError:
        raise
    except Exception as exc:  # the trace of a model it cannot follow
        raise ModelError(f"structured pruning could not trace the model: {type(exc).__name__}: {exc}") from None
    sizes: dict[str, int] = {}
    kept_whole: dict[str, str] = {}
    by_module = {m: n for n, m in model.named_modules()}
    by_name = dict(model.named_modules())
    layers: dict[str, tuple[str, ...]] = {}
    for root, targets in found:
        mixing = sorted({type(t).__name__ for t in targets if isinstance(t, _MIXING)})
        n = dg.get_pruner_of_module(by_name[root]).get_out_channels(by_name[root])
        if mixing:
            kept_whole[root] = f"coupled to {' and '.join(mixing)}, which mixes channels"
        elif n is None or n < 2:
            kept_whole[root] = "a single channel"
        else:
            sizes[root] = n
            names = [by_module[t] for t in targets if isinstance(t, nn.Module) and t in by_module]
            layers[root] = tuple(dict.fromkeys(n for n in names if n and _has_weights(model, n)))
    roots = list(sizes)
    local_bits = max(1, math.ceil(math.log2(max(sizes.values())))) if sizes else 0
    group_bits = math.ceil(math.log2(len(roots) + 1)) if roots else 0
    probes: list[tuple[str, int, dict[str, list[int]]]] = []
    for b in range(local_bits):
        probes.append(("local", b, {r: [i for i in range(sizes[r]) if i >> b & 1] for r in roots}))
    for c in range(group_bits):
        ids = [r for k, r in enumerate(roots) if (k + 1) >> c & 1]
        probes.append(("group", c, {r: [0] for r in ids}))
        probes.append(("group", c, {r: list(range(1, sizes[r])) for r in ids}))
    local: dict[tuple[str, int], Tensor] = {}
    gid: dict[tuple[str, int], Tensor] = {}
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    for kind, bit, removal in probes:
        for key, gone in _probe(model, x, removal, out_shape).items():
            acc = local if kind == "local" else gid
            base = acc.setdefault(key, torch.zeros(shapes[key[0]][key[1]], dtype=torch.long))
            acc[key] = base | (gone.long() << bit)
    members: dict[str, list[Member]] = {r: [] for r in roots}
    for key, ids in gid.items():
        channel = local.get(key, torch.zeros_like(ids))
        for k, root in enumerate(roots):
            own = ids == k + 1
            if bool(own.any()):
                members[root].append(Member(key[0], key[1], torch.where(own, channel, -1)))
        if bool(((ids < 0) | (ids > len(roots))).any()):
            raise ModelError(f"structured pruning could not attribute the slices of {key[0]} to one group")
    groups = {}
    for root in roots:
        ms = tuple(members[root])
        for m in ms:
            counts = torch.bincount(m.channel[m.channel >= 0], minlength=sizes[root])
            if not bool((counts == counts[0]).all()) or int(counts[0]) == 0:
                raise ModelError(f"structured pruning: the channels of {root} own unequal slices of {m.path}")
        groups[root] = ChannelGroup(root, root, sizes[root], ms, layers[root])
    return ChannelGraph(groups, kept_whole, output)


def _has_weights(model: nn.Module, name: str) -> bool:
    return any(True for _ in dict(model.named_modules())[name].parameters(recurse=False))
