"""What a trial prunes: weight tensors, each named, chosen from the model's layers; and what it leaves.

A prunable unit is one weight tensor. Its name is the module path when it is a layer's one ``weight``
(``fc1``, ``layer1.0.conv1``, ``encoder.layers.0.self_attn.out_proj``), and the parameter path for a layer that
holds several (``encoder.layers.0.self_attn.in_proj_weight``, ``rnn.weight_hh_l0``). The kinds:

- ``nn.Linear``, ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d`` (subclasses included): their ``weight``;
- ``nn.MultiheadAttention`` (also inside ``nn.TransformerEncoder``/``Decoder``): ``in_proj_weight`` or
  ``q/k/v_proj_weight``, and ``out_proj`` (a Linear);
- ``nn.RNN``/``LSTM``/``GRU``: every ``weight_ih_l*``, ``weight_hh_l*`` and ``weight_hr_l*``;
- ``nn.Embedding``/``EmbeddingBag``: only when asked (``prune.embeddings``): pruning a lookup table is a choice.

``prune.include``/``prune.exclude`` (globs over unit names and parameter paths) narrow the choice. Everything
else a model holds (biases, normalisation, excluded tensors, a bare ``nn.Parameter``) stays dense and is named,
with its share of the parameters, by ``not_pruned``. A tensor shared by two layers (tied weights) is one unit,
named after the first layer that holds it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from autoprune.config import check_globs
from autoprune.errors import ConfigError

__all__ = ["Selection", "not_pruned", "not_pruned_line", "parameter_paths", "prunable_weights"]

_NORMS = (_NormBase, nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", nn.LayerNorm))


class Selection:
    """Which weight tensors are pruned: ``include`` globs (empty: all), ``exclude`` globs, embeddings or not."""

    __slots__ = ("embeddings", "exclude", "include")

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = (), embeddings: bool = False) -> None:
        self.include, self.exclude = check_globs("prune.include", include), check_globs("prune.exclude", exclude)
        self.embeddings = bool(embeddings)

    @classmethod
    def of(cls, cfg: object | None) -> Selection:
        """The selection a ``PruneConfig`` (or anything with ``include``/``exclude``/``embeddings``) describes."""
        if cfg is None:
            return cls()
        return cls(getattr(cfg, "include", ()), getattr(cfg, "exclude", ()), getattr(cfg, "embeddings", False))


def _candidates(model: nn.Module, embeddings: bool) -> list[tuple[str, str, Tensor]]:
    """(unit name, parameter path, tensor) of every weight of a supported kind, in definition order."""
    out: list[tuple[str, str, Tensor]] = []
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        if isinstance(module, (nn.Linear, _ConvNd)) or (
            embeddings and isinstance(module, (nn.Embedding, nn.EmbeddingBag))
        ):
            if isinstance(getattr(module, "weight", None), nn.Parameter):
                out.append((path, f"{prefix}weight", module.weight))
        elif isinstance(module, nn.MultiheadAttention):
            for pname in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                p = getattr(module, pname, None)
                if isinstance(p, nn.Parameter):
                    out.append((f"{prefix}{pname}", f"{prefix}{pname}", p))
        elif isinstance(module, nn.RNNBase):
            for pname, p in module.named_parameters(recurse=False):
                if pname.startswith("weight_"):
                    out.append((f"{prefix}{pname}", f"{prefix}{pname}", p))
    return out


def _matches(globs: tuple[str, ...], unit: str, path: str) -> bool:
    return any(fnmatch.fnmatchcase(unit, g) or fnmatch.fnmatchcase(path, g) for g in globs)


def prunable_weights(model: nn.Module, select: Selection | None = None) -> dict[str, Tensor]:
    """Every prunable weight tensor of ``model`` by unit name (see the module doc), in definition order.

    A glob of ``select`` that matches no weight of a supported kind is refused: a setting that would do nothing
    is a mistake in the space file, not something to skip silently.
    """
    select = select or Selection()
    found = _candidates(model, select.embeddings)
    for key, globs in (("include", select.include), ("exclude", select.exclude)):
        for glob in globs:
            if not any(_matches((glob,), unit, path) for unit, path, _ in found):
                names = ", ".join(unit for unit, _, _ in found[:8]) + (" ..." if len(found) > 8 else "")
                hint = ""
                if not select.embeddings and any(_matches((glob,), u, p) for u, p, _ in _candidates(model, True)):
                    hint = " (it names an embedding: set prune.embeddings: true to prune embeddings)"
                raise ConfigError(
                    f"prune.{key} glob {glob!r} matches no prunable weight of this model{hint}; its prunable "
                    f"weights: {names or 'none'}"
                )
    weights: dict[str, Tensor] = {}
    seen: set[int] = set()
    for unit, path, tensor in found:
        if id(tensor) in seen:
            continue  # a tied weight: pruned once, under its first name
        seen.add(id(tensor))
        if select.include and not _matches(select.include, unit, path):
            continue
        if _matches(select.exclude, unit, path):
            continue
        weights[unit] = tensor
    return weights


def parameter_paths(model: nn.Module, weights: dict[str, Tensor]) -> dict[str, str]:
    """Unit name -> the tensor's name in ``model.named_parameters()`` (``fc1`` -> ``fc1.weight``)."""
    by_id = {id(p): name for name, p in model.named_parameters(remove_duplicate=True)}
    return {unit: by_id[id(w)] for unit, w in weights.items()}


def not_pruned(model: nn.Module, weights: dict[str, Tensor]) -> dict[str, int]:
    """Parameters ``model`` holds outside ``weights``, grouped for a reader: ``biases``, ``normalization``, and
    every other tensor by its parameter path (an excluded layer, an embedding, a bare ``nn.Parameter``)."""
    pruned = {id(w) for w in weights.values()}
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    groups: dict[str, int] = {}
    for name, p in model.named_parameters(remove_duplicate=True):
        if id(p) in pruned:
            continue
        if id(p) in norm_params:
            key = "normalization"
        elif "bias" in name.rsplit(".", 1)[-1]:
            key = "biases"
        else:
            key = name
        groups[key] = groups.get(key, 0) + p.numel()
    return groups


def not_pruned_line(groups: dict[str, int], total: int, *, limit: int = 6) -> str:
    """``"not pruned: biases (0.4%), pos_embedding (3.1%)"``, the largest first; ``""`` when nothing is left out."""
    if not groups or total <= 0:
        return ""
    ordered = sorted(groups.items(), key=lambda kv: -kv[1])
    parts = [f"{name} ({100.0 * n / total:.1f}%)" for name, n in ordered[:limit]]
    if len(ordered) > limit:
        rest = sum(n for _, n in ordered[limit:])
        parts.append(f"{len(ordered) - limit} more ({100.0 * rest / total:.1f}%)")
    share = 100.0 * sum(groups.values()) / total
    return f"not pruned: {share:.1f}% of the parameters: {', '.join(parts)}"
