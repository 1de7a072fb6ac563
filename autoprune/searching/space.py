"""Search-space files: YAML → validated ``SearchSpace`` → Optuna define-by-run → ``TrialConfig``.

Every leaf of a space file is either a fixed value or a searched one: ``{low, high, log?, step?, default?}`` for
numbers, ``{choices: [...], default?}`` for categories. ``prune.sparsity: auto`` searches one rate per prunable layer;
``prune.shares: auto`` one multiplier per prunable layer on the allocation's density for it.
A leaf may depend on another one, searched over choices or fixed: ``{by: optimizer, adam: LEAF, sgd: LEAF}`` gives
one leaf (fixed or searched) per value of the sibling ``optimizer`` (``by`` may also be a dotted path). Under a
fixed parent it is that value's leaf; under a searched one each searched case is its own Optuna parameter,
``finetune.lr[sgd]``, suggested only in the trials that draw its value, so the sampler never mixes the ranges.
Layer names are module paths and may hold dots (``block.conv1``, ``layer1.0.conv1``): in a dotted key such as
``prune.sparsity.layer1.0.conv1`` everything after ``prune.sparsity.`` is the layer name.
A searched leaf left unset (``autoprune trial``) takes its ``default`` when given, else the middle of its range
(the geometric middle for ``log`` ranges, snapped to ``step``), else its first choice.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from autoprune._bounds import MAX_TRIALS
from autoprune.config import _SECTIONS, TrialConfig
from autoprune.errors import ConfigError
from autoprune.searching._leaves import (
    LAYER_MAPS,
    SEARCH_KEYS,
    TOP_LEVEL,
    apply_override,
    collect,
    dependent,
    is_searched,
    split_key,
)
from autoprune.searching._leaves import Cases as Cases  # re-exported with Dim: the searched dimensions
from autoprune.searching._leaves import Dim as Dim
from autoprune.searching._spacefile import builtin_spaces as builtin_spaces  # re-exported: the shipped spaces
from autoprune.searching._spacefile import load_yaml, read_text, resolve_space_path
from autoprune.searching._spacemodel import model_layers
from autoprune.searching.baselines import calibrate_leaves, ladder
from autoprune.searching.pareto import SIZE_KEYS
from autoprune.searching.refine import refine_settings, size_dim, size_targets
from autoprune.searching.stopping import EARLY_STOP_MODES

if TYPE_CHECKING:
    import optuna

    from autoprune.pruning.channels import ChannelGraph

AUTO_SPARSITY = (0.0, 0.95)  # the range `prune.sparsity: auto` searches for every prunable layer
AUTO_SHARES = (0.25, 4.0)  # the log range `prune.shares: auto` searches for every prunable layer
SAMPLERS = ("tpe", "nsga2", "random")  # the values of `search.sampler` and `--sampler`


def define_by_run(trial: optuna.Trial, dims: tuple[Dim, ...]) -> dict[str, Any]:
    """Optuna define-by-run space: suggest every searched dimension under its dotted path; the values suggested.

    The cases of a dependent leaf come last, each only when its parent drew its value.
    """
    return active(dims, lambda dim: dim.suggest(trial))


def active(dims: Iterable[Dim], value: Callable[[Dim], Any]) -> dict[str, Any]:
    """``value(dim)`` for every dimension a trial searches: the plain ones first, in order, then each case of a
    dependent leaf whose parent took its value (so a sampler draws the parent before its cases)."""
    dims = tuple(dims)
    out = {dim.path: value(dim) for dim in dims if dim.when is None}
    for dim in dims:
        if dim.when is not None and dim.when[0] in out and out[dim.when[0]] == dim.when[1]:
            out[dim.path] = value(dim)
    return out


@dataclass(frozen=True)
class SearchSpace:
    """A validated space file: fixed values in ``base``, searched ones in ``dims``."""

    source: str  # the file it came from (for messages)
    document: dict[str, Any]  # the file's content after --set overrides (what a run directory freezes)
    base: dict[str, Any]  # nested TrialConfig dict with every searched leaf removed
    dims: tuple[Dim, ...]
    layers: tuple[str, ...]  # prunable layers of the model, in order
    trials: int | None = None  # `search.trials` in the file: the default number of trials
    sampler: str | None = None  # `search.sampler` in the file
    baselines: Any = None  # `search.baselines` in the file: the baseline ladder (see ``baselines.py``)
    early_stop: str | None = None  # `search.early_stop` in the file: off | asha
    refine: Any = None  # `search.refine` in the file: front refinement (see ``refine.py``)
    sizes: Any = None  # `search.sizes` in the file: sizes a user will pick at, refined to exactly (``refine.py``)
    cases: tuple[Cases, ...] = ()  # leaves whose fixed value depends on a searched one
    objective: str = "params"  # `search.objective`: what the front trades accuracy against (``pareto.SIZE_KEYS``)

    @property
    def digest(self) -> str:
        """sha256 of the canonical document: what `resume` compares against the frozen copy."""
        return document_digest(self.document)

    def check_importable(self) -> None:
        """Refuse, before any trial, a model or dataset that Ray's trial workers (other processes) cannot load."""
        from autoprune.io.data import check_importable as check_dataset
        from autoprune.io.models import check_importable as check_model

        cfg = self.default_config()
        check_model(cfg.model.name)
        check_dataset(cfg.dataset.name)

    def resolve(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The value of every dimension a trial with ``params`` searches: the given ones, the others at their
        midpoint; the cases of a dependent leaf that its parent's value leaves out are dropped."""
        return active(self.dims, lambda dim: params[dim.path] if dim.path in params else dim.midpoint())

    def config_for(self, params: Mapping[str, Any]) -> TrialConfig:
        """The trial configuration for values of the searched dimensions (missing ones take their midpoint;
        values of cases their parent's value leaves out are ignored)."""
        unknown = sorted(set(params) - {d.path for d in self.dims})
        if unknown:
            raise ConfigError(f"{self.source}: {unknown[0]} is not a searched dimension of this space")
        tree = copy.deepcopy(self.base)
        values = self.resolve(params)
        for dim in self.dims:
            if dim.path in values:
                _set_path(tree, dim.key, values[dim.path])
        for case in self.cases:
            for parent_value, value in case.fixed:
                if values[case.parent] == parent_value:
                    _set_path(tree, case.leaf, value)
        try:
            return TrialConfig.from_dict(tree)
        except ConfigError as exc:
            raise ConfigError(f"{self.source}: {exc}") from None

    def default_config(self) -> TrialConfig:
        return self.config_for({})


def document_digest(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def load_space(path: str | Path | None, overrides: Iterable[str] = ()) -> SearchSpace:
    """Read, override (``KEY=VALUE``, dotted keys, YAML scalar values) and validate a space file."""
    file = resolve_space_path(path)
    source = str(path if path is not None else file)
    text = read_text(file, f"space file {source}")
    try:
        document = load_yaml(text, source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: a space file must be a YAML mapping, got {type(document).__name__}")
    for item in overrides:
        apply_override(document, item)
    model = document.get("model")
    if isinstance(model, dict) and isinstance(model.get("weights"), str) and model["weights"]:
        # The folder autoprune runs in is the one a relative path means, in every trial worker and on resume.
        model["weights"] = str(Path(model["weights"]).expanduser().absolute())
    return parse_space(document, source=source)


def _check_layer_name(mapping: str, name: str, layers: list[str], groups: ChannelGraph | None, fail: Any) -> None:
    """Refuse a name a layer map does not take: a prunable layer, or a channel group for a structured
    ``prune.sparsity`` (whose message says which group a coupled layer belongs to)."""
    if mapping == "prune.sparsity" and groups is not None:
        if name not in groups.groups:
            raise fail(groups.unknown(name))
    elif name not in layers:
        raise fail(f"{mapping}.{name}: unknown layer {name!r}; prunable layers: {', '.join(layers)}")


def _density_needs_allocation(prune: dict[str, Any], searched: set[str], fail: Any) -> None:
    """A size given as ``density`` or ``nonzero_params`` is shared out by an allocation. With none named, and no
    per-layer rates, the obvious reading is one global ranking (``per_layer``, the dataclass default, would leave
    the size unread and prune nothing); with rates too, the two sizes conflict and are refused."""
    sizes = [k for k in ("density", "nonzero_params") if k in prune or f"prune.{k}" in searched]
    if not sizes or prune.get("enabled", True) is False:
        return
    if prune.get("allocation") is None and "prune.allocation" not in searched:
        if prune.get("sparsity") or any(p.startswith("prune.sparsity.") for p in searched):
            raise fail(
                f"prune.{sizes[0]} and prune.sparsity both set the size; give per-layer rates (prune.sparsity) or "
                f"a size with an allocation (prune.allocation: global), not both"
            )
        prune["allocation"] = "global"


def parse_space(document: dict[str, Any], *, source: str = "<space>") -> SearchSpace:
    """Validate a space document (already loaded) into a ``SearchSpace``."""

    def fail(msg: str) -> ConfigError:
        return ConfigError(f"{source}: {msg}")

    document = copy.deepcopy(document)
    for key in document:
        if key not in TOP_LEVEL:
            raise fail(f"unknown key {key!r}; top-level keys: {', '.join(TOP_LEVEL)}")
    search = document.get("search") or {}
    if not isinstance(search, dict) or set(search) - set(SEARCH_KEYS):
        raise fail(f"search must be a mapping with keys {', '.join(SEARCH_KEYS)}, got {search!r}")
    base, dims, pending = _read_sections(document, fail)
    cases = dependent(pending, base, dims, fail)
    layers = _layer_dims(base, dims, fail)
    space = SearchSpace(
        source=source,
        document=document,
        base=base,
        dims=tuple(dims),
        layers=tuple(layers),
        trials=search.get("trials"),
        sampler=search.get("sampler"),
        baselines=search.get("baselines"),
        early_stop=search.get("early_stop"),
        refine=search.get("refine"),
        sizes=search.get("sizes"),
        cases=tuple(cases),
        objective="params" if search.get("objective") is None else search["objective"],
    )
    _validate_values(space, fail)
    _check_objective(space, fail)
    _check_search(space, fail)
    return space


def _read_sections(
    document: dict[str, Any], fail: Callable[[str], ConfigError]
) -> tuple[dict[str, Any], list[Dim], list[tuple[str, dict[str, Any], int]]]:
    """Every section but ``search``: its fixed values (``base``), its searched dimensions, and the leaves that depend
    on another (``by``), each with where its dimensions go; unknown keys refused."""
    base: dict[str, Any] = {}
    dims: list[Dim] = []
    pending: list[tuple[str, dict[str, Any], int]] = []
    for key, value in document.items():
        if key == "search":
            continue
        if key in ("seed", "device", "amp", "tf32"):
            if is_searched(value):
                raise fail(f"{key} cannot be searched")
            base[key] = value
            continue
        if value is None:
            continue
        if not isinstance(value, dict):
            raise fail(f"{key} must be a mapping, got {value!r}")
        known = {f.name for f in dataclasses.fields(_SECTIONS[key])}
        section: dict[str, Any] = {}
        for name, leaf in value.items():
            path = f"{key}.{name}"
            if name not in known:
                raise fail(f"unknown key {path}; known keys: {', '.join(sorted(known))}")
            if path in LAYER_MAPS:
                if leaf == "auto" and path in ("prune.sparsity", "prune.shares"):
                    section[name] = "auto"
                    continue
                if leaf is None:
                    continue
                if not isinstance(leaf, dict):
                    raise fail(f"{path} must map layer names to values{' or be auto' if name == 'sparsity' else ''}")
                section[name] = {}
                for layer, sub in leaf.items():
                    collect(f"{path}.{layer}", sub, section[name], str(layer), dims, fail)
                continue
            if isinstance(leaf, dict) and "by" in leaf:  # resolved by the caller, once every other leaf is known
                pending.append((path, leaf, len(dims)))
                continue
            collect(path, leaf, section, name, dims, fail)
        base[key] = section
    return base, dims, pending


def _layer_dims(base: dict[str, Any], dims: list[Dim], fail: Callable[[str], ConfigError]) -> list[str]:
    """The model's prunable layers; ``auto`` per-layer maps become dimensions (added to ``dims``), and every layer
    name a map or a dimension gives is checked against the model."""
    prune = base.setdefault("prune", {})
    searched = {d.path for d in dims}
    for fixed in ("model.name", "model.weights", "prune.include", "prune.exclude", "prune.embeddings"):
        if fixed in searched:
            raise fail(f"{fixed} cannot be searched: it decides which weights there are; give one value")
    for path in sorted(p for p in searched if p.startswith("measure.")):
        raise fail(f"{path} cannot be searched: it says how every trial is measured, alike for all; give one value")
    _density_needs_allocation(prune, searched, fail)
    structured = prune.get("structured", False)
    layers, groups = model_layers(base, fail, structured=structured is True)
    if prune.get("sparsity") == "auto":
        prune["sparsity"] = {}
        targets = groups.names() if groups is not None else layers
        dims.extend(
            Dim(path=f"prune.sparsity.{layer}", low=AUTO_SPARSITY[0], high=AUTO_SPARSITY[1]) for layer in targets
        )
    if prune.get("shares") == "auto":
        prune["shares"] = {}
        dims.extend(Dim(path=f"prune.shares.{n}", low=AUTO_SHARES[0], high=AUTO_SHARES[1], log=True) for n in layers)
    for dim in dims:
        parts = split_key(dim.path)
        if ".".join(parts[:2]) in LAYER_MAPS:
            _check_layer_name(".".join(parts[:2]), parts[-1], layers, groups, fail)
    for mapping in LAYER_MAPS:
        sec, name = mapping.split(".")
        for layer in base.get(sec, {}).get(name, {}) or {}:
            _check_layer_name(mapping, layer, layers, groups, fail)
    return layers


def _check_search(space: SearchSpace, fail: Callable[[str], ConfigError]) -> None:
    """The ``search`` section: trials, sampler, baselines, refinement, sizes, early stopping, the dense start."""
    if space.trials is not None and (
        not isinstance(space.trials, int) or isinstance(space.trials, bool) or not 1 <= space.trials <= MAX_TRIALS
    ):
        raise fail(f"search.trials must be a whole number from 1 to {MAX_TRIALS:,}, got {space.trials!r}")
    if space.sampler is not None and space.sampler not in SAMPLERS:
        raise fail(f"search.sampler must be one of {', '.join(SAMPLERS)}, got {space.sampler!r}")
    try:
        ladder(space)
        calibrate_leaves(space)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    try:
        refine_settings(space.refine)
        sizes = size_targets(space.sizes)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    if sizes and size_dim(space.dims) is None:
        raise fail(
            "search.sizes needs a space that searches the overall size (prune.density or prune.nonzero_params "
            "as a range); this one does not: search one, or remove search.sizes"
        )
    if space.early_stop is not None and space.early_stop not in EARLY_STOP_MODES:
        raise fail(f"search.early_stop must be one of {', '.join(EARLY_STOP_MODES)}, got {space.early_stop!r}")
    from autoprune.searching.dense_start import dense_epochs  # it imports torch, which loading a space does not need

    try:
        dense_epochs(space)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def _check_objective(space: SearchSpace, fail: Any) -> None:
    """Refuse a ``search.objective`` that is not one, or that every trial of the space would tie on."""
    name = space.objective
    if not isinstance(name, str) or name not in SIZE_KEYS:
        raise fail(f"search.objective must be one of {', '.join(SIZE_KEYS)}, got {name!r}")
    if name == "params":
        return
    if name == "latency" and not space.default_config().measure.latency:
        raise fail("search.objective latency needs measure.latency: true, got false; turn it on or search params")
    prune = space.base.get("prune", {})
    if prune.get("structured") is not True and "prune.structured" not in {d.path for d in space.dims}:
        raise fail(
            f"search.objective {name} ranks models by what they execute, but unstructured pruning keeps every layer's "
            "shape (masked weights run dense kernels), so every trial would tie on it: set prune.structured: true, "
            "or search.objective: params"
        )


def _validate_values(space: SearchSpace, fail: Any) -> None:
    """Build a config at every end of every range (others at their midpoint): the dataclasses check the values."""
    probes: list[dict[str, Any]] = [{}]
    for dim in space.dims:
        ends = dim.choices if dim.choices is not None else (dim.low, dim.high)
        parent = dict([dim.when]) if dim.when is not None else {}
        probes.extend({**parent, dim.path: v} for v in ends)
    probes.extend({case.parent: value} for case in space.cases for value, _ in case.fixed)
    for probe in probes:
        try:
            space.config_for(probe)
        except ConfigError as exc:
            msg = str(exc).removeprefix(f"{space.source}: ")
            raise fail(msg) from None


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    parts = split_key(path)
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
