"""Limits on what a command line, a space file or a received file may ask for, each refused in one line.

A value past these limits is a typo or a hostile file, never a real run: ten thousand epochs are weeks of
training, a million trials years of them. Refusing them at the edge keeps validation itself bounded (a ladder of
a million baselines took minutes to check), keeps a thread count from exhausting the machine, keeps an integer
within the 64 bits that torch, numpy and SQLite store, and keeps a YAML file of a few hundred bytes from
expanding into gigabytes (aliases) or overflowing the parser's stack (nesting). Nothing here imports torch.
"""

from __future__ import annotations

import os
from typing import Any

from autoprune.errors import AutoPruneError, ConfigError, SearchError

__all__ = [
    "INT64_MAX",
    "MAX_BATCH",
    "MAX_CHOICES",
    "MAX_EPOCHS",
    "MAX_MESSAGE",
    "MAX_REPEATS",
    "MAX_RUNGS",
    "MAX_SEED",
    "MAX_TRIALS",
    "YAML_MAX_BYTES",
    "YAML_MAX_DEPTH",
    "YAML_MAX_NODES",
    "check_count",
    "check_threads",
    "check_tree",
    "cut",
    "machine_cpus",
    "too_many_values",
]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_EPOCHS = 10_000  # per phase; also a dense start's and an lr step's
MAX_BATCH = 1 << 24  # samples in one batch (16.8 M): more than any dataset a trial loads at once
MAX_TRIALS = 1_000_000  # trials of a search, and trials at a time
MAX_RUNGS = 100  # baselines in a ladder, and calibration probes
MAX_REPEATS = 1_000  # timed blocks of one latency measurement: each lasts at least a few milliseconds
MAX_CHOICES = 1_000  # choices of one searched leaf: validation builds a configuration for each
MAX_SEED = 2**32 - 1  # a search's sampler seed: Optuna's samplers seed numpy, which takes 32 bits
YAML_MAX_BYTES = 1 << 20  # a space file is a few kB
YAML_MAX_DEPTH = 32  # mappings and lists inside each other; a space file nests five deep
YAML_MAX_NODES = 100_000  # values once aliases are expanded (a 400-byte alias bomb is half a million)
MAX_MESSAGE = 500  # characters of an error line


def machine_cpus() -> int:
    """The CPUs of this machine (``os.cpu_count()``; 1 when unknown)."""
    return os.cpu_count() or 1


def check_threads(option: str, value: object, error: type[AutoPruneError] = ConfigError) -> None:
    """Refuse more threads (or CPUs per trial) than this machine has: each would be a thread, and a hundred
    thousand exhaust the machine's threads for every process on it."""
    cpus = machine_cpus()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= cpus:
        raise error(
            f"{option} must be more than 0 and at most the {cpus} CPUs of this machine, got {value!r}; 1 leaves the "
            "others to whatever else runs here"
        )


def check_count(option: str, value: object, error: type[AutoPruneError] = SearchError) -> None:
    """Refuse a count of trials (``--trials``, ``--concurrent``) that is not a whole number from 1 to
    ``MAX_TRIALS``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TRIALS:
        raise error(f"{option} must be a positive integer (at most {MAX_TRIALS:,}), got {value!r}")


def _int_text(value: int) -> str:
    return str(value) if value.bit_length() < 200 else f"an integer of {value.bit_length()} bits"


def check_tree(document: Any, source: str, error: type[AutoPruneError] = ConfigError) -> None:
    """Refuse a parsed document (YAML or JSON-like) nested deeper than ``YAML_MAX_DEPTH``, holding more than
    ``YAML_MAX_NODES`` values once shared ones (YAML aliases) are counted at each place they appear, or an
    integer outside 64 bits. Every later step (validation, the digest, an error message that shows a value)
    expands aliases, so the count is taken the same way; it stops at the limit, which bounds its own cost."""
    count = 0
    stack: list[tuple[Any, str, int]] = [(document, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        count += 1
        if count > YAML_MAX_NODES:
            raise error(too_many_values(source))
        if depth > YAML_MAX_DEPTH:
            raise error(f"{source}: {where or 'the document'} is nested more than {YAML_MAX_DEPTH} levels deep")
        if isinstance(node, int) and not isinstance(node, bool) and not INT64_MIN <= node <= INT64_MAX:
            raise error(f"{source}: {where or 'the value'} is {_int_text(node)}, which does not fit in 64 bits")
        if isinstance(node, dict):
            for key, value in node.items():
                label = f"{where}.{key}" if where else str(key)
                stack.append((key, label, depth + 1))
                stack.append((value, label, depth + 1))
        elif isinstance(node, (list, tuple)):
            stack.extend((value, f"{where}[{i}]", depth + 1) for i, value in enumerate(node))


def too_many_values(source: str) -> str:
    """The refusal of a document past ``YAML_MAX_NODES`` values, as ``check_tree`` and the YAML reader say it."""
    return (
        f"{source}: more than {YAML_MAX_NODES:,} values once each value it repeats by reference (a YAML alias, "
        "*name) is counted where it appears; far more than such a file holds"
    )


def cut(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` on one line (whitespace runs become one space), at most ``limit`` characters, ending in an
    ellipsis (``...``, plain ASCII for any terminal) where it was cut: a value shown in a message may be a whole
    file."""
    head = message[: limit * 4]
    text = " ".join(head.split())
    if len(text) > limit or len(head) < len(message):
        text = text[: limit - 3].rstrip() + "..."
    return text
