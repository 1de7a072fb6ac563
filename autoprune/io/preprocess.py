"""The input preprocessing a trained model expects, as plain data, and a module that applies it to raw inputs.

Raw inputs are what the dataset holds before autoprune touches them: Fashion-MNIST's uint8 28x28 images as in
the IDX files, scikit-learn's 8x8 digits images (values 0..16), the synthetic set's tensors, and for a
user's dataset whatever its function returns. A model sees ``((raw * scale) - mean) / std`` reshaped to
``input_shape`` (which also adds the channel axis, or keeps a flat vector flat). Exported model files carry
this spec, so plain PyTorch can rebuild the whole path from raw data to predictions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from autoprune.errors import ModelError


@dataclass(frozen=True)
class Preprocessing:
    """``x = ((raw.float() * scale) - mean) / std``, then ``x.reshape(-1, *input_shape)``."""

    input_shape: tuple[int, ...]  # what the model takes per sample
    scale: float = 1.0  # e.g. 1/255 for 8-bit images
    mean: float = 0.0  # after scaling
    std: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "input_shape": list(self.input_shape)}

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "preprocessing") -> Preprocessing:
        try:
            spec = cls(
                input_shape=tuple(int(s) for s in data["input_shape"]),
                scale=float(data["scale"]),
                mean=float(data["mean"]),
                std=float(data["std"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where} is damaged: {type(exc).__name__}: {exc}") from None
        if spec.std == 0 or not spec.input_shape:
            raise ModelError(f"{where} is damaged: std must be nonzero and input_shape not empty, got {data!r}")
        return spec


def for_dataset(name: str, input_shape: tuple[int, ...]) -> Preprocessing:
    """The preprocessing autoprune's loader for dataset ``name`` applies (identity for a user's dataset)."""
    shape = tuple(int(s) for s in input_shape)
    if name == "fashion-mnist":
        from autoprune.io.data import FASHION_MEAN, FASHION_STD

        # (raw / 255 - mean) / std, in the one scale and one shift the loader computes (so results are identical)
        return Preprocessing(shape, scale=1.0 / (255.0 * FASHION_STD), mean=FASHION_MEAN / FASHION_STD, std=1.0)
    if name == "digits":
        from autoprune.io.data import digits_standardization

        mean, std = digits_standardization()
        return Preprocessing(shape, scale=1.0 / 16.0, mean=mean, std=std)
    return Preprocessing(shape)


def stored_preprocessing(
    stored: Any, config: dict[str, Any], input_shape: tuple[int, ...], *, where: str = "preprocessing"
) -> Preprocessing:
    """The preprocessing an exported model file needs: the one it stored, or, in a file written before files stored
    it, the one the built-in dataset its ``config`` names applies (``for_dataset``)."""
    if stored is not None:
        return Preprocessing.from_dict(stored, where=where)
    return for_dataset(str((config.get("dataset") or {}).get("name", "")), input_shape)


class Preprocess(nn.Module):
    """Applies a ``Preprocessing`` to a batch of raw inputs (or to one raw sample)."""

    def __init__(self, spec: Preprocessing) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        s = self.spec
        x = raw.to(torch.float32) * s.scale
        return ((x - s.mean) / s.std).reshape(-1, *s.input_shape)

    def extra_repr(self) -> str:
        s = self.spec
        return f"scale={s.scale:.6g}, mean={s.mean:.6g}, std={s.std:.6g}, input_shape={list(s.input_shape)}"


class RawInputModel(nn.Module):
    """A model that takes raw inputs: ``model(preprocess(raw))``. What ``autoprune.load_model`` returns.

    ``metrics`` is the trial record the file was exported with, ``config`` the trial's configuration and
    ``masks`` the pruning masks (parameter name -> 0/1 tensor) of ``model``.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: Preprocessing,
        *,
        metrics: dict | None = None,
        config: dict | None = None,
        masks: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.preprocess = Preprocess(spec)
        self.model = model
        self.metrics = dict(metrics or {})
        self.config = dict(config or {})
        self.masks = dict(masks or {})

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(raw))

    @torch.inference_mode()
    def predict(self, raw: torch.Tensor, *, batch_size: int = 4096) -> torch.Tensor:
        """Class indices for a batch of raw inputs, in eval mode and large batches."""
        was_training = self.training
        self.eval()
        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        outs = [self(raw[i : i + batch_size].to(device)).argmax(dim=1) for i in range(0, len(raw), batch_size)]
        self.train(was_training)
        return torch.cat(outs) if outs else torch.empty(0, dtype=torch.long)
