"""The leaves of a space file: searched dimensions (``Dim``), dotted keys, and leaves that depend on another.

``space.py`` parses a whole file; this module holds what it files each leaf with: a fixed value or a searched
range or choice (``collect``), and a leaf written per value of another (``{by: PARENT, VALUE: LEAF, ...}``,
``dependent``): under a fixed parent the case for its value is the leaf; under a parent searched over choices each
searched case is a ``Dim`` of its own (``finetune.lr[sgd]``) searched only when the parent has that value, and the
fixed cases are a ``Cases``. ``--set KEY=VALUE`` fixes one leaf by its dotted key (``apply_override``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from autoprune._bounds import MAX_CHOICES
from autoprune.config import _SECTIONS
from autoprune.errors import ConfigError
from autoprune.searching._spacefile import load_yaml

if TYPE_CHECKING:
    import optuna

TOP_LEVEL = (
    "dataset",
    "model",
    "budget",
    "train",
    "prune",
    "finetune",
    "measure",
    "search",
    "seed",
    "device",
    "amp",
    "tf32",
)
SEARCH_KEYS = ("trials", "sampler", "baselines", "early_stop", "refine", "sizes", "dense_start", "objective")
RANGE_KEYS = {"low", "high", "log", "step", "default"}
CHOICE_KEYS = {"choices", "default"}
# Leaves whose value is itself a mapping keyed by layer name.
LAYER_MAPS = ("prune.sparsity", "prune.shares", "train.lr_multipliers")


@dataclass(frozen=True)
class Dim:
    """One searched dimension. ``path`` is the Optuna parameter name: the dotted key of its leaf, or for one case
    of a leaf that depends on a searched one, that key and the case (``finetune.lr[sgd]``)."""

    path: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None
    default: Any = None
    leaf: str | None = None  # the dotted key it sets, when not ``path`` (a case)
    when: tuple[str, Any] | None = None  # a case: searched only when the dimension ``when[0]`` is ``when[1]``

    @property
    def key(self) -> str:
        """The dotted key of the leaf it sets."""
        return self.leaf or self.path

    @property
    def is_int(self) -> bool:
        return self.choices is None and all(
            isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step or 1)
        )

    def midpoint(self) -> Any:
        """The value a trial uses when nothing fixes this dimension."""
        if self.default is not None:
            return self.default
        if self.choices is not None:
            return self.choices[0]
        assert self.low is not None and self.high is not None
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        if self.step:
            mid = self.low + round((mid - self.low) / self.step) * self.step
        return round(mid) if self.is_int else float(mid)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.path, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.path, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class Cases:
    """A leaf that depends on a searched categorical one: its fixed values by the parent's value (its searched
    values are ``Dim`` cases)."""

    leaf: str  # the dotted key it sets
    parent: str  # the parent's dimension
    fixed: tuple[tuple[Any, Any], ...]  # (parent value, this leaf's value) for the cases that are fixed


def check_known_path(parts: list[str], *, where: str) -> None:
    if parts[0] not in TOP_LEVEL:
        raise ConfigError(f"{where}: unknown key {parts[0]!r}; top-level keys: {', '.join(TOP_LEVEL)}")
    if len(parts) == 1:
        return
    if parts[0] in ("seed", "device", "amp", "tf32"):
        raise ConfigError(f"{where}: {parts[0]} takes a value, not sub-keys")
    known = SEARCH_KEYS if parts[0] == "search" else tuple(f.name for f in dataclasses.fields(_SECTIONS[parts[0]]))
    if parts[1] not in known:
        raise ConfigError(f"{where}: unknown key {parts[0]}.{parts[1]}; known keys: {', '.join(known)}")
    if len(parts) > 2 and ".".join(parts[:2]) not in LAYER_MAPS:
        raise ConfigError(f"{where}: {parts[0]}.{parts[1]} takes a value, not sub-keys")


def case_of(document: dict[str, Any], parts: list[str], *, where: str) -> tuple[dict[Any, Any], Any] | None:
    """``finetune.lr.sgd`` names one case of a leaf that depends on another: (the leaf's mapping, the case's key as
    the file writes it), so ``--set`` can set that case alone; None if ``parts`` is no such path."""
    if len(parts) < 3 or parts[0] not in _SECTIONS:
        return None
    section = document.get(parts[0])
    leaf = section.get(parts[1]) if isinstance(section, dict) else None
    if not isinstance(leaf, dict) or "by" not in leaf:
        return None
    if len(parts) > 3:
        case = ".".join(parts[:3])
        raise ConfigError(
            f"{where}: a case is set whole; give its value or range: --set '{case}={{low: ..., high: ...}}'"
        )
    for key in leaf:
        if _label(key) == parts[2]:
            return leaf, key
    given = ", ".join(_label(k) for k in leaf if k != "by")
    raise ConfigError(
        f"{where}: {parts[0]}.{parts[1]} has no case {parts[2]!r} (its cases: {given}); set one of those, or the "
        f"whole leaf: --set '{parts[0]}.{parts[1]}={{by: ..., VALUE: ...}}'"
    )


def apply_override(document: dict[str, Any], item: str) -> None:
    """Apply ``--set KEY=VALUE`` to a space file's ``document``: the leaf at the dotted KEY (a known one, or one
    case of a dependent leaf) becomes the YAML scalar VALUE."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. prune.sparsity.fc1=0.9")
    try:
        value = load_yaml(raw, f"--set {key}") if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(
            f"--set {key}: cannot parse {raw!r} as a YAML value; quote strings, e.g. {key}='text'"
        ) from None
    parts = split_key(key)
    case = case_of(document, parts, where=f"--set {key}")
    if case is not None:  # one case of a leaf that depends on another: finetune.lr.sgd
        case[0][case[1]] = value
        return
    check_known_path(parts, where=f"--set {key}")
    node = document
    for depth, part in enumerate(parts[:-1], start=1):
        child = node.get(part)
        where = ".".join(parts[:depth])
        if child is None or (child == "auto" and where in LAYER_MAPS):
            # Absent or empty; or `auto` (every layer searched) that a layer set by name replaces, as documented:
            # one run, one layer pruned.
            child = {}
            node[part] = child
        elif not isinstance(child, dict):  # replacing it would silently drop what the file gave there
            raise ConfigError(
                f"--set {key}: {where} is {child!r:.60} ({type(child).__name__}), not a mapping that "
                f"{parts[depth]} could be set in; make {where} a mapping in the space file or set it whole: "
                f"--set '{where}={{{parts[depth]}: ...}}'"
            )
        node = child
    node[parts[-1]] = value


