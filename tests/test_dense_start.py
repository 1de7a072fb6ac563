"""A search's dense start (``search.dense_start``): what a space may ask for, and what the dense model is.

The search with a dense start, its report and its resume run on Ray in ``test_search.py``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from autoprune.config import CARVED_VALIDATION_NOTE
from autoprune.errors import ConfigError
from autoprune.pipeline.trial import run_trial
from autoprune.searching.dense_start import START_KIND, dense_epochs, train_dense
from autoprune.searching.preflight import evaluate_start
from autoprune.searching.space import load_space

TINY = ["dataset.limit=400", "budget.train_epochs=2", "budget.finetune_epochs=1"]


def test_true_trains_as_many_epochs_as_the_trials_and_false_none() -> None:
    assert dense_epochs(load_space("digits_quick", [*TINY, "search.dense_start=true"])) == 2
    assert dense_epochs(load_space("digits_quick", [*TINY, "search.dense_start=7"])) == 7
    assert dense_epochs(load_space("digits_quick", [*TINY, "search.dense_start=false"])) is None
    assert dense_epochs(load_space("digits_quick", TINY)) is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["search.dense_start=always"],
            r"dense_start must be true, false or a number of epochs \(1 to 10,000\), got 'al",
        ),
        (["search.dense_start=0"], r"search\.dense_start must be true, false or a number of epochs"),
        (["search.dense_start=true", "budget.train_epochs=0"], r"budget\.train_epochs is 0; give the epochs"),
        (["search.dense_start=true", "model.weights=net.pt"], r"starts from model\.weights already; drop one"),
        (["search.dense_start=1", "dataset.val_fraction={low: 0.1, high: 0.3}"], r"searches dataset\.val_fraction, "),
    ],
)
def test_a_dense_start_that_cannot_hold_is_refused_in_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_space("digits_quick", [*TINY, *overrides])
    assert "\n" not in str(info.value)


def test_the_dense_start_is_plain_sgd_on_the_trials_split_and_its_reference_is_measured_from_its_tensors() -> None:
    space = load_space("digits_quick", [*TINY, "search.dense_start=3"])
    state, reference, seconds = train_dense(space, 3)
    assert reference["reference"] == START_KIND and reference["epochs"] == 3 and seconds > 0
    # The tensors, loaded into a fresh model, measure exactly what the reference says (nothing was pruned).
    again = evaluate_start(space.default_config(), state, device="cpu")
    assert again["val_accuracy"] == reference["val_accuracy"]
    assert again["test_accuracy"] == reference["test_accuracy"]
    assert reference["params_nonzero"] == reference["params_total"]
    # It is trained: far above a fresh model's chance accuracy on ten digits.
    assert reference["val_accuracy"] > 0.5
    fresh = run_trial(
        dataclasses.replace(
            space.default_config(),
            budget=dataclasses.replace(space.default_config().budget, train_epochs=0, finetune_epochs=0),
            prune=dataclasses.replace(space.default_config().prune, enabled=False),
        ),
        device="cpu",
    )
    assert fresh.val_accuracy < reference["val_accuracy"] - 0.3
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in state.values())


def test_a_trial_from_the_dense_start_says_so_without_the_carved_validation_note() -> None:
    space = load_space("digits_quick", TINY)
    cfg = space.default_config()
    state, _, _ = train_dense(space, 1)
    lines: list[str] = []
    record = run_trial(cfg, device="cpu", start=state, start_kind=START_KIND, log=lines.append).record()
    assert record["start"] == START_KIND and record["val_source"] == "carved"
    assert "start: trained weights from the dense start" in lines and CARVED_VALIDATION_NOTE not in lines
    # The same tensors given as a checkpoint: validation carved from data it may have seen is said.
    lines.clear()
    assert run_trial(cfg, device="cpu", start=state, log=lines.append).record()["start"] == "checkpoint"
    assert CARVED_VALIDATION_NOTE in lines
