"""The model a space file names: its prunable layers, found by building it on the CPU when the space loads."""

from __future__ import annotations

from typing import Any

from .errors import AutoPruneError

_INPUT_SHAPES = {"fashion-mnist": (1, 28, 28), "digits": (1, 8, 8), "synthetic": (1, 8, 8)}
_NUM_CLASSES = {"fashion-mnist": 10, "digits": 10, "synthetic": 4}


def model_layers(base: dict[str, Any], fail: Any, *, structured: bool) -> list[str]:
    """Prunable weight names of the configured model (``pruning.units``, narrowed by the space's ``prune.include``,
    ``prune.exclude`` and ``prune.embeddings``), building it on the CPU (cheap: no data is loaded).

    Structured pruning removes units along a chain of layers, so it needs an ``nn.Sequential``: any other model
    is refused here, before a trial trains it only to fail at the pruning step.
    """
    from torch import nn

    from .models import build_model, check_fits  # torch is needed only here
    from .pruning.units import Selection, prunable_weights

    dataset = base.get("dataset", {}).get("name", "digits")
    model = base.get("model", {}).get("name", "lenet-300-100")
    if isinstance(dataset, dict) or isinstance(model, dict):
        raise fail("dataset.name and model.name must be fixed values, not searched")
    if dataset in _INPUT_SHAPES:
        shape, classes = _INPUT_SHAPES[dataset], _NUM_CLASSES[dataset]
    else:  # a user dataset: its shape is known only by loading it
        from .config import DatasetConfig
        from .data import load_datasets

        try:
            data = load_datasets(DatasetConfig(**base.get("dataset", {})), seed=0, device="cpu")
        except (AutoPruneError, TypeError) as exc:
            raise fail(str(exc)) from None
        shape, classes = data.input_shape, data.num_classes
    try:
        built = build_model(model, shape, classes)
        check_fits(built, model, shape, classes)
    except AutoPruneError as exc:
        raise fail(str(exc)) from None
    if structured and not isinstance(built, nn.Sequential):
        raise fail(
            f"prune.structured: true needs an nn.Sequential model (structured pruning removes units along a chain "
            f"of layers), but model {model} is a {type(built).__name__}; use prune.structured: false"
        )
    prune = base.get("prune", {})
    try:
        select = Selection(prune.get("include", ()), prune.get("exclude", ()), prune.get("embeddings", False))
        return list(prunable_weights(built, select))
    except (AutoPruneError, TypeError) as exc:
        raise fail(str(exc)) from None