def section_leaf(path: str, *, where: str) -> list[str]:
    """The parts of ``path`` if it names a leaf of a section (``finetune.optimizer``, ``train.penalty``), searched
    or not; else a ``ConfigError`` that says why."""
    parts = split_key(path)
    check_known_path(parts, where=where)
    if len(parts) != 2 or parts[0] not in _SECTIONS or path in LAYER_MAPS:
        raise ConfigError(f"{where}: {path!r} is not a leaf of a section; name one such as finetune.optimizer")
    return parts


def split_key(key: str) -> list[str]:
    """The parts of a dotted key; under a layer map the whole rest is one layer name (``layer1.0.conv1``)."""
    for mapping in LAYER_MAPS:
        if key.startswith(mapping + ".") and len(key) > len(mapping) + 1:
            return [*mapping.split("."), key[len(mapping) + 1 :]]
    return key.split(".")


def is_searched(value: Any) -> bool:
    return isinstance(value, dict) and (
        ("choices" in value and set(value) <= CHOICE_KEYS)
        or ({"low", "high"} <= set(value) and set(value) <= RANGE_KEYS)
    )


def _label(value: Any) -> str:
    """A parent's value as it appears in a case's parameter name: ``sgd``, ``true``, ``0.5``."""
    return value if isinstance(value, str) else json.dumps(value)


def _fixed_value(base: dict[str, Any], section: str, name: str) -> Any:
    """The value of a fixed leaf: the file's, else the config's default."""
    if name in base.get(section, {}):
        return base[section][name]
    return getattr(_SECTIONS[section](), name)


def _case(cases: dict[Any, Any], value: Any) -> bool:
    try:
        return value in cases
    except TypeError:  # an unhashable value (a list) has no case
        return False


