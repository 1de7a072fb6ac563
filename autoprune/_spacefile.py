"""Finding space files (a path, or the name of a shipped one) and reading YAML safely."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

DEFAULT_SPACE = "digits_quick"


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no arbitrary objects) that also reads ``1e-4`` as a float, as a user means it.

    YAML 1.1 wants a dot in the mantissa (``1.0e-4``) and would otherwise hand back the string "1e-4".
    """


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


def load_yaml(text: str) -> Any:
    """Parse YAML safely (no Python objects), reading ``1e-4`` as a float."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: as safe as yaml.safe_load


def builtin_spaces() -> dict[str, Path]:
    """The space files shipped inside the package, by name (file stem)."""
    folder = Path(__file__).parent / "spaces"
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
