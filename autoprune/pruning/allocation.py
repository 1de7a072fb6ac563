"""Allocation: how many weights each layer keeps when the prunable weights as a whole keep ``kept``.

Every allocation returns integer per-layer counts that sum to ``kept`` exactly, so a trial's parameter count is
fixed by its configuration before any training:

- ``uniform``: every layer keeps the same fraction of its weights.
- ``erk`` (Erdős–Rényi-Kernel, Evci et al. 2020, "Rigging the Lottery"): a layer with weight shape ``s`` keeps the
  density ``eps * sum(s) / prod(s)`` (``(n_out + n_in + k_h + k_w) / (n_out * n_in * k_h * k_w)`` for a Conv2d,
  ``(n_out + n_in) / (n_out * n_in)`` for a Linear), ``eps`` chosen so the total matches; a layer that would
  exceed density 1 is held dense and ``eps`` is recomputed over the others.
- ``global``: one ranking of the scores across all layers; the lowest go.
- ``lamp`` (Lee et al. 2021, layer-adaptive magnitude-based pruning): each score is rescaled to
  ``s_u**2 / sum_{v >= u} s_v**2`` over its layer's scores sorted ascending, then ranked globally.
- shares: multipliers on any of these per-layer densities, renormalized so that the total is still ``kept``.

Counts are computed from shapes alone for ``uniform`` and ``erk``; ``global`` and ``lamp`` need the scores (their
total is still fixed in advance).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from autoprune.config import ALLOCATIONS
from autoprune.errors import ConfigError, ModelError

__all__ = [
    "ALLOCATIONS",
    "capped_proportional",
    "check_rate",
    "check_rates",
    "global_counts",
    "kept_count",
    "lamp_scores",
    "layer_counts",
    "ranked",
]


def check_rate(where: str, rate: object) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ConfigError(f"{where} must be a fraction in [0, 1], got {rate!r}")
    return float(rate)


def check_rates(layers: Mapping[str, object], rates: Mapping[str, float]) -> dict[str, float]:
    """Per-layer sparsity rates, checked against the layer names."""
    unknown = [name for name in rates if name not in layers]
    if unknown:
        raise ConfigError(f"prune.sparsity names unknown layer {unknown[0]!r}; prunable layers: {', '.join(layers)}")
    return {name: check_rate(f"prune.sparsity.{name}", rate) for name, rate in rates.items()}


def kept_count(density: float, total: int) -> int:
    """Weights kept out of ``total`` at ``density``: ``round(density * total)``."""
    return round(check_rate("prune.density", density) * total)


def ranked(score: Tensor, current: Tensor | None = None) -> Tensor:
    """Flattened scores with currently masked entries forced below everything, so they are removed first."""
    flat = score.detach().reshape(-1)
    if not flat.is_floating_point():
        flat = flat.float()
    if current is not None:
        if current.shape != score.shape:
            raise ModelError(
                f"current mask of shape {tuple(current.shape)} does not match the score shape {tuple(score.shape)}"
            )
        flat = flat.masked_fill(current.reshape(-1).to(flat.device) == 0, float("-inf"))
    return flat


# ------------------------------------------------------------------------------------------- counts from shapes


def _round_to_total(targets: Mapping[str, float], caps: Mapping[str, int], total: int) -> dict[str, int]:
    """Integers within ``[0, cap]`` summing to ``total``, each within 1 of its target (largest remainder)."""
    counts = {name: min(max(math.floor(t), 0), caps[name]) for name, t in targets.items()}
    short = total - sum(counts.values())
    # float error can leave the floors a little off either way; remainders decide who moves
    by_remainder = sorted(targets, key=lambda n: targets[n] - counts[n], reverse=short > 0)
    while short != 0:
        moved = False
        for name in by_remainder:
            if short > 0 and counts[name] < caps[name]:
                counts[name] += 1
                short -= 1
                moved = True
            elif short < 0 and counts[name] > 0:
                counts[name] -= 1
                short += 1
                moved = True
            if short == 0:
                break
        if not moved:
            raise ConfigError(f"cannot keep {total} weights in layers of sizes {dict(caps)}")
    return counts


def capped_proportional(weights: Mapping[str, float], caps: Mapping[str, int], total: int) -> dict[str, int]:
    """Counts proportional to ``weights``, none above its cap, summing exactly to ``total``.

    Water-filling: a layer whose share would exceed its cap is held at the cap and the others are rescaled, until
    no share exceeds its cap (the scale only grows, so a held layer stays held); then largest-remainder rounding.
    """
    if total < 0 or total > sum(caps.values()):
        raise ConfigError(f"cannot keep {total} weights: the layers hold {sum(caps.values())}")
    if any(not (0 <= w < math.inf) for w in weights.values()):
        raise ConfigError(f"allocation weights must be finite and >= 0, got {dict(weights)}")
    live = {n: w for n, w in weights.items() if w > 0 and caps[n] > 0}
    if total > sum(caps[n] for n in live):
        raise ConfigError(f"cannot keep {total} weights in the layers with a positive share: {sorted(live)}")
    targets = dict.fromkeys(weights, 0.0)
    targets.update(_capped_targets(live, caps, float(total)))
    return _round_to_total(targets, caps, total)


def _capped_targets(weights: Mapping[str, float], caps: Mapping[str, int], total: float) -> dict[str, float]:
    """Real-valued ``scale * weight`` summing to ``total``, layers above their cap held at it (all weights > 0)."""
    held: set[str] = set()
    while True:
        free = [n for n in weights if n not in held]
        if not free:
            return {n: float(caps[n]) for n in weights}
        scale = (total - sum(caps[n] for n in held)) / sum(weights[n] for n in free)
        over = [n for n in free if scale * weights[n] > caps[n]]
        if not over:
            return {n: float(caps[n]) if n in held else scale * weights[n] for n in weights}
        held.update(over)


# ------------------------------------------------------------------------------------------- counts from scores


def lamp_scores(score: Tensor) -> Tensor:
    """LAMP score of every entry: ``s_u**2 / sum_{v >= u} s_v**2`` with the layer's scores sorted ascending.

    The largest entry of a layer scores 1, so a global ranking of LAMP scores never empties a layer before all
    layers are down to their last weight. Ties are ordered by position (a stable sort).
    """
    flat = score.detach().reshape(-1).float()
    order = torch.argsort(flat.abs(), stable=True)
    sq = flat[order].pow(2)
    tail = sq.flip(0).cumsum(0).flip(0)  # sum over v >= u in sorted order
    lamp = torch.where(tail > 0, sq / tail.clamp_min(torch.finfo(tail.dtype).tiny), torch.zeros_like(sq))
    out = torch.empty_like(lamp)
    out[order] = lamp
    return out.view(score.shape)


def global_counts(
    scores: Mapping[str, Tensor],
    kept: int,
    current: Mapping[str, Tensor] | None = None,
    floors: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Per-layer counts of the ``kept`` highest scores in one ranking across layers (ties: lower position goes).

    ``floors`` (layer -> count) reserves each layer's that many highest scores ahead of the ranking, so no layer
    keeps fewer (see ``masks.floor_counts``).
    """
    names = list(scores)
    if not names:
        return {}
    flats = [ranked(scores[n], None if current is None else current.get(n)) for n in names]
    for i, n in enumerate(names):
        k = (floors or {}).get(n, 0)
        if k > 0:
            top = torch.topk(flats[i], min(k, flats[i].numel())).indices
            flats[i] = flats[i].clone()
            flats[i][top] = float("inf")
    device = flats[0].device
    joined = torch.cat([f.to(device) for f in flats])
    if not 0 <= kept <= joined.numel():
        raise ConfigError(f"cannot keep {kept} weights: the layers hold {joined.numel()}")
    owner = torch.repeat_interleave(torch.arange(len(names), device=device), torch.tensor([f.numel() for f in flats]))
    order = torch.argsort(joined, stable=True)
    survivors = owner[order[joined.numel() - kept :]]
    counts = torch.bincount(survivors, minlength=len(names)).tolist()
    return dict(zip(names, counts, strict=True))


