"""Names of code found in files (``module:function``): imported only from modules the user allowed.

A model file or a run directory may come from someone else. The factory or dataset loader it names is code:

- ``evaluate`` and ``load_model`` import it only when the user named that module (``--allow-module``).
- ``report`` and ``pick`` import nothing a run names: they read the study and copy files as data.
- ``resume`` imports the modules of the run's frozen space when this user started the run, else only those the
  user allows with ``--allow-module``.

"This user started the run" must be something a received run directory cannot fake. A digest can be recomputed
by anyone, so ``search`` also writes a *seal* into run.json: an HMAC of the space's digest under a key that stays
in this user's config folder (``$XDG_CONFIG_HOME/autoprune``, else ``~/.config/autoprune``), never in a run. A run
made by someone else, or on a machine that does not share that folder, has no valid seal, and its modules need
``--allow-module``; a resume so allowed seals the run, so the next one needs no flag. Registry names
(``lenet-300-100``, ``digits``) are not code and always allowed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from autoprune.errors import AutoPruneError, ModelError, SearchError

__all__ = ["check_allowed", "check_run_modules", "named_modules", "seal", "sealed_here"]

KEY_FILE = "run-seal.key"
_KEY_BYTES = 32
_SEALED = b"autoprune run space\0"  # what a seal vouches for, ahead of the digest: nothing else shares the key


def _module(name: str) -> str | None:
    module, sep, _ = name.partition(":")
    return module.strip() if sep else None


def _allowed(module: str, allowed: Iterable[str]) -> bool:
    """Whether ``module`` is one of ``allowed`` or inside a package of it."""
    return any(module == a or module.startswith(f"{a}.") for a in allowed if a)


def check_allowed(
    name: Any, allowed: Iterable[str], *, what: str, source: str, error: type[AutoPruneError] = ModelError
) -> None:
    """Refuse, in one line, a ``module:function`` ``name`` read from ``source`` unless its module (or a package
    containing it) is in ``allowed``. ``what`` says where the name was found (``architecture.factory``).
    """
    if not isinstance(name, str):
        return  # not a code reference: whatever reads it validates it as data
    module = _module(name)
    if module is None:
        return
    if _allowed(module, allowed):
        return
    raise error(
        f"{source} names code to run ({what} {name!r}); a model file is data, and autoprune imports a module named "
        f"in a file only when you allow it: add --allow-module {module} (in Python, allow_modules=[{module!r}]) "
        "if you trust that code"
    )


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def named_modules(document: Any) -> set[str]:
    """The modules a search-space document names for its model and dataset: fixed, among choices, or in the
    cases of a dependent leaf (any string under ``model.name`` or ``dataset.name`` that reads ``module:name``)."""
    found: set[str] = set()
    if not isinstance(document, dict):
        return found
    for section in ("model", "dataset"):
        value = document[section].get("name") if isinstance(document.get(section), dict) else None
        found.update(m for m in map(_module, _strings(value)) if m)
    return found


def _key_path() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "autoprune" / KEY_FILE


def _key(*, create: bool) -> bytes | None:
    """This user's seal key; made (0600, in a 0700 folder) on first use when ``create``. None when absent."""
    path = _key_path()
    try:
        with open(path, "rb") as fh:
            key = fh.read(_KEY_BYTES + 1)
        return key if len(key) == _KEY_BYTES else None
    except FileNotFoundError:
        if not create:
            return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_bytes(_KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return _key(create=False)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


def seal(digest: str) -> str | None:
    """The seal of a run whose frozen space has ``digest`` (run.json's ``seal``); None when no key can be kept
    (a read-only home), and the run's modules then need ``--allow-module`` on resume."""
    try:
        key = _key(create=True)
    except (OSError, RuntimeError):  # RuntimeError: no home folder to be found
        return None
    return _mac(key, digest) if key else None


def sealed_here(digest: str, value: Any) -> bool:
    """Whether ``value`` is this user's seal of ``digest``: the run was started (or allowed) by this user."""
    try:
        key = _key(create=False)
    except (OSError, RuntimeError):
        return False
    if key is None or not isinstance(value, str):
        return False
    return hmac.compare_digest(_mac(key, digest), value)


def _mac(key: bytes, digest: str) -> str:
    return hmac.new(key, _SEALED + digest.encode(), hashlib.sha256).hexdigest()


def check_run_modules(document: Any, *, sealed: bool, allow_modules: Iterable[str], source: str) -> None:
    """Refuse, in one line, a frozen space (``source``) naming a module that ``resume`` may not import: any module
    when the run is not ``sealed`` by this user, unless it is in ``allow_modules``."""
    allowed = list(allow_modules)
    for module in sorted(named_modules(document)):
        if sealed or _allowed(module, allowed):
            continue
        raise SearchError(
            f"{source} names code to run (module {module!r}), and run.json carries no seal of yours (you did not "
            "start this run, or not where your config folder is); autoprune imports it only when you allow it: add "
            f"--allow-module {module} (in Python, allow_modules=[{module!r}]) if you trust that code"
        )
