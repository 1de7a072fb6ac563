"""The ``autoprune`` command. Commands declare options and hand off to the library.

Library errors (``AutoPruneError``) become one red line on stderr and exit code 1, never a traceback.
Heavy imports (torch, Ray, pandas, matplotlib) happen inside the commands that need them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from .errors import AutoPruneError

app = typer.Typer(
    name="autoprune",
    help="Search sparse-training, pruning and finetuning jointly; get a Pareto front of real, loadable models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# Options that several commands share, declared once.
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Fix a leaf by its dotted path: KEY=VALUE (YAML scalar). Repeatable."),
]
StorageOption = Annotated[
    str | None,
    typer.Option("--study-storage", envvar="AUTOPRUNE_STUDY_STORAGE", help="Storage URL with its password."),
]
LaunchJsonOption = Annotated[bool, typer.Option("--json", help="At the end print the report JSON on stdout.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", help="Show Ray's own logs.")]


@app.callback()
def _root() -> None:
    """Search sparse-training, pruning and finetuning jointly; get a Pareto front of real, loadable models."""


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"autoprune: error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def _log(message: str) -> None:
    typer.echo(message, err=True)


@app.command()
def trial(
    space: Annotated[
        str | None, typer.Argument(help="Space file, or the name of a shipped one (default: digits_quick).")
    ] = None,
    set_: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON trial record on stdout.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: the config's, auto).")] = None,
    save: Annotated[Path | None, typer.Option(help="Export the resulting model to this file.")] = None,
) -> None:
    """Run one full pipeline (sparse train → prune → finetune → evaluate) with fixed values. No Ray."""
    from .space import load_space
    from .trial import run_trial

    spec = load_space(space, set_ or [])
    cfg = spec.default_config()
    if device is not None:
        from dataclasses import replace

        cfg = replace(cfg, device=device)
    if spec.dims:
        unset = ", ".join(f"{d.path}={d.midpoint()!r}" for d in spec.dims)
        _log(f"note: {len(spec.dims)} searched dimensions not fixed by --set take their defaults: {unset}")
    result = run_trial(cfg, log=_log)
    record = result.record()
    if save is not None:
        record["model_path"] = str(result.save(save))
    if as_json:
        _print_json(record)
    else:
        from .report import trial_summary

        typer.echo(trial_summary(record))


# ------------------------------------------------------------------------------------------- search commands

_STORAGE_HELP = (
    "Optuna storage: a database URL (postgresql://user:pw@host/db, sqlite:///file.db) or a journal file path. "
    "Default: study.db in the run directory."
)


def _print_front(results: Any, run_dir: Path) -> None:
    from .report import front_table

    total = len(results.trials) + results.failed
    typer.echo(front_table(results.front, total=len(results.trials), failed=results.failed, baseline=results.baseline))
    if results.running:
        _log(f"note: {results.running} trial(s) of {run_dir} are still running (or were cut off: see resume)")
    _log(f"{total} trials in the study; report files in {run_dir / 'report'}")


def _finish_launch(outcome: Any, as_json: bool) -> None:
    from .report import report_document

    res = outcome.results
    if as_json:
        _print_json(report_document(res.front, res.trials, res.failed))
    else:
        _print_front(res, outcome.run_dir)
    _log(f"started {outcome.ran} trial(s) in {outcome.seconds:.1f}s")
    if outcome.interrupted:
        _fail(
            f"interrupted: {res.counted} of {res.requested} trials finished; continue with "
            f"`autoprune resume {outcome.run_dir}`",
            code=130,
        )


@app.command()
def search(
    space: Annotated[
        str | None, typer.Argument(help="Space file, or the name of a shipped one (default: digits_quick).")
    ] = None,
    run_dir: Annotated[Path, typer.Option("--run-dir", help="New directory for everything the search makes.")] = ...,
    trials: Annotated[
        int | None, typer.Option(help="Number of trials (default: the space's search.trials, else 20).")
    ] = None,
    concurrent: Annotated[
        int | None, typer.Option(help="Trials at a time (default: as many as the cluster's CPUs/GPUs fit).")
    ] = None,
    cpus_per_trial: Annotated[float, typer.Option(help="CPUs per trial; also the trial's torch threads.")] = 1.0,
    gpus_per_trial: Annotated[
        float, typer.Option(help="GPUs per trial; a fraction (0.25) shares one GPU between trials.")
    ] = 0.0,
    address: Annotated[
        str | None,
        typer.Option(help="Connect to a running Ray cluster: auto or host:port (default: start Ray locally)."),
    ] = None,
    sampler: Annotated[
        str | None, typer.Option(help="tpe, nsga2 or random (default: the space's search.sampler, else tpe).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampler seed; with --concurrent 1 the run is reproducible.")] = 0,
    study_storage: Annotated[
        str | None, typer.Option("--study-storage", envvar="AUTOPRUNE_STUDY_STORAGE", help=_STORAGE_HELP)
    ] = None,
    set_: SetOption = None,
    as_json: LaunchJsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Search the pipeline with Ray Tune + Optuna (max val accuracy, min nonzero params) and report the front."""
    from .search import run_search

    outcome = run_search(
        space,
        run_dir,
        trials=trials,
        concurrent=concurrent,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        address=address,
        sampler=sampler,
        seed=seed,
        study_storage=study_storage,
        overrides=set_ or [],
        verbose=verbose,
        log=_log,
    )
    _finish_launch(outcome, as_json)


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="The run directory of a search.")],
    trials: Annotated[
        int | None, typer.Option(help="Extend to this many trials in total (default: finish the requested ones).")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster: auto, host:port or local (default: the search's).")
    ] = None,
    concurrent: Annotated[int | None, typer.Option(help="Trials at a time (default: the search's).")] = None,
    cpus_per_trial: Annotated[float | None, typer.Option(help="CPUs per trial (default: the search's).")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option(help="GPUs per trial (default: the search's).")] = None,
    study_storage: StorageOption = None,
    as_json: LaunchJsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Finish an interrupted search (finished trials are kept), or extend it with --trials N (N in total)."""
    from .search import resume_search

    outcome = resume_search(
        run_dir,
        trials=trials,
        study_storage=study_storage,
        address=address,
        concurrent=concurrent,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        verbose=verbose,
        log=_log,
    )
    _finish_launch(outcome, as_json)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="The run directory of a search (finished or running).")],
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"front": [...], "trials": [...], "failed": N} on stdout.')
    ] = False,
    csv: Annotated[
        Path | None, typer.Option(help="Also write every finished trial as CSV here (with an on_front column).")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Also write the Pareto plot (PNG) here.")] = None,
    study_storage: StorageOption = None,
) -> None:
    """The Pareto front over every finished trial of the study; refreshes the files in RUN_DIR/report."""
    from .ledger import load_results
    from .report import plot_front, report_document, write_csv, write_report

    results = load_results(run_dir, study_storage=study_storage)
    try:
        write_report(run_dir, results.front, results.trials, results.failed, baseline=results.baseline)
    except OSError as exc:
        _log(f"warning: could not refresh {run_dir / 'report'}: {exc}")
    if csv is not None:
        front = {id(r) for r in results.front}
        write_csv([{**r, "on_front": id(r) in front} for r in results.trials], csv)
        _log(f"wrote {csv}")
    if plot is not None:
        title = f"{run_dir.name}: Pareto front"
        plot_front(results.trials, results.front, plot, baseline=results.baseline, title=title)
        _log(f"wrote {plot}")
    if as_json:
        _print_json(report_document(results.front, results.trials, results.failed))
    else:
        _print_front(results, run_dir)


@app.command()
def pick(
    run_dir: Annotated[Path, typer.Argument(help="The run directory of a search.")],
    out: Annotated[Path, typer.Option("--out", help="File to export the chosen model to.")] = ...,
    max_params: Annotated[
        int | None, typer.Option(help="The most accurate front model with at most N nonzero params.")
    ] = None,
    min_accuracy: Annotated[
        float | None, typer.Option(help="The smallest front model with val accuracy >= A (a fraction).")
    ] = None,
    knee: Annotated[bool, typer.Option("--knee", help="The knee of the front (best trade-off).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help='Print the chosen record plus "out" on stdout.')] = False,
    study_storage: StorageOption = None,
) -> None:
    """Choose a Pareto-optimal model by one rule and export it as a self-describing file."""
    from .api import pick as pick_model

    chosen = pick_model(
        run_dir, out=out, max_params=max_params, min_accuracy=min_accuracy, knee=knee, study_storage=study_storage
    )
    if as_json:
        _print_json(chosen)
    else:
        typer.echo(
            f"trial {chosen['trial']}: val accuracy {chosen['val_accuracy']:.4f}, test accuracy "
            f"{chosen['test_accuracy']:.4f}, {chosen['params_nonzero']} of {chosen['params_total']} params -> {out}"
        )


@app.command()
def evaluate(
    model_file: Annotated[Path, typer.Argument(help="A model file written by `pick` or a search.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print test_accuracy, params_nonzero, params_total (and more) on stdout.")
    ] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
) -> None:
    """Reload an exported model (safely, weights only) and re-measure it on its dataset's test split."""
    from .api import evaluate as evaluate_model

    result = evaluate_model(model_file, device=device)
    if as_json:
        _print_json(result)
    else:
        rec = result["recorded"]
        recorded_acc = rec.get("test_accuracy")
        recorded_acc = f"{recorded_acc:.4f}" if isinstance(recorded_acc, (int, float)) else "unknown"
        typer.echo(
            f"{model_file}: test accuracy {result['test_accuracy']:.4f} (recorded {recorded_acc}), "
            f"{result['params_nonzero']} nonzero of {result['params_total']} params "
            f"(recorded {rec.get('params_nonzero')})"
        )


def main() -> None:
    """Console entry point: run the app and turn library errors into one line."""
    try:
        app(standalone_mode=True)
    except AutoPruneError as exc:
        typer.secho(f"autoprune: error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.secho("autoprune: interrupted", fg=typer.colors.RED, err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
