"""The one-line notes said under a search's front: what failed and why, a search that produced nothing, finetuning
that went wrong, trials that collapsed to chance, and a validation split a checkpoint may have trained on."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from autoprune.config import CARVED_VALIDATION_NOTE
from autoprune.report._format import fmt_acc


def carved_validation(trials: Sequence[dict]) -> bool:
    """Whether trials started from a checkpoint chose on a validation split carved from the training data."""
    return any(t.get("start") == "checkpoint" and t.get("val_source") == "carved" for t in trials)


SETBACK = 0.05  # finetuning that ends this far below the pruned model it started from went wrong


def finetune_setbacks(records: Sequence[dict], margin: float = SETBACK) -> str | None:
    """A one-line note on the trials whose finetuning lowered validation accuracy by more than ``margin`` from
    the model it started from (``val_accuracy_pruned``), or None when there are none.

    Finetuning exists to recover what pruning lost: ending well below its start means its updates were too
    large for the model (the lr too high, or no gradient clipping). Among sampled trials one such trial is the
    sampler exploring; among the seeded baselines it means the space's defaults do not suit the model.
    """
    hit = [
        r
        for r in records
        if r.get("val_accuracy_pruned") is not None
        and r.get("val_accuracy") is not None
        and r["val_accuracy"] < r["val_accuracy_pruned"] - margin
    ]
    if not hit:
        return None
    worst = max(hit, key=lambda r: r["val_accuracy_pruned"] - r["val_accuracy"])
    baselines = sum(1 for r in hit if r.get("baseline"))
    among = ""
    if baselines:
        among = f", including {baselines} seeded baseline{'s' if baselines > 1 else ''} (the space's defaults)"
    ft = (worst.get("config") or {}).get("finetune") or {}
    lr = " with phase 1's rewound lr" if ft.get("lr_rewind") else f" at lr {ft['lr']:.3g}" if "lr" in ft else ""
    clip = ft.get("grad_clip")
    fix = "lower finetune.lr" + (f" or finetune.grad_clip (now {clip:g})" if clip else " or set finetune.grad_clip")
    return (
        f"note: finetuning lost more than {100 * margin:g} pt of validation accuracy in {len(hit)} of "
        f"{len(records)} trials{among}; worst: trial {worst.get('trial', '?')}, "
        f"{fmt_acc(worst['val_accuracy_pruned'])} after pruning, {fmt_acc(worst['val_accuracy'])} after "
        f"finetuning{lr}: its steps are too large for this model; {fix}"
    )


CHANCE_ERRORS = 2.0  # standard errors above chance a validation accuracy must reach to show something was learned


def _number(value: Any) -> float | None:
    """A finite number from a record, else None: a study is data, and may hold anything."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def chance_ceiling(record: dict) -> float | None:
    """The highest validation accuracy that is still chance for ``record``: its split's majority share (``val_chance``)
    plus ``CHANCE_ERRORS`` standard errors of an accuracy at that share on its ``val_samples`` samples; None when
    the record does not say them (runs made before records held ``val_chance``).

    One-sided: a network whose updates diverged answers one class (any of them, so at most the majority share) or
    noise, and on a small split a share a little above it is still luck, not learning."""
    chance, n = _number(record.get("val_chance")), _number(record.get("val_samples"))
    if chance is None or n is None or n < 1 or not 0 < chance < 1:
        return None
    return chance + CHANCE_ERRORS * math.sqrt(chance * (1 - chance) / n)


def at_chance(record: dict, key: str = "val_accuracy") -> bool:
    """Whether ``record[key]`` (a validation accuracy) is no better than chance (``chance_ceiling``)."""
    ceiling, accuracy = chance_ceiling(record), _number(record.get(key))
    return ceiling is not None and accuracy is not None and accuracy <= ceiling


def _named(records: Sequence[dict], limit: int = 8) -> str:
    shown = ", ".join(str(r.get("trial", "?")) for r in records[:limit])
    more = f" and {len(records) - limit} more" if len(records) > limit else ""
    return f"trial{'s' if len(records) > 1 else ''} {shown}{more}"


def _lr(record: dict, section: str) -> str:
    lr = _number(((record.get("config") or {}).get(section) or {}).get("lr"))
    return f" (now {lr:.3g})" if lr is not None else ""


def chance_collapses(records: Sequence[dict]) -> str | None:
    """A one-line note naming the trials that finished no better than chance (``at_chance``), or None.

    Such a trial is "complete" and may even sit on the front at a small size, yet learned nothing: its updates
    diverged, and clipping kept the loss finite, so nothing failed. Where it collapsed says what to lower:
    already after phase 1, ``train.lr``; after finetuning from a pruned model above chance, ``finetune.lr``;
    after pruning, which left too few weights for finetuning to learn back, the size or ``finetune.lr``.
    """
    hit = [r for r in records if at_chance(r)]
    if not hit:
        return None
    trained: list[dict] = []
    pruned: list[dict] = []
    finetuned: list[dict] = []
    for r in hit:  # by the phase that left it at chance
        if at_chance(r, "val_accuracy_trained"):
            trained.append(r)
        elif at_chance(r, "val_accuracy_pruned"):
            pruned.append(r)
        else:
            finetuned.append(r)
    causes = []
    if trained:
        causes.append(f"in phase 1, {_named(trained)}: lower train.lr{_lr(trained[0], 'train')}")
    if finetuned:
        causes.append(f"in finetuning, {_named(finetuned)}: lower finetune.lr{_lr(finetuned[0], 'finetune')}")
    if pruned:
        causes.append(f"at pruning, not learned back, {_named(pruned)}: too small a size, or lower finetune.lr")
    first = hit[0]
    return (
        f"note: {len(hit)} of {len(records)} trials collapsed to chance (validation accuracy at most "
        f"{fmt_acc(chance_ceiling(first))}, within {CHANCE_ERRORS:g} standard errors of the "
        f"{fmt_acc(_number(first['val_chance']))} that always answering the largest class scores on "
        f"{first['val_samples']} samples): their updates diverged and they learned nothing; " + "; ".join(causes)
    )


def failure_causes(failures: Sequence[dict]) -> list[tuple[str, int]]:
    """The reasons trials failed, most frequent first, with their counts."""
    counts: dict[str, int] = {}
    for f in failures:
        reason = str(f.get("reason") or f.get("outcome") or "unknown")
        counts[reason] = counts.get(reason, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])


def all_failed(results: Any) -> str | None:
    """One line when a study has failed trials and no finished one: the search produced nothing, and why."""
    if results.trials or not results.failures:
        return None
    causes = failure_causes(results.failures)
    reason, count = causes[0]
    n = len(results.failures)
    share = "every one" if count == n else f"{count} of them"
    return (
        f"all {n} trials failed, no model was produced; {share}: {reason}"
        f"{f' (and {len(causes) - 1} other causes)' if len(causes) > 1 else ''}; fix that, then run the search again"
    )


def front_notes(results: Any) -> list[str]:
    """The notes for a finished search's results (``ledger.Results``), in the order they are said."""
    notes = []
    if results.failures and results.trials:  # with no finished trial, ``all_failed`` says it as the error
        causes = failure_causes(results.failures)
        shown = "; ".join(f"{count} x {reason}" for reason, count in causes[:3])
        notes.append(f"failed trials: {shown}{f'; {len(causes) - 3} more causes' if len(causes) > 3 else ''}")
    if carved_validation(results.trials):
        notes.append(CARVED_VALIDATION_NOTE)
    for note in (finetune_setbacks(results.trials), chance_collapses(results.trials)):
        if note:
            notes.append(note)
    return notes
