"""The command line's shared pieces: help that shows flags bare, value enums, options declared once (``search``'s
launch options among them)."""

from __future__ import annotations

import enum
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from autoprune._bounds import INT64_MAX, machine_cpus
from autoprune.searching.space import SAMPLERS
from autoprune.searching.stopping import EARLY_STOP_MODES


class _BareHelp:
    """``-h/--help`` shown as a flag, without a value type."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class Command(_BareHelp, TyperCommand):
    pass


class Group(_BareHelp, TyperGroup):
    pass


app = typer.Typer(
    name="autoprune",
    cls=Group,
    help="Search sparse-training, pruning and finetuning jointly; get a Pareto front of real, loadable models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
Sampler = enum.Enum("Sampler", {name: name for name in SAMPLERS}, type=str)  # --sampler [tpe|nsga2|random]
EarlyStopMode = enum.Enum("EarlyStopMode", {name: name for name in EARLY_STOP_MODES}, type=str)  # [off|asha]


def flag(*names: str, help: str) -> Any:
    return typer.Option(*names, help=help, metavar="")


# Options that several commands share, declared once.
SpaceArgument = Annotated[
    str | None, typer.Argument(help="Space file, or the name of a shipped one (default: digits_quick).")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help=(
            "Set a leaf by its dotted path to a YAML value: a fixed value, a range {low: .., high: ..} or "
            "{choices: [..]} (finetune.lr.sgd: one case of a leaf that depends on another). Repeatable."
        ),
    ),
]
StorageOption = Annotated[
    str | None,
    typer.Option(
        "--study-storage",
        envvar="AUTOPRUNE_STUDY_STORAGE",
        help="Optuna storage: a database URL (postgresql://user:pw@host/db, sqlite:///file.db) or a journal file "
        "path. Default: study.db in the run directory.",
    ),
]
AllowModuleOption = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-module",
        metavar="MODULE",
        help="Allow importing this module where a file you did not write (a model file, a run directory someone "
        "else started) names a model or dataset factory in it. Repeatable.",
    ),
]
LaunchJsonOption = Annotated[bool, flag("--json", help="At the end print the report JSON on stdout.")]
VerboseOption = Annotated[bool, flag("--verbose", help="Show Ray's own logs and every early-stopping decision.")]
TimeoutOption = Annotated[
    str | None,
    typer.Option(help="Time budget, e.g. 90s, 15m, 1h30m: no trial starts after it, running ones finish."),
]
# `search`'s launch options (api.search builds an autoprune.searching.launchconfig.LaunchConfig of them).
TrialsOption = Annotated[
    int | None, typer.Option(help="Number of trials (default: the space's search.trials, else 20).")
]
ConcurrentOption = Annotated[
    int | None, typer.Option(help="Trials at a time (default: as many as the cluster's CPUs/GPUs fit).")
]
CpusOption = Annotated[float, typer.Option(help="CPUs per trial; also the trial's torch threads.")]
GpusOption = Annotated[
    str,
    typer.Option(
        help="GPUs per trial: auto (a share of a GPU where the cluster has GPUs, else the CPU), 0 for the CPU, "
        "or a number; a fraction (0.25) shares one GPU between trials."
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(help="Connect to a running Ray cluster: auto or host:port (default: start Ray locally)."),
]
SamplerOption = Annotated[
    Sampler | None, typer.Option(help="Optuna sampler (default: the space's search.sampler, else tpe).")
]
SeedOption = Annotated[int, typer.Option(help="Sampler seed; with --concurrent 1 the run is reproducible.")]
EarlyStopOption = Annotated[
    EarlyStopMode | None,
    typer.Option(help="Stop trials that trail those of their size or smaller (default: the space's, else off)."),
]
ReductionOption = Annotated[
    float | None, typer.Option(help="Early stopping: rungs η× apart in epochs; the top 1/η of a rung go on (3).")
]
GraceOption = Annotated[float | None, typer.Option(help="Early stopping: epochs before the first rung (1).")]
# `trial`'s own: bounded here so that a value past them is a usage error, before anything is read or said.
ThreadsOption = Annotated[
    int,
    typer.Option(
        min=1,
        max=machine_cpus(),
        help="torch CPU threads, at most the machine's (1: a busy machine slows it gracefully).",
    ),
]
TrialSeedOption = Annotated[
    int | None, typer.Option(min=0, max=INT64_MAX, help="Seed of the split, the weights and the batch order.")
]
# `pick`'s bounds, one per size a record measures (pareto.pick_at_most).
MaxParamsOption = Annotated[
    int | None,
    typer.Option(
        help="With at most N nonzero params: the largest model within one standard error of the most accurate one "
        "on validation (see --most-accurate)."
    ),
]
MaxMacsOption = Annotated[
    int | None, typer.Option(help="With at most N MACs per sample as the model runs: chosen as by --max-params.")
]
MaxLatencyOption = Annotated[
    float | None,
    typer.Option(
        "--max-latency-ms",
        help="With at most MS milliseconds per forward pass at the trials' measure.latency_batch: chosen as by "
        "--max-params.",
    ),
]
