"""The ``autoprune`` command: a thin layer over ``autoprune.api``. Commands declare options and hand off.

Library errors (``AutoPruneError``) become one red line on stderr and exit code 1, never a traceback.
``--json`` prints one JSON document on stdout and nothing else there; logs and progress go to stderr.
Heavy imports (torch, Ray, pandas, matplotlib) happen inside the commands that need them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from autoprune._bounds import cut
from autoprune._cli_options import (
    AddressOption,
    AllowModuleOption,
    Command,
    ConcurrentOption,
    CpusOption,
    EarlyStopMode,
    EarlyStopOption,
    GpusOption,
    GraceOption,
    LaunchJsonOption,
    MaxLatencyOption,
    MaxMacsOption,
    MaxParamsOption,
    ReductionOption,
    SamplerOption,
    SeedOption,
    SetOption,
    SpaceArgument,
    StorageOption,
    ThreadsOption,
    TimeoutOption,
    TrialSeedOption,
    TrialsOption,
    VerboseOption,
    app,
    flag,
)
from autoprune.config import DEFAULT_THREADS
from autoprune.errors import AutoPruneError, disk_full, first_line


def _version(value: bool) -> None:
    if value:
        from autoprune import __version__

        typer.echo(f"autoprune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", metavar="", callback=_version, is_eager=True),
    ] = False,
) -> None:
    """Search sparse-training, pruning and finetuning jointly; get a Pareto front of real, loadable models."""


def _fail(message: str, code: int = 1) -> NoReturn:
    _one_line(message)
    raise typer.Exit(code)


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def _log(message: str) -> None:
    typer.echo(message, err=True)


@app.command(cls=Command)
def trial(
    space: SpaceArgument = None,
    set_: SetOption = None,
    as_json: Annotated[
        bool, flag("--json", help="Print one JSON trial record on stdout, and nothing on stderr.")
    ] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N (default: the config's, auto).")] = None,
    threads: ThreadsOption = DEFAULT_THREADS,
    seed: TrialSeedOption = None,
    save: Annotated[Path | None, typer.Option(help="Export the resulting model to this file.")] = None,
) -> None:
    """Run one full pipeline (sparse train → prune → finetune → evaluate) with fixed values. No Ray."""
    from autoprune.api import load_space, run_trial
    from autoprune.io._paths import check_output_file

    if save is not None:  # before the note and the trial: a bad path is the one thing to say
        check_output_file(save, what="--save", example="model.pt")
    spec = load_space(space, set_ or [])
    active = spec.resolve({})  # the cases a parent's default leaves out are not searched in this trial
    if active and not as_json:
        unset = ", ".join(f"{path}={value!r}" for path, value in active.items())
        _log(f"note: {len(active)} searched dimensions not fixed by --set take their defaults: {unset}")
    log, on_epoch = (None, None) if as_json else (_log, None)
    if not as_json and sys.stderr.isatty():  # a live status line only where someone watches it
        from autoprune.searching.progress import TrialProgress

        budget = spec.default_config().budget
        status = TrialProgress({"train": budget.train_epochs, "finetune": budget.finetune_epochs}, sys.stderr.write)
        log, on_epoch = status.line, status
    result = run_trial(spec, device=device, threads=threads, seed=seed, save=save, log=log, on_epoch=on_epoch)
    record = result.record()
    if save is not None:
        record["model_path"] = str(save)
    if as_json:
        _print_json(record)
    else:
        from autoprune.report.summary import trial_summary

        typer.echo(trial_summary(record))


# ------------------------------------------------------------------------------------------- search commands


def _print_front(results: Any, run_dir: Path) -> None:
    from autoprune.report.notes import front_notes
    from autoprune.report.render import front_table, sizes_table
    from autoprune.rundir.directory import declared_sizes

    total = len(results.trials) + results.failed + len(results.stopped)
    counts = {"total": len(results.trials), "failed": results.failed}
    typer.echo(front_table(results.front, **counts, baseline=results.baseline, key=results.key))
    at_sizes = sizes_table(results.front, declared_sizes(run_dir), results.trials)
    if at_sizes:
        typer.echo(at_sizes)
    if isinstance(results.calibration, str):  # from the study: data, printed without control characters
        _log("".join(c if c.isprintable() else "?" for c in results.calibration))
    for note in front_notes(results):
        _log(note)
    if results.running:
        _log(f"note: {results.running} trial(s) of {run_dir} are still running (or were cut off: see resume)")
    stopped = f" ({len(results.stopped)} stopped early)" if results.stopped else ""
    _log(f"{total} trials in the study{stopped}; report files in {run_dir / 'report'}")


def _finish_launch(outcome: Any, as_json: bool) -> None:
    from autoprune.report.notes import all_failed
    from autoprune.report.render import report_document

    res = outcome.results
    if as_json:
        _print_json(report_document(res))
    else:
        _print_front(res, outcome.run_dir)
    _log(f"started {outcome.ran} trial(s) in {outcome.seconds:.1f}s")
    failed_all = all_failed(res)
    if failed_all:
        _fail(failed_all)
    if outcome.interrupted and not outcome.timed_out:  # a time budget ends a launch as asked: no error
        _fail(
            f"interrupted: {res.counted} of {res.requested} trials finished; continue with "
            f"`autoprune resume {outcome.run_dir}`",
            code=130,
        )


@app.command(cls=Command)
def search(
    space: SpaceArgument = None,
    run_dir: Annotated[str, typer.Option("--run-dir", help="New directory for everything the search makes.")] = ...,
    trials: TrialsOption = None,
    concurrent: ConcurrentOption = None,
    cpus_per_trial: CpusOption = 1.0,
    gpus_per_trial: GpusOption = "auto",
    address: AddressOption = None,
    sampler: SamplerOption = None,
    seed: SeedOption = 0,
    study_storage: StorageOption = None,
    set_: SetOption = None,
    early_stop: EarlyStopOption = None,
    reduction_factor: ReductionOption = None,
    grace_period: GraceOption = None,
    timeout: TimeoutOption = None,
    as_json: LaunchJsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Search the pipeline with Ray Tune + Optuna (max val accuracy, min nonzero params) and report the front."""
    from autoprune.api import search as run

    outcome = run(  # the API builds the one launch configuration (autoprune.searching.launchconfig) and checks it
        space,
        run_dir=run_dir,
        trials=trials,
        concurrent=concurrent,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        address=address,
        sampler=sampler.value if sampler is not None else None,
        seed=seed,
        study_storage=study_storage,
        overrides=set_ or [],
        early_stop=early_stop.value if early_stop is not None else None,
        reduction_factor=reduction_factor,
        grace_period=grace_period,
        timeout=timeout,
        verbose=verbose,
        log=_log,
    )
    _finish_launch(outcome, as_json)


