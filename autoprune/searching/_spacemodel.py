"""The model a space file names: its prunable layers, found by building it on the CPU when the space loads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autoprune.errors import AutoPruneError

if TYPE_CHECKING:
    from autoprune.pruning.channels import ChannelGraph

_INPUT_SHAPES = {"fashion-mnist": (1, 28, 28), "digits": (1, 8, 8), "synthetic": (1, 8, 8)}
_NUM_CLASSES = {"fashion-mnist": 10, "digits": 10, "synthetic": 4}


def model_layers(base: dict[str, Any], fail: Any, *, structured: bool) -> tuple[list[str], ChannelGraph | None]:
    """Prunable weight names of the configured model (``pruning.units``, narrowed by the space's ``prune.include``,
    ``prune.exclude`` and ``prune.embeddings``), building it on the CPU (cheap: no data is loaded); with
    ``structured``, also its channel groups (``pruning.channels``: the model is traced once), which
    ``prune.sparsity`` rates then. A model the trace cannot follow is refused here, before a trial trains it.
    """
    from autoprune.io.models import build_model, check_fits  # torch is needed only here
    from autoprune.pruning.units import Selection, prunable_weights

    dataset = base.get("dataset", {}).get("name", "digits")
    model = base.get("model", {}).get("name", "lenet-300-100")
    if isinstance(dataset, dict) or isinstance(model, dict):
        raise fail("dataset.name and model.name must be fixed values, not searched")
    if dataset in _INPUT_SHAPES:
        shape, classes = _INPUT_SHAPES[dataset], _NUM_CLASSES[dataset]
    else:  # a user dataset: its shape is known only by loading it
        from autoprune.config import DatasetConfig
        from autoprune.io.data import load_datasets

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
    prune = base.get("prune", {})
    try:
        select = Selection(prune.get("include", ()), prune.get("exclude", ()), prune.get("embeddings", False))
        weights = prunable_weights(built, select)
    except (AutoPruneError, TypeError) as exc:
        raise fail(str(exc)) from None
    if not structured:
        return list(weights), None
    from autoprune.pruning.channels import channel_graph
    from autoprune.pruning.units import parameter_paths

    try:
        graph = channel_graph(built, shape)
    except AutoPruneError as exc:
        raise fail(f"prune.structured: {exc}; use prune.structured: false for this model") from None
    modules = {path.rpartition(".")[0] for path in parameter_paths(built, weights).values()}
    groups = graph.restricted(modules, "not selected by prune.include/exclude")
    if not groups.groups:
        raise fail(
            f"prune.structured: model {model} has no channel group to prune ({graph.kept_whole_line() or 'none'}); "
            "use prune.structured: false"
        )
    return list(weights), groups