def layer_counts(
    allocation: str,
    scores: Mapping[str, Tensor],
    kept: int,
    *,
    shares: Mapping[str, float] | None = None,
    current: Mapping[str, Tensor] | None = None,
    floors: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Weights each layer keeps under ``allocation`` (``uniform``, ``erk``, ``global``, ``lamp``), summing to ``kept``.

    ``scores`` gives each layer's element scores (shapes are enough for ``uniform`` and ``erk``). ``shares``
    multiply the allocation's per-layer densities (absent layers: 1), renormalized to the same total. ``current``
    (layer -> 0/1 mask) ranks masked entries lowest for the score-based allocations; ``floors`` (layer -> count) are
    the least each layer keeps under them.
    """
    caps = {n: s.numel() for n, s in scores.items()}
    if allocation == "uniform":
        base: dict[str, float] = {n: float(c) for n, c in caps.items()}
    elif allocation == "erk":
        base = {n: float(sum(s.shape)) for n, s in scores.items()}  # density ∝ sum/prod, so count ∝ sum(shape)
    elif allocation == "global":
        base = dict(global_counts(scores, kept, current, floors))
    elif allocation == "lamp":
        masked_to_zero = {
            n: ranked(s, None if current is None else current.get(n)).clamp_min(0) for n, s in scores.items()
        }
        lamp = {n: lamp_scores(flat.view(scores[n].shape)) for n, flat in masked_to_zero.items()}
        base = dict(global_counts(lamp, kept, current, floors))
    else:
        raise ConfigError(f"unknown prune.allocation {allocation!r}; known: {', '.join(ALLOCATIONS)}")
    if shares:
        unknown = [n for n in shares if n not in caps]
        if unknown:
            raise ConfigError(f"prune.shares names unknown layer {unknown[0]!r}; prunable layers: {', '.join(caps)}")
        for name, share in shares.items():
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < math.inf:
                raise ConfigError(f"prune.shares.{name} must be a positive number, got {share!r}")
        base = {n: b * shares.get(n, 1.0) for n, b in base.items()}
    elif allocation in ("global", "lamp"):
        return {n: int(b) for n, b in base.items()}
    return capped_proportional(base, caps, kept)