def dependent(
    pending: list[tuple[str, dict[str, Any], int]], base: dict[str, Any], dims: list[Dim], fail: Any
) -> list[Cases]:
    """Resolve the leaves that depend on another (``{by: PARENT, VALUE: LEAF, ...}``): under a fixed parent the
    case for its value is an ordinary leaf; under a searched categorical one every searched case is a ``Dim``
    searched when the parent has its value, and the fixed ones are a ``Cases``. New dimensions go where the leaf
    stood in the file, so a file that only rewrites a leaf this way keeps its dimensions' order."""
    searched = {d.path: d for d in dims}
    with_cases = {path for path, _, _ in pending}
    out: list[Cases] = []
    inserts: list[tuple[int, list[Dim]]] = []  # in file order, so their indices never decrease
    for path, leaf, index in pending:
        section, name = path.split(".", 1)
        by = leaf["by"]
        if not isinstance(by, str) or not by:
            raise fail(f"{path}.by must name the leaf it depends on, e.g. by: optimizer; got {by!r}")
        parent = by if "." in by else f"{section}.{by}"
        try:
            parts = section_leaf(parent, where=f"{path}.by")
        except ConfigError as exc:
            raise fail(str(exc)) from None
        if parent == path:
            raise fail(f"{path}.by names the leaf itself; name the leaf its value depends on")
        if parent in with_cases:
            raise fail(f"{path}.by: {parent} depends on another leaf itself; depend on a fixed or categorical leaf")
        cases = {k: v for k, v in leaf.items() if k != "by"}
        if not cases:
            raise fail(f"{path}: no cases; give a value or a range for each value of {parent}")
        for value, case in cases.items():
            if isinstance(case, dict) and "by" in case:
                raise fail(f"{path}.{_label(value)}: a case cannot depend on another leaf; give a value or a range")
        parent_dim = searched.get(parent)
        new: list[Dim] = []
        if parent_dim is None:  # a fixed parent: its value's case is the leaf
            value = _fixed_value(base, *parts)
            if not _case(cases, value):
                given = ", ".join(map(repr, cases))
                raise fail(f"{path}: no case for {parent}={value!r} (cases: {given}); add one")
            collect(f"{path}.{_label(value)}", cases[value], base.setdefault(section, {}), name, new, fail)
            inserts.append((index, [dataclasses.replace(d, path=path) for d in new]))
            continue
        if parent_dim.choices is None:
            raise fail(f"{path}.by: {parent} is searched over a range; depend on a fixed or categorical leaf")
        if path in ("prune.density", "prune.nonzero_params", "prune.allocation"):
            raise fail(f"{path} cannot depend on a searched leaf: the baselines and size refinements set it")
        missing = [c for c in parent_dim.choices if not _case(cases, c)]
        if missing:
            choices = ", ".join(map(repr, parent_dim.choices))
            raise fail(f"{path}: no case for {parent}={missing[0]!r}; give one for each of its choices ({choices})")
        fixed = []
        for choice in parent_dim.choices:
            sub: dict[str, Any] = {}
            got: list[Dim] = []
            collect(f"{path}.{_label(choice)}", cases[choice], sub, name, got, fail)
            if got:
                case = dataclasses.replace(got[0], path=f"{path}[{_label(choice)}]", leaf=path, when=(parent, choice))
                new.append(case)
            else:
                fixed.append((choice, sub[name]))
        inserts.append((index, new))
        if fixed:
            out.append(Cases(leaf=path, parent=parent, fixed=tuple(fixed)))
    for index, new in reversed(inserts):  # the last first: earlier indices stay valid, and ties keep file order
        dims[index:index] = new
    return out


def collect(path: str, leaf: Any, section: dict[str, Any], name: str, dims: list[Dim], fail: Any) -> None:
    """File a leaf as fixed (into ``section``) or searched (into ``dims``), checking the range itself."""
    if isinstance(leaf, dict) and "by" in leaf:
        raise fail(f"{path}: only a section's own leaf can depend on another ({{by: ...}}), not a layer's or a case")
    if isinstance(leaf, dict) and not is_searched(leaf):
        if "choices" in leaf or "low" in leaf or "high" in leaf:
            extra = sorted(set(leaf) - (CHOICE_KEYS if "choices" in leaf else RANGE_KEYS))
            missing = "" if "choices" in leaf or {"low", "high"} <= set(leaf) else " (a range needs both low and high)"
            detail = f"unknown key {extra[0]!r}" if extra else "incomplete range"
            raise fail(f"{path}: {detail}{missing}; a searched value is {{low, high, log, step}} or {{choices: [...]}}")
        raise fail(f"{path}: unexpected mapping {leaf!r}; give a value, {{low, high, ...}} or {{choices: [...]}}")
    if not is_searched(leaf):
        section[name] = leaf
        return
    default = leaf.get("default")
    if "choices" in leaf:
        choices = leaf["choices"]
        if not isinstance(choices, list) or not choices:
            raise fail(f"{path}: choices must be a non-empty list, got {choices!r}")
        if len(choices) > MAX_CHOICES:  # validation builds a configuration for each
            raise fail(
                f"{path}: {len(choices):,} choices, more than the {MAX_CHOICES:,} a leaf may have; search a range"
            )
        if len(choices) == 1:  # a single choice is a fixed value
            section[name] = choices[0]
            return
        if default is not None and default not in choices:
            raise fail(f"{path}: default {default!r} is not one of the choices {choices}")
        dims.append(Dim(path=path, choices=tuple(choices), default=default))
        return
    low, high, log, step = leaf["low"], leaf["high"], leaf.get("log", False), leaf.get("step")
    for label, v in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise fail(f"{path}.{label} must be a finite number, got {v!r}")
    if not isinstance(log, bool):
        raise fail(f"{path}.log must be true or false, got {log!r}")
    if low > high:
        raise fail(f"{path}: inverted range, low={low} > high={high}; swap them")
    if low == high:
        raise fail(f"{path}: empty range, low == high == {low}; give a fixed value instead")
    if log and low <= 0:
        raise fail(f"{path}: a log range needs low > 0, got low={low}")
    if step is not None and (step <= 0 or log):
        raise fail(f"{path}: step must be > 0 and cannot be combined with log, got step={step}")
    if default is not None and not (low <= default <= high):
        raise fail(f"{path}: default {default!r} is outside [{low}, {high}]")
    dims.append(Dim(path=path, low=low, high=high, log=log, step=step, default=default))
