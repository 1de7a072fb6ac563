"""Hidden-size pruning of ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` for Torch-Pruning's dependency graph.

Removing hidden unit ``j`` removes its row in every gate of every layer (``weight_ih_l*``, ``weight_hh_l*`` and both
biases), its column in every ``weight_hh_l*`` and, from the second layer on, in ``weight_ih_l*``. A unit whose
rows are all zero stays exactly zero from a zero initial state (its gates see 0: a GRU keeps ``0.5·h = 0``, an
LSTM ``c = 0.5·c = 0``), so the masked model and the smaller one compute the same. Input pruning removes columns
of the first layer's ``weight_ih_l0``. Bidirectional layers and LSTM projections (``proj_size``) are left whole
(the hidden size is not then the output width): ``get_out_channels`` says None, so they root no group.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch_pruning.pruner.function import BasePruningFunc

_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


def _gates(layer: nn.Module) -> int:
    for kind, gates in _GATES.items():
        if isinstance(layer, kind):
            return gates
    raise TypeError(f"not a recurrent layer: {type(layer).__name__}")


def _sound(layer: nn.RNNBase) -> bool:
    return not layer.bidirectional and not getattr(layer, "proj_size", 0)


def _select(layer: nn.Module, name: str, keep: torch.Tensor, dim: int) -> None:
    p = getattr(layer, name)
    setattr(layer, name, nn.Parameter(torch.index_select(p.data, dim, keep.to(p.device)), p.requires_grad))


class RecurrentPruner(BasePruningFunc):
    """Prunes the hidden units (out channels) and the inputs (in channels) of a one-direction recurrent layer."""

    def prune_out_channels(self, layer: nn.RNNBase, idxs: Sequence[int]) -> nn.Module:
        h = layer.hidden_size
        keep = torch.tensor(sorted(set(range(h)) - set(idxs)), dtype=torch.long)
        rows = torch.cat([keep + g * h for g in range(_gates(layer))])
        for k in range(layer.num_layers):
            _select(layer, f"weight_ih_l{k}", rows, 0)
            _select(layer, f"weight_hh_l{k}", rows, 0)
            _select(layer, f"weight_hh_l{k}", keep, 1)
            if k > 0:
                _select(layer, f"weight_ih_l{k}", keep, 1)
            if layer.bias:
                _select(layer, f"bias_ih_l{k}", rows, 0)
                _select(layer, f"bias_hh_l{k}", rows, 0)
        layer.hidden_size = len(keep)
        layer._init_flat_weights()
        return layer

    def prune_in_channels(self, layer: nn.RNNBase, idxs: Sequence[int]) -> nn.Module:
        keep = torch.tensor(sorted(set(range(layer.input_size)) - set(idxs)), dtype=torch.long)
        _select(layer, "weight_ih_l0", keep, 1)
        layer.input_size = len(keep)
        layer._init_flat_weights()
        return layer

    def get_out_channels(self, layer: nn.RNNBase) -> int | None:
        return layer.hidden_size if _sound(layer) else None

    def get_in_channels(self, layer: nn.RNNBase) -> int | None:
        return layer.input_size if _sound(layer) else None


_PRUNER = RecurrentPruner()
RECURRENT_PRUNERS = {kind: _PRUNER for kind in _GATES}
