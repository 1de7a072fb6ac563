"""The public Python API: the same names and meanings as the ``autoprune`` command, for notebooks and scripts.

=================  ==========================  =====================================================
command            function                    returns
=================  ==========================  =====================================================
``trial``          ``run_trial``               ``TrialResult`` (``.record()``, ``.model``, ``.save()``)
``search``         ``search``                  ``LaunchResult`` (``.results``, ``.ran``, ...)
``resume``         ``resume``                  ``LaunchResult``
``report``         ``refresh_report``          ``Results`` (and the files in RUN_DIR/report)
                   ``load_results``            ``Results``: records, the front, counts
                   ``results``                 a pandas DataFrame, one row per trial
``pick``           ``pick``                    the chosen record plus ``"out"``
``evaluate``       ``evaluate``                re-measured accuracies and counts
                   ``load_model``              an ``nn.Module`` that takes raw inputs
=================  ==========================  =====================================================

Everything is re-exported by ``import autoprune``; heavy libraries load only when a function needs them.
(``refresh_report`` is not called ``report``, and the Ray adapter is ``raytune`` rather than ``search``, so
that no function shares its name with a module of the package.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune.config import DEFAULT_THREADS
from autoprune.errors import ModelError, SearchError
from autoprune.io._paths import as_path
from autoprune.searching.launchconfig import EarlyStop, LaunchConfig, Resources
from autoprune.searching.space import load_space

if TYPE_CHECKING:
    import pandas as pd

    from autoprune.config import TrialConfig
    from autoprune.io.data import Datasets
    from autoprune.io.preprocess import RawInputModel
    from autoprune.pipeline.trial import TrialResult
    from autoprune.raytune import LaunchResult
    from autoprune.rundir.ledger import Results
    from autoprune.searching.space import SearchSpace

__all__ = [
    "evaluate",
    "load_model",
    "load_results",
    "load_space",
    "pick",
    "refresh_report",
    "results",
    "resume",
    "run_trial",
    "search",
]

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_trial(
    space: TrialConfig | SearchSpace | str | os.PathLike | None = None,
    *,
    overrides: Sequence[str] = (),
    seed: int | None = None,
    device: str | None = None,
    threads: int | None = DEFAULT_THREADS,
    save: str | os.PathLike | None = None,
    data: Datasets | None = None,
    log: Log | None = None,
    on_epoch: Callable[[str, int, int, float], None] | None = None,
    weights: str | os.PathLike | None = None,
) -> TrialResult:
    """Run the whole pipeline once (sparse train, prune, finetune, evaluate), without Ray: ``autoprune trial``.

    ``space`` is a ``TrialConfig``, a loaded ``SearchSpace``, a space file or the name of a shipped space
    (default ``digits_quick``); searched values not fixed by ``overrides`` (``["finetune.lr=0.01"]``) take
    their defaults. ``weights`` (a ``state_dict`` file) is ``model.weights``: the trial starts from those trained
    weights. ``save`` exports the model to that file. Returns the ``TrialResult``: ``.record()`` is the JSON trial
    record, ``.model`` the pruned model.
    """
    from autoprune._bounds import check_threads
    from autoprune.config import TrialConfig
    from autoprune.io._paths import check_output_file
    from autoprune.pipeline.trial import run_trial as run
    from autoprune.searching.space import SearchSpace

    if save is not None:  # before the trial runs: a bad path must not cost a whole trial
        check_output_file(save, what="--save", example="model.pt")
    if threads is not None:
        check_threads("--threads", threads)
    if isinstance(space, TrialConfig):
        if overrides:
            raise SearchError("overrides apply to a space file; change a TrialConfig with dataclasses.replace")
        cfg = space
    else:
        spec = space if isinstance(space, SearchSpace) else load_space(space, overrides)
        if isinstance(space, SearchSpace) and overrides:
            raise SearchError("overrides apply to a space file; load the space with them: load_space(path, overrides)")
        cfg = spec.default_config()
    if weights is not None:  # model.weights, whatever the space gave: a path from here, as in the command line
        model = dataclasses.replace(cfg.model, weights=str(Path(weights).expanduser().absolute()))
        cfg = dataclasses.replace(cfg, model=model)
    if seed is not None:
        cfg = dataclasses.replace(cfg, seed=seed)
        cfg = TrialConfig.from_dict(cfg.to_dict())  # validated like any other value
    result = run(cfg, data=data, device=device, threads=threads, log=log, on_epoch=on_epoch)
    if save is not None:
        result.save(save)
    return result


def search(
    space: str | os.PathLike | None = None,
    *,
    run_dir: str | os.PathLike,
    trials: int | None = None,
    concurrent: int | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float | str = "auto",
    address: str | None = None,
    sampler: str | None = None,
    seed: int = 0,
    study_storage: str | None = None,
    overrides: Sequence[str] = (),
    early_stop: str | None = None,
    reduction_factor: float | None = None,
    grace_period: float | None = None,
    timeout: float | str | None = None,
    verbose: bool = False,
    log: Log | None = None,
    weights: str | os.PathLike | None = None,
) -> LaunchResult:
    """Start a search in the new directory ``run_dir`` and run it to the end: ``autoprune search``.

    Ray Tune runs the trials (locally, or on the cluster at ``address``), Optuna's ``sampler`` (tpe, nsga2,
    random; default the space's ``search.sampler``, else tpe) suggests them, maximizing validation accuracy
    and minimizing nonzero parameters. ``trials`` defaults to the space's ``search.trials``, else 20.
    ``early_stop`` (``off`` or ``asha``, default the space's ``search.early_stop``, else off; with
    ``reduction_factor`` and ``grace_period``) stops trials that trail the trials of their size or smaller at a
    rung; ``timeout`` (seconds, or ``"1h30m"``) starts no trial after it. Progress lines go to ``log``
    (default: stderr). ``weights`` (a ``state_dict`` file) is ``model.weights``: every trial starts from those
    trained weights, and the search measures them once as its dense reference. The returned
    ``LaunchResult.results`` holds the front.
    """
    from autoprune.raytune import run_search

    config = LaunchConfig(  # every option checked here, once, before the space is read
        trials=trials,
        sampler=sampler,
        seed=seed,
        resources=Resources(concurrent, cpus_per_trial, gpus_per_trial),
        early_stop=EarlyStop(early_stop, reduction_factor, grace_period),
        address=address,
        study_storage=study_storage,
        timeout=timeout,
        verbose=verbose,
    )
    if weights is not None:
        overrides = [*overrides, f"model.weights={json.dumps(str(weights))}"]  # JSON-quoted: YAML reads a string
    return run_search(space, run_dir, config, overrides=overrides, log=log or _stderr)


def resume(
    run_dir: str | os.PathLike,
    *,
    trials: int | None = None,
    address: str | None = None,
    concurrent: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | str | None = None,
    study_storage: str | None = None,
    early_stop: str | None = None,
    reduction_factor: float | None = None,
    grace_period: float | None = None,
    timeout: float | str | None = None,
    verbose: bool = False,
    log: Log | None = None,
    allow_modules: Collection[str] = (),
) -> LaunchResult:
    """Finish an interrupted search, or extend it to ``trials`` trials in total: ``autoprune resume``.

    Finished trials are kept and never re-run; trials an interruption left running are closed and replaced;
    trials enqueued into the study (``optuna.Study.enqueue_trial``) run first. Early stopping and resources
    default to the search's (given values replace them in run.json); ``timeout`` holds for this call.

    What it runs: the run's frozen ``space.yaml``, once its digest matches run.json's. Its model and dataset
    code (``module:function``) is imported only when you started the run here (run.json carries your seal, see
    ``_trust``), or when the module is in ``allow_modules``: a run directory received from someone else runs
    no code of theirs unless you allow it. A resume so allowed seals the run for the next one.
    """
    from autoprune.raytune import resume_search

    changes = LaunchConfig(  # what is given replaces the search's; the rest stays as run.json has it
        trials=trials,
        resources=Resources(concurrent, cpus_per_trial, gpus_per_trial),
        early_stop=EarlyStop(early_stop, reduction_factor, grace_period),
        address=address,
        study_storage=study_storage,
        timeout=timeout,
        verbose=verbose,
    )
    return resume_search(run_dir, changes, log=log or _stderr, allow_modules=allow_modules)


def load_results(run_dir: str | os.PathLike, *, study_storage: str | None = None) -> Results:
    """Every finished trial of a search and its Pareto front, read from the study (no Ray; also mid-search).
    The study is opened read-only, and nothing the run names (its model or dataset code) is imported.

    ``.trials`` and ``.front`` are trial records (dicts), ``.failed``, ``.running``, ``.counted`` counts,
    ``.baseline`` the dense trial when the search has one, ``.frame()`` the DataFrame of ``results``.
    """
    from autoprune.rundir.ledger import load_results as load

    return load(as_path(run_dir, "run_dir", SearchError), study_storage=study_storage)


def results(run_dir: str | os.PathLike, *, study_storage: str | None = None) -> pd.DataFrame:
    """A search as a pandas DataFrame, one row per trial (``optuna.Study.trials_dataframe`` style).

    Columns: ``trial``, ``state``, ``outcome``, ``val_accuracy``, ``test_accuracy``, ``params_nonzero`` and
    ``params_total`` (integers), ``fraction_dense``, ``sparsity.<layer>``, every searched parameter by its
    dotted path (``finetune.lr``; a leaf searched per value of another, per case: ``finetune.lr[sgd]``, empty in
    the trials of the other cases), ``on_front``, ``baseline`` (a seeded baseline configuration), ``model_path``,
    ``reason``. The front: ``df[df.on_front]``; the baselines: ``df[df.baseline]``.
    """
    return load_results(run_dir, study_storage=study_storage).frame()


def refresh_report(
    run_dir: str | os.PathLike,
    *,
    csv: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    study_storage: str | None = None,
    log: Log | None = None,
) -> Results:
    """Refresh RUN_DIR/report (front.csv, trials.csv, report.json, pareto.png) and return the results:
    ``autoprune report``. ``csv`` and ``plot`` write extra copies of the trials table and the plot there; like
    ``pick``, they replace only a file of that kind that autoprune wrote. Reading writes nothing else: the study
    is opened read-only, and a run directory that cannot be written keeps its report files, as ``log`` says.
    """
    from autoprune.report.render import check_extra_outputs, write_extra_outputs, write_report

    run_dir = as_path(run_dir, "run_dir", SearchError)
    check_extra_outputs(run_dir, csv=csv, plot=plot)  # before anything is read or written
    res = load_results(run_dir, study_storage=study_storage)
    try:
        write_report(run_dir, res)
    except OSError as exc:  # a read-only run (received, or on a read-only mount): the report is still the answer
        (log or _stderr)(
            f"note: {Path(run_dir) / 'report'} was not refreshed ({exc.strerror or exc}); --csv FILE and --plot "
            "FILE write the table and the plot elsewhere"
        )
    write_extra_outputs(run_dir, res, csv=csv, plot=plot)
    return res


def pick(
    run_dir: str | os.PathLike,
    *,
    out: str | os.PathLike,
    max_params: int | None = None,
    max_macs: int | None = None,
    max_latency_ms: float | None = None,
    min_accuracy: float | None = None,
    knee: bool = False,
    trial: int | None = None,
    most_accurate: bool = False,
    study_storage: str | None = None,
) -> dict[str, Any]:
    """Choose one model of a search and export it to ``out``; returns its record plus ``"out"``: ``autoprune pick``.

    Exactly one rule: ``max_params`` (at most that many nonzero parameters: the largest model within one standard
    error of the most accurate one on validation, or with ``most_accurate`` that one; ``pareto.pick_at_most``),
    ``max_macs`` or ``max_latency_ms`` (the same over MACs per sample as the model runs, or milliseconds per forward
    pass at ``measure.latency_batch``), ``min_accuracy`` (the smallest front model, by the search's objective, at
    least that accurate on validation data), ``knee`` (the front's best trade-off), or ``trial`` (any finished trial,
    by number). With a ``max_*`` rule the record also holds ``"indistinct"``: the other finished trials within that
    bound whose validation accuracy is within one standard error of the most accurate one's (``pareto.indistinct``;
    trial, params_nonzero, the bounded key, val_accuracy each), most accurate first: validation cannot rank them.
    The study is only read, and nothing the run names is imported: the model file is copied as data.
    """
    from autoprune.io._paths import check_output_file, inside_run
    from autoprune.io.export import check_model_output, copy_model
    from autoprune.rundir.directory import MODELS_DIR
    from autoprune.searching.pareto import PickRule, indistinct
    from autoprune.searching.pareto import pick as pick_record

    run_dir = as_path(run_dir, "run_dir", SearchError)
    rule = PickRule(  # checked here, before anything is read
        max_params=max_params,
        max_macs=max_macs,
        max_latency_ms=max_latency_ms,
        min_accuracy=min_accuracy,
        knee=knee,
        trial=trial,
        most_accurate=most_accurate,
    )
    # Checked before anything is read: never into a run's own files (another trial's model), never a folder.
    check_output_file(out, what="--out", protected_dirs=[run_dir], example="model.pt", error=SearchError)
    out = check_model_output(out)
    res = load_results(run_dir, study_storage=study_storage)
    chosen = pick_record(res.trials, rule, key=res.key)
    if chosen.get("model_path_refused"):  # raises: the study names a file outside this run's models/
        inside_run(run_dir, chosen["model_path_refused"], what="model_path", under=MODELS_DIR, error=SearchError)
    source = chosen.get("model_path")
    if not source or not Path(source).exists():  # a file that is there but not regular: refused when read
        raise SearchError(
            f"the model file of trial {chosen['trial']} is missing ({source}); on a cluster --run-dir must be on a "
            "filesystem every node shares"
        )
    metrics = {k: v for k, v in chosen.items() if k not in ("config", "model_path")}
    copy_model(source, out, metrics=metrics)  # as data: a model built by a factory is copied, nothing imported
    result = {**chosen, "out": str(out)}
    if res.baseline is not None:  # the dense reference: the checkpoint a search started from, or its dense trial
        from autoprune.report.render import drop_points

        result["dense_test_accuracy"] = res.baseline.get("test_accuracy")
        result["drop_points"] = drop_points(chosen, res.baseline)
    if rule.bound is not None:
        bounded, limit = rule.bound
        keys = dict.fromkeys(("trial", "params_nonzero", bounded, "val_accuracy"))
        close = indistinct(res.trials, chosen, limit, key=bounded)[0]
        result["indistinct"] = [{k: r.get(k) for k in keys} for r in close]
    return result


def evaluate(path: str | os.PathLike, *, device: str = "cpu", allow_modules: Collection[str] = ()) -> dict[str, Any]:
    """Reload an exported model (safely, weights only) without its run directory and re-measure it on its
    dataset: ``test_accuracy``, ``val_accuracy``, ``params_nonzero``, ``params_total`` and what was recorded.

    A model or dataset the file names as ``module:function`` is imported only when its module is in
    ``allow_modules``: a model file received from someone else must not run code by being evaluated.
    """
    from autoprune.config import TrialConfig, upgrade_config
    from autoprune.errors import ConfigError
    from autoprune.io._trust import check_allowed
    from autoprune.io.data import load_datasets, resolve_device
    from autoprune.io.export import check_runs
    from autoprune.io.export import load_model as load
    from autoprune.pipeline.train import evaluate as accuracy
    from autoprune.pruning import count_params

    dev = resolve_device(device)
    loaded = load(path, device=dev, allow_modules=allow_modules)
    try:
        cfg = TrialConfig.from_dict(upgrade_config(loaded.config))
    except ConfigError as exc:
        raise ModelError(f"{path}: the configuration stored in the file is invalid ({exc})") from None
    check_allowed(cfg.dataset.name, allow_modules, what="dataset.name", source=str(path))
    data = load_datasets(cfg.dataset, seed=cfg.seed, device=dev)
    if tuple(data.input_shape) != tuple(loaded.input_shape):
        raise ModelError(
            f"{path}: the model expects inputs {list(loaded.input_shape)} but dataset {cfg.dataset.name!r} gives "
            f"{list(data.input_shape)}"
        )
    check_runs(loaded, path)  # before the measuring: a layer missing (its Flatten) is one line
    ebs = cfg.budget.eval_batch_size
    test = accuracy(loaded.model, data.test_x, data.test_y, batch_size=ebs, amp=cfg.amp)
    val = accuracy(loaded.model, data.val_x, data.val_y, batch_size=ebs, amp=cfg.amp)
    nonzero, stored = count_params(loaded.model)
    recorded = {k: loaded.metrics.get(k) for k in ("trial", "val_accuracy", "test_accuracy", "params_nonzero")}
    total = loaded.metrics.get("params_total")  # the file's record: data, not trusted to be a number
    return {
        "file": str(path),
        "test_accuracy": test,
        "val_accuracy": val,
        "params_nonzero": nonzero,
        "params_total": total if isinstance(total, int) and not isinstance(total, bool) else stored,
        "params_stored": stored,
        "recorded": recorded,
    }


def load_model(path: str | os.PathLike, *, device: str = "cpu", allow_modules: Collection[str] = ()) -> RawInputModel:
    """An exported model as an ``nn.Module`` in eval mode that takes raw inputs (e.g. uint8 28x28 images).

    ``model(raw)`` returns logits; ``model.predict(raw)`` class indices. ``model.model`` is the pruned network
    itself (taking preprocessed inputs), ``model.preprocess`` the preprocessing, ``model.metrics`` the trial
    record. Loading never runs code from the file (``torch.load(weights_only=True)``); a model whose file names
    its factory (``my_models:resnet``) is rebuilt only when that module is in ``allow_modules``.
    """
    from autoprune.io.data import resolve_device
    from autoprune.io.export import load_model as load
    from autoprune.io.preprocess import RawInputModel, stored_preprocessing

    loaded = load(path, device=resolve_device(device), allow_modules=allow_modules)
    spec = stored_preprocessing(loaded.preprocessing, loaded.config, loaded.input_shape, where=f"{path}: preprocessing")
    wrapped = RawInputModel(loaded.model, spec, metrics=loaded.metrics, config=loaded.config, masks=loaded.masks)
    return wrapped.eval()