@app.command(cls=Command)
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
    gpus_per_trial: Annotated[
        str | None, typer.Option(help="GPUs per trial: auto, 0 or a number (default: the search's).")
    ] = None,
    study_storage: StorageOption = None,
    early_stop: Annotated[EarlyStopMode | None, typer.Option(help="Early stopping (default: the search's).")] = None,
    reduction_factor: ReductionOption = None,
    grace_period: GraceOption = None,
    timeout: TimeoutOption = None,
    as_json: LaunchJsonOption = False,
    verbose: VerboseOption = False,
    allow_module: AllowModuleOption = None,
) -> None:
    """Finish an interrupted search (finished trials are kept), or extend it with --trials N (N in total).

    Code the run's space names is imported only if you started the run here, or allow it with --allow-module.
    """
    from autoprune.api import resume as run

    outcome = run(  # only what is given changes the search's launch configuration, kept in run.json
        run_dir,
        trials=trials,
        address=address,
        concurrent=concurrent,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        study_storage=study_storage,
        early_stop=early_stop.value if early_stop is not None else None,
        reduction_factor=reduction_factor,
        grace_period=grace_period,
        timeout=timeout,
        verbose=verbose,
        log=_log,
        allow_modules=allow_module or (),
    )
    _finish_launch(outcome, as_json)


