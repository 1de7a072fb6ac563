"""How a model file stores a mask: its bits, eight to a byte, and its shape; read back with every field checked."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from autoprune._bounds import INT64_MAX
from autoprune.errors import ModelError


def pack_mask(mask: Tensor) -> dict[str, Any]:
    """A bool mask as bits, eight to a byte: a mask costs 1/32 of its float32 weight."""
    flat = mask.detach().to("cpu", torch.bool).flatten()
    padded = torch.zeros(-(-flat.numel() // 8) * 8, dtype=torch.uint8)
    padded[: flat.numel()] = flat
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    bits = (padded.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)
    return {"shape": list(mask.shape), "bits": bits}


def file_shape(value: Any, where: str, *, low: int) -> tuple[int, ...]:
    """A shape read from a file: a non-empty list of whole numbers from ``low`` within 64 bits, else one line."""
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(s, int) and not isinstance(s, bool) and low <= s <= INT64_MAX for s in value)
    ):
        raise ModelError(f"{where} must be a list of whole numbers >= {low}, got {value!r:.80}")
    return tuple(value)


def unpack_mask(packed: Any, where: str) -> Tensor:
    """A mask stored by ``pack_mask``, checked: a damaged entry is refused in one line naming ``where``."""
    if not isinstance(packed, dict) or not isinstance(packed.get("bits"), Tensor) or "shape" not in packed:
        raise ModelError(f"{where}: damaged mask entry")
    shape = file_shape(packed["shape"], f"{where}: damaged mask entry: shape", low=0)
    n = 1
    for s in shape:
        n *= int(s)
    bits = packed["bits"]
    if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != -(-n // 8):
        raise ModelError(f"{where}: damaged mask entry (size does not match shape {list(shape)})")
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=bits.device)
    flat = ((bits.unsqueeze(1) >> shifts) & 1).flatten()[:n]
    return flat.to(torch.bool).view(shape)
