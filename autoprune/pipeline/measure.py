"""Multiply-accumulates per sample, counted from the operations a model really runs, by weight tensor.

One sample goes through the model under a ``TorchDispatchMode`` that sees every aten operation, whatever the
layer type: the matrix products of Linear, attention and recurrent layers (their cells run as ``addmm``/``mm``
on the CPU), convolutions and transposed convolutions, and attention's own products. Each operation's MACs (half
the FLOPs of ``torch.utils.flop_counter``'s formulas) go to the prunable weight it reads, found by storage, or
else to ``other`` (attention scores, weights left dense). A weight entry takes part in the same number of MACs
as any other of its tensor, so a pruned tensor costs ``nonzero * positions``, with ``positions = MACs / numel``.

What is not counted: lookups (embeddings), element-wise work (activations, normalisation, additions), and any
fused kernel without a formula. The count runs on a CPU copy with PyTorch's fused attention fast path off, so
``nn.TransformerEncoder`` is counted through its parts, as it computes in training.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from autoprune.errors import ModelError, first_line

__all__ = ["Macs", "count_macs"]

_aten = torch.ops.aten


def _cpu_sdpa_flops(query: Tensor, key: Tensor, value: Tensor, *args: object, **kwargs: object) -> int:
    """FLOPs of the CPU fused attention kernel: Q·Kᵀ and its product with V (as the CUDA kernels' formulas)."""
    *batch, lq, e = query.shape
    s, ev = key.shape[-2], value.shape[-1]
    b = 1
    for d in batch:
        b *= d
    return 2 * b * lq * s * (e + ev)


_EXTRA = {}
if hasattr(_aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA[_aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops


@dataclass(frozen=True)
class Macs:
    """MACs per sample of a dense model: by prunable weight, and the rest."""

    by_weight: dict[str, int]  # unit -> MACs its tensor takes part in
    other: int  # MACs of products with no prunable weight (attention scores, dense-kept weights)
    numel: dict[str, int]  # unit -> entries of its tensor

    @property
    def dense(self) -> int:
        """MACs of the prunable weights, all entries counted."""
        return sum(self.by_weight.values())

    def effective(self, nonzero: dict[str, int]) -> int:
        """MACs of the prunable weights when unit ``u`` keeps ``nonzero[u]`` entries (absent units: all)."""
        total = 0
        for unit, macs in self.by_weight.items():
            n = self.numel[unit]
            total += macs * nonzero.get(unit, n) // n if n else 0
        return total


class _Counter(TorchDispatchMode):
    def __init__(self, storages: dict[int, str]) -> None:
        super().__init__()
        self.storages = storages
        self.by_weight: dict[str, int] = {}
        self.other = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            macs = int(flop_registry[packet](*args, **kwargs, out_val=out)) // 2
        elif packet in _EXTRA:
            macs = int(_EXTRA[packet](*args, **kwargs)) // 2
        else:
            return out
        owner = None
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, Tensor) and t.device.type != "meta":
                owner = self.storages.get(t.untyped_storage().data_ptr())
                if owner is not None:
                    break
        if owner is None:
            self.other += macs
        else:
            self.by_weight[owner] = self.by_weight.get(owner, 0) + macs
        return out


@contextlib.contextmanager
def _no_fast_path() -> Iterator[None]:
    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(was)


@contextlib.contextmanager
def _no_onednn() -> Iterator[None]:
    with warnings.catch_warnings():  # toggling oneDNN also re-sets its TF32 switch, which warns on a CPU build
        warnings.simplefilter("ignore", UserWarning)
        flags = torch.backends.mkldnn.flags(enabled=False)
        flags.__enter__()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            flags.__exit__(None, None, None)


def count_macs(model: nn.Module, weights: dict[str, Tensor], input_shape: tuple[int, ...]) -> Macs:
    """MACs per sample of ``model`` on one zero sample shaped ``input_shape``, by the units of ``weights``.

    The model is copied to the CPU in eval mode; the caller's model, its mode and its device are left as they are.
    """
    ids = {id(w): unit for unit, w in weights.items()}
    cpu = copy.deepcopy(model).to("cpu").eval()
    storages: dict[int, str] = {}
    numel: dict[str, int] = {}
    for original, p in zip(model.parameters(), cpu.parameters(), strict=True):  # a deep copy keeps the order
        unit = ids.get(id(original))
        if unit is not None:
            storages[p.untyped_storage().data_ptr()] = unit
            numel[unit] = p.numel()
    counter = _Counter(storages)
    dtype = next((p.dtype for p in cpu.parameters() if p.is_floating_point()), torch.float32)
    try:
        # oneDNN runs a whole recurrent layer as one kernel; without it the cells run as matrix products
        with _no_fast_path(), _no_onednn(), torch.no_grad(), counter:
            cpu(torch.zeros((1, *input_shape), dtype=dtype))
    except Exception as exc:  # user code: one line
        raise ModelError(f"cannot count the MACs of {type(model).__name__}: {first_line(exc)}") from None
    by_weight = {unit: counter.by_weight.get(unit, 0) for unit in weights}
    return Macs(by_weight=by_weight, other=counter.other, numel={u: numel.get(u, weights[u].numel()) for u in weights})