@app.command(cls=Command)
def report(
    run_dir: Annotated[Path, typer.Argument(help="The run directory of a search (finished or running).")],
    as_json: Annotated[
        bool, flag("--json", help='Print {"front": [...], "trials": [...], "failed": N} on stdout.')
    ] = False,
    csv: Annotated[
        Path | None, typer.Option(help="Also write every finished trial as CSV here (with an on_front column).")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Also write the Pareto plot (PNG) here.")] = None,
    study_storage: StorageOption = None,
) -> None:
    """The Pareto front of the study (read only, no code run); refreshes the files in RUN_DIR/report."""
    from autoprune.api import refresh_report
    from autoprune.report.render import report_document

    results = refresh_report(run_dir, csv=csv, plot=plot, study_storage=study_storage, log=_log)
    for extra in (csv, plot):
        if extra is not None:
            _log(f"wrote {extra}")
    if as_json:
        _print_json(report_document(results))
    else:
        _print_front(results, run_dir)


@app.command(cls=Command)
def pick(
    run_dir: Annotated[Path, typer.Argument(help="The run directory of a search.")],
    out: Annotated[Path, typer.Option("--out", help="File to export the chosen model to.")] = ...,
    max_params: MaxParamsOption = None,
    max_macs: MaxMacsOption = None,
    max_latency_ms: MaxLatencyOption = None,
    most_accurate: Annotated[
        bool, flag("--most-accurate", help="With a --max-* rule: the most accurate model on validation instead.")
    ] = False,
    min_accuracy: Annotated[
        float | None, typer.Option(help="The smallest front model with val accuracy >= A (a fraction).")
    ] = None,
    knee: Annotated[bool, flag("--knee", help="The knee of the front (best trade-off).")] = False,
    trial: Annotated[int | None, typer.Option(help="Any finished trial, by its number (see report).")] = None,
    as_json: Annotated[bool, flag("--json", help='Print the chosen record plus "out" on stdout.')] = False,
    study_storage: StorageOption = None,
) -> None:
    """Choose a model by one rule (or by trial number) and export it as a self-describing file."""
    from autoprune.api import pick as choose

    chosen = choose(
        run_dir,
        out=out,
        max_params=max_params,
        max_macs=max_macs,
        max_latency_ms=max_latency_ms,
        min_accuracy=min_accuracy,
        knee=knee,
        trial=trial,
        most_accurate=most_accurate,
        study_storage=study_storage,
    )
    if as_json:
        _print_json(chosen)
    else:
        drop = chosen.get("drop_points")
        versus = f" ({-drop:+.2f} pt vs dense)" if isinstance(drop, float) else ""
        typer.echo(
            f"trial {chosen['trial']}: val accuracy {chosen['val_accuracy']:.4f}, test accuracy "
            f"{chosen['test_accuracy']:.4f}{versus}, {chosen['params_nonzero']} of {chosen['params_total']} params "
            f"-> {out}"
        )
        from autoprune.report.render import indistinct_note

        note = indistinct_note(chosen)
        if note:
            _log(note)


@app.command(cls=Command)
def evaluate(
    model_file: Annotated[Path, typer.Argument(help="A model file written by `pick` or a search.")],
    as_json: Annotated[
        bool, flag("--json", help="Print test_accuracy, params_nonzero, params_total (and more) on stdout.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "cpu",
    allow_module: AllowModuleOption = None,
) -> None:
    """Reload an exported model (safely, weights only) and re-measure it on its dataset's test split."""
    from autoprune.api import evaluate as measure

    result = measure(model_file, device=device, allow_modules=allow_module or ())
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


def _one_line(message: str) -> None:
    typer.secho(f"autoprune: error: {cut(message)}", fg=typer.colors.RED, err=True)  # a value shown may be a file


def main() -> None:
    """Console entry point: run the app and turn every error a user can cause into one line."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # usage: an unknown option, a value of the wrong type
        if type(exc).__name__ == "NoArgsIsHelpError":  # `autoprune` alone: the help is the answer, not an error
            exc.show()
            sys.exit(exc.exit_code)
        where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "autoprune"
        _one_line(f"{exc.format_message()} (see `{where} --help`)")
        sys.exit(getattr(exc, "exit_code", 2))
    except AutoPruneError as exc:
        _one_line(str(exc))
        sys.exit(1)
    except (KeyboardInterrupt, typer.Abort):
        typer.secho("autoprune: interrupted", fg=typer.colors.RED, err=True)
        sys.exit(130)
    except Exception as exc:
        if not disk_full(exc):
            raise
        _one_line(
            f"no space left on the device ({first_line(exc, 160)}); what was finished is kept: free some space and "
            "run the command again (a search: `autoprune resume RUN_DIR`)"
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
