"""Finding space files (a path, or the name of a shipped one) and reading YAML safely, within ``_bounds``' limits."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from autoprune._bounds import YAML_MAX_BYTES, YAML_MAX_DEPTH, YAML_MAX_NODES, check_tree, too_many_values
from autoprune.errors import AutoPruneError, ConfigError, first_line

DEFAULT_SPACE = "digits_quick"


class _TooManyValues(Exception):
    pass


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no arbitrary objects) that also reads ``1e-4`` as a float, as a user means it, and stops
    at the ``YAML_MAX_NODES``-th value it builds.

    YAML 1.1 wants a dot in the mantissa (``1.0e-4``) and would otherwise hand back the string "1e-4". Counting
    while composing bounds the parse of a file of many small values (PyYAML parses 1 MiB of them in seconds) by
    the limit ``check_tree`` holds the expanded document to anyway: an alias is counted once here, so nothing
    ``check_tree`` would accept is refused.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.values = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.values += 1
        if self.values > YAML_MAX_NODES:
            raise _TooManyValues
        return super().compose_node(parent, index)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(text: str, source: str = "YAML", error: type[AutoPruneError] = ConfigError) -> Any:
    """Parse YAML safely (no Python objects), reading ``1e-4`` as a float, within ``_bounds``' limits (size,
    nesting, values once aliases are expanded, 64-bit integers).

    A syntax error is a ``yaml.YAMLError`` (callers say where it is); anything else is ``error``, one line
    naming ``source``: a value its tag cannot build (``!!int abc``, a 13th month, an integer of 5,000 digits)
    raises a plain Python error from inside PyYAML, and deep nesting its ``RecursionError``.
    """
    if len(text) > YAML_MAX_BYTES:
        raise error(f"{source} is {len(text):,} characters, more than the {YAML_MAX_BYTES:,} a space file can be")
    try:
        document = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: as safe as yaml.safe_load
    except RecursionError:
        raise error(f"{source} is nested too deeply (at most {YAML_MAX_DEPTH} levels)") from None
    except _TooManyValues:
        raise error(too_many_values(source)) from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise error(f"{source}: a value cannot be read ({first_line(exc, 120)})") from None
    check_tree(document, source, error)
    return document


def read_text(path: Path, source: str, error: type[AutoPruneError] = ConfigError) -> str:
    """The text of a space file: refused in one line when it is larger than a space file can be or not UTF-8."""
    try:
        if path.stat().st_size > YAML_MAX_BYTES:
            raise error(
                f"{source} is larger than the {YAML_MAX_BYTES >> 20} MiB a space file can be; is it the right file?"
            )
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{source} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start : exc.start + 1]!r}); save it "
            "as UTF-8"
        ) from None
    except OSError as exc:
        raise error(f"cannot read {source}: {exc.strerror or exc}") from None


def builtin_spaces() -> dict[str, Path]:
    """The space files shipped inside the package, by name (file stem)."""
    folder = Path(__file__).parent.parent / "spaces"
    return {p.stem: p for p in sorted(folder.glob("*.y*ml"))}


def resolve_space_path(spec: str | Path | None) -> Path:
    """A path to a space file, or the name of a shipped one (``digits_quick``); None means the default."""
    if spec is None:
        spec = DEFAULT_SPACE
    path = Path(spec)
    if path.is_file():
        return path
    shipped = builtin_spaces()
    if str(spec) in shipped:
        return shipped[str(spec)]
    if path.exists():
        raise ConfigError(f"space file {str(spec)!r} is not a regular file")
    raise ConfigError(
        f"space file {str(spec)!r} not found; "
        f"give a path to a YAML file or a shipped space: {', '.join(sorted(shipped))}"
    )
