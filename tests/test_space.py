from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

import optuna
import pytest
import yaml

from autoprune.config import TrialConfig, upgrade_config
from autoprune.errors import ConfigError
from autoprune.searching.space import builtin_spaces, define_by_run, load_space, parse_space

SHIPPED = sorted(builtin_spaces())


def write(tmp_path: Path, doc: dict | str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


BASE = {
    "dataset": {"name": "synthetic"},
    "model": {"name": "lenet-300-100"},
    "budget": {"train_epochs": 1, "finetune_epochs": 1, "batch_size": 64},
    "train": {"lambda_max": {"low": 1e-6, "high": 1e-3, "log": True}},
    "prune": {"sparsity": {"fc1": {"low": 0.5, "high": 0.9}, "fc2": 0.5}},
    "finetune": {"lr": {"choices": [0.01, 0.1]}},
}


def with_(path: str, value: object) -> dict:
    import copy

    doc = copy.deepcopy(BASE)
    node = doc
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return doc


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_space_validates_and_gives_a_default_config(name: str) -> None:
    space = load_space(name)
    cfg = space.default_config()
    assert isinstance(cfg, TrialConfig)
    assert space.dims, "shipped spaces search something"
    assert set(cfg.prune.sparsity) <= set(space.layers)


def test_search_spaces_folder_holds_the_shipped_spaces() -> None:
    folder = Path(__file__).resolve().parents[1] / "search_spaces"
    assert {p.stem for p in folder.glob("*.yaml")} >= {"lenet300_fashion", "lenet5_fashion", "digits_quick"}


def test_fixed_and_searched_leaves_are_separated(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, BASE))
    assert [d.path for d in space.dims] == ["train.lambda_max", "prune.sparsity.fc1", "finetune.lr"]
    cfg = space.config_for({"train.lambda_max": 1e-4, "prune.sparsity.fc1": 0.7, "finetune.lr": 0.1})
    assert cfg.train.lambda_max == 1e-4
    assert cfg.prune.sparsity == {"fc1": 0.7, "fc2": 0.5}
    assert cfg.finetune.lr == 0.1


def test_unset_dimensions_take_documented_defaults(tmp_path: Path) -> None:
    doc = with_("train.grad_clip", {"low": 1.0, "high": 9.0, "default": 2.0})
    cfg = load_space(write(tmp_path, doc)).default_config()
    assert cfg.train.grad_clip == 2.0  # explicit default
    assert cfg.train.lambda_max == pytest.approx((1e-6 * 1e-3) ** 0.5)  # geometric middle of a log range
    assert cfg.prune.sparsity["fc1"] == pytest.approx(0.7)  # middle
    assert cfg.finetune.lr == 0.01  # first choice


def test_set_overrides_fix_searched_and_fixed_leaves(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    space = load_space(path, ["prune.sparsity.fc1=0.95", "train.weight_clip=null", "finetune.lr=0.05", "seed=3"])
    assert [d.path for d in space.dims] == ["train.lambda_max"]
    cfg = space.default_config()
    assert cfg.prune.sparsity["fc1"] == 0.95
    assert cfg.train.weight_clip is None
    assert cfg.seed == 3


def test_set_fills_an_empty_section_and_replaces_auto_with_the_layers_it_names(tmp_path: Path) -> None:
    doc = {**with_("prune.sparsity", "auto"), "train": None}
    space = load_space(write(tmp_path, doc), ["prune.sparsity.fc1=0.9", "train.lr=0.5"])
    assert space.document["prune"]["sparsity"] == {"fc1": 0.9}  # one run, one layer pruned (documented)
    assert space.default_config().train.lr == 0.5


def test_sparsity_auto_searches_every_prunable_layer(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, with_("prune.sparsity", "auto")))
    assert [d.path for d in space.dims if d.path.startswith("prune.sparsity")] == [
        "prune.sparsity.fc1",
        "prune.sparsity.fc2",
        "prune.sparsity.fc3",
    ]


def test_define_by_run_suggests_every_dimension_and_pickles(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, BASE))
    fn = partial(define_by_run, dims=space.dims)
    fn = pickle.loads(pickle.dumps(fn))  # Ray pickles the searcher, this function included
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    fn(trial)
    assert set(trial.params) == {"train.lambda_max", "prune.sparsity.fc1", "finetune.lr"}
    cfg = space.config_for(trial.params)
    assert 0.5 <= cfg.prune.sparsity["fc1"] <= 0.9
    assert cfg.finetune.lr in (0.01, 0.1)


def test_both_sgd_phases_read_the_same_keys(tmp_path: Path) -> None:
    phase = {"lr": 0.02, "momentum": 0.5, "nesterov": True, "weight_decay": 1e-4, "lr_schedule": "step"}
    phase |= {"lr_step_epochs": 2, "lr_gamma": 0.5}
    cfg = load_space(write(tmp_path, {**BASE, "train": dict(phase), "finetune": dict(phase)})).default_config()
    shared = {k: getattr(cfg.train, k) for k in phase}
    assert shared == phase
    assert {k: getattr(cfg.finetune, k) for k in phase} == phase


def test_a_saved_config_from_before_the_rename_still_reads() -> None:
    old = TrialConfig().to_dict()
    old["finetune"].pop("lr_schedule")
    old["finetune"]["schedule"] = "step"
    with pytest.raises(ConfigError, match=r"unknown key finetune\.schedule"):
        TrialConfig.from_dict(old)
    assert TrialConfig.from_dict(upgrade_config(old)).finetune.lr_schedule == "step"
    assert old["finetune"]["schedule"] == "step", "the caller's dict is left alone"


def test_int_ranges_suggest_ints(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, with_("budget.train_epochs", {"low": 1, "high": 4})))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    define_by_run(trial, space.dims)
    assert isinstance(trial.params["budget.train_epochs"], int)


# ------------------------------------------------------------------------------------------------- validation

BAD = [
    (with_("train.lamda_max", 0.1), "unknown key train.lamda_max"),
    ({**BASE, "trian": {}}, "unknown key 'trian'"),
    (with_("prune.sparsity.fc9", 0.5), "unknown layer 'fc9'; prunable layers: fc1, fc2, fc3"),
    (with_("prune.sparsity.fc9", {"low": 0.1, "high": 0.2}), "prunable layers: fc1, fc2, fc3"),
    (with_("train.lr_multipliers", {"conv7": 2.0}), "unknown layer 'conv7'"),
    (with_("prune.sparsity.fc1", {"low": 0.9, "high": 0.5}), "prune.sparsity.fc1: inverted range, low=0.9 > high=0.5"),
    (with_("finetune.lr", {"low": 0.1, "high": 0.1}), "finetune.lr: empty range"),
    (with_("finetune.lr", {"choices": []}), "finetune.lr: choices must be a non-empty list"),
    (with_("prune.sparsity.fc1", {"low": 0.5, "high": 1.0}), "prune.sparsity.fc1 must be < 1.0, got 1.0"),
    (with_("prune.sparsity.fc2", 1.2), "prune.sparsity.fc2 must be < 1.0, got 1.2"),
    (with_("prune.sparsity.fc2", -0.1), "prune.sparsity.fc2 must be >= 0.0, got -0.1"),
    (with_("train.lambda_max", -1e-3), "train.lambda_max must be >= 0.0, got -0.001"),
    (with_("train.lambda_max", {"low": -1e-3, "high": 1e-3}), "train.lambda_max must be >= 0.0"),
    (with_("train.lambda_max", {"low": 0.0, "high": 1e-3, "log": True}), "a log range needs low > 0"),
    (with_("train.penalty", "l3"), "train.penalty must be one of l1, group_lasso, none, got 'l3'"),
    (with_("prune.criterion", {"choices": ["magnitude", "size"]}), "prune.criterion must be one of"),
    (with_("train.lr", {"low": 0.1}), "a range needs both low and high"),
    (with_("train.lr", {"low": 0.1, "high": 0.2, "lg": True}), "unknown key 'lg'"),
    (with_("model.name", "resnet-9000"), "unknown model 'resnet-9000'; known models:"),
    (with_("budget.batch_size", 0), "budget.batch_size must be >= 1, got 0"),
    (
        with_("finetune.schedule", "step"),
        "unknown key finetune.schedule; known keys: distill_temperature, distill_weight, grad_clip, lr, lr_gamma",
    ),
    (with_("finetune.lr_warmup", 1.0), "finetune.lr_warmup must be < 1.0, got 1.0"),
    (with_("finetune.grad_clip", 0.0), "finetune.grad_clip must be > 0.0, got 0.0"),
    (with_("finetune.lr_schedule", "linear"), "finetune.lr_schedule must be one of constant, step, cosine"),
    (with_("finetune.optimizer", {"choices": ["adam", "lbfgs"]}), "finetune.optimizer must be one of sgd, adam"),
    (with_("finetune.nesterov", True) | {"finetune": {"nesterov": True, "momentum": 0.0}}, "finetune.nesterov needs"),
]


@pytest.mark.parametrize(("doc", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_validation_errors_name_the_file_the_key_and_the_rule(tmp_path: Path, doc: dict, message: str) -> None:
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    text = str(info.value)
    assert text.startswith(str(path)), text
    assert message in text
    assert "\n" not in text


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "dataset:\n  name: digits\nmodel: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"^{path}:\d+: invalid YAML"):
        load_space(path)


def test_missing_space_file_lists_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not found; give a path to a YAML file or a shipped space: .*digits_quick"):
        load_space(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("prune.sparsty.fc1=0.5", "--set prune.sparsty.fc1: unknown key prune.sparsty"),
        ("nothing=1", "--set nothing: unknown key 'nothing'"),
        ("train.lr", "expected KEY=VALUE"),
        ("train.lr=[1, 2", "cannot parse"),
        ("train.lr.x=1", "train.lr takes a value, not sub-keys"),
        ("prune.sparsity.fc1=1.5", "prune.sparsity.fc1 must be < 1.0, got 1.5"),
        ("prune.sparsity.fc8=0.5", "unknown layer 'fc8'"),
    ],
)
def test_bad_set_overrides(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_space(write(tmp_path, BASE), [override])
    assert message in str(info.value)


def test_structured_pruning_refuses_to_remove_output_units() -> None:
    doc = {
        "dataset": {"name": "digits"},
        "model": {"name": "bn-cnn"},
        "prune": {"structured": True, "sparsity": {"fc2": 0.5}},
    }
    with pytest.raises(ConfigError, match="output layer keeps its outputs"):
        parse_space(doc)
    auto = parse_space({**doc, "prune": {"structured": True, "sparsity": "auto"}})
    assert [d.path for d in auto.dims] == ["prune.sparsity.conv1", "prune.sparsity.conv2", "prune.sparsity.fc1"]
    searched = {"structured": True, "sparsity": {"fc2": {"low": 0.1, "high": 0.5}}}
    with pytest.raises(ConfigError, match=r"prune\.sparsity\.fc2: the output layer keeps its outputs"):
        parse_space({**doc, "prune": searched})


def test_trial_config_round_trips_and_rejects_unknown_keys() -> None:
    cfg = load_space("digits_quick").default_config()
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"unknown key train.bogus"):
        TrialConfig.from_dict({"train": {"bogus": 1}})


def test_exponent_floats_without_a_dot_are_numbers(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, "train: {lambda_max: {low: 1e-6, high: 1e-3, log: true}}\n"), ["train.lr=5e-2"])
    assert space.dims[0].low == 1e-6 and space.default_config().train.lr == 0.05


def test_a_space_searches_the_density_its_allocation_and_per_layer_shares() -> None:
    doc = {
        **BASE,
        "prune": {
            "allocation": {"choices": ["global", "uniform", "lamp", "erk"]},
            "density": {"low": 0.005, "high": 0.3, "log": True},
            "shares": "auto",
        },
    }
    space = parse_space(doc)
    dims = {d.path: d for d in space.dims}
    assert dims["prune.density"].log and (dims["prune.density"].low, dims["prune.density"].high) == (0.005, 0.3)
    assert dims["prune.allocation"].choices == ("global", "uniform", "lamp", "erk")
    assert [p for p in dims if p.startswith("prune.shares.")] == [f"prune.shares.fc{i}" for i in (1, 2, 3)]
    assert all(dims[f"prune.shares.{n}"].log for n in ("fc1", "fc2", "fc3"))
    cfg = space.config_for({"prune.density": 0.01, "prune.allocation": "lamp", "prune.shares.fc2": 2.0})
    assert (cfg.prune.density, cfg.prune.allocation) == (0.01, "lamp")
    assert cfg.prune.shares == {"fc1": 1.0, "fc2": 2.0, "fc3": 1.0}
    assert space.default_config().prune.density == pytest.approx((0.005 * 0.3) ** 0.5)


@pytest.mark.parametrize(
    ("prune", "message"),
    [
        ({"allocation": "erk", "density": {"low": 0.01, "high": 1.5}}, "prune.density must be <= 1.0, got 1.5"),
        ({"allocation": {"choices": ["global", "magic"]}}, "prune.allocation must be one of per_layer, global"),
        ({"allocation": "lamp", "structured": True}, "prune.allocation 'lamp' is unstructured only"),
        ({"allocation": "per_layer", "shares": {"fc1": 2.0}}, "prune.shares reshape an unstructured density"),
        ({"allocation": "global", "shares": {"fc9": 2.0}}, "prune.shares.fc9: unknown layer 'fc9'"),
        ({"allocation": "global", "nonzero_params": 0.5}, "prune.nonzero_params must be an integer"),
    ],
)
def test_density_leaves_validate(prune: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_space({**BASE, "prune": prune})
    assert message in str(info.value)


# A leaf whose value or range depends on another leaf (`by`).
ADAM_LR = {"low": 1e-3, "high": 5e-2, "log": True, "default": 8e-3}
SGD_LR = {"low": 1e-2, "high": 0.3, "log": True, "default": 0.05}
BY_OPTIMIZER = {
    "optimizer": {"choices": ["adam", "sgd"]},
    "lr": {"by": "optimizer", "adam": ADAM_LR, "sgd": SGD_LR},
    "nesterov": {"by": "optimizer", "adam": False, "sgd": True},
    "momentum": {"by": "finetune.optimizer", "adam": 0.9, "sgd": {"low": 0.5, "high": 0.99}},
}


def test_a_leaf_searched_by_the_value_of_a_categorical_one_is_one_parameter_per_case() -> None:
    space = parse_space({**BASE, "finetune": BY_OPTIMIZER})
    dims = {d.path: d for d in space.dims}
    assert [p for p in dims if p.startswith("finetune.")] == [
        "finetune.optimizer",
        "finetune.lr[adam]",
        "finetune.lr[sgd]",
        "finetune.momentum[sgd]",
    ]
    assert (dims["finetune.lr[sgd]"].low, dims["finetune.lr[sgd]"].high) == (1e-2, 0.3)
    assert dims["finetune.lr[sgd]"].when == ("finetune.optimizer", "sgd")
    assert dims["finetune.lr[sgd]"].key == "finetune.lr"
    fn = pickle.loads(pickle.dumps(partial(define_by_run, dims=space.dims)))
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=4))
    drawn = {"adam": 0, "sgd": 0}
    for _ in range(24):
        trial = study.ask()
        fn(trial)
        optimizer = trial.params["finetune.optimizer"]
        drawn[optimizer] += 1
        # only the drawn optimizer's cases are parameters of the trial
        cases = {p for p in trial.params if p.startswith(("finetune.lr", "finetune.momentum"))}
        expected = {"finetune.lr[adam]"} if optimizer == "adam" else {"finetune.lr[sgd]", "finetune.momentum[sgd]"}
        assert cases == expected
        cfg = space.config_for(trial.params)
        low, high = (1e-3, 5e-2) if optimizer == "adam" else (1e-2, 0.3)
        assert cfg.finetune.optimizer == optimizer and low <= cfg.finetune.lr <= high
        assert cfg.finetune.lr == trial.params[f"finetune.lr[{optimizer}]"]
        assert cfg.finetune.nesterov is (optimizer == "sgd")
        if optimizer == "adam":
            assert cfg.finetune.momentum == 0.9
        else:
            assert cfg.finetune.momentum == trial.params["finetune.momentum[sgd]"]
        study.tell(trial, cfg.finetune.lr)  # a score that ranks the two lrs' scales apart
    assert min(drawn.values()) > 0
    # The defaults are the parent's first choice's case; another case's value is ignored, a name outside the
    # space is refused.
    assert space.resolve({}) == {**space.resolve({}), "finetune.optimizer": "adam", "finetune.lr[adam]": 8e-3}
    assert "finetune.lr[sgd]" not in space.resolve({})
    cfg = space.config_for({"finetune.lr[sgd]": 0.2})
    assert (cfg.finetune.optimizer, cfg.finetune.lr, cfg.finetune.nesterov) == ("adam", 8e-3, False)
    sgd = space.config_for({"finetune.optimizer": "sgd"})
    assert (sgd.finetune.lr, sgd.finetune.momentum) == (0.05, pytest.approx(0.745))
    with pytest.raises(ConfigError, match=r"finetune\.lr\[rmsprop\] is not a searched dimension"):
        space.config_for({"finetune.lr[rmsprop]": 0.1})


def test_under_a_fixed_parent_a_leaf_is_its_value_s_case_in_the_leaf_s_place(tmp_path: Path) -> None:
    doc = {**BASE, "finetune": {**BY_OPTIMIZER, "optimizer": "adam"}}
    plain = {**BASE, "finetune": {"optimizer": "adam", "lr": ADAM_LR, "nesterov": False, "momentum": 0.9}}
    # the same dimensions, in the same order, as the file that writes Adam's leaves out: the same search
    assert parse_space(doc).dims == parse_space(plain).dims
    path = write(tmp_path, doc)
    sgd = load_space(path, ["finetune.optimizer=sgd"])  # one override switches every dependent leaf
    dims = {d.path: d for d in sgd.dims}
    assert (dims["finetune.lr"].low, dims["finetune.lr"].high, dims["finetune.lr"].default) == (1e-2, 0.3, 0.05)
    assert "finetune.momentum" in dims
    assert sgd.default_config().finetune.nesterov is True
    # the parent left at the config's default (sgd) selects that case
    default = {**BASE, "finetune": {k: v for k, v in BY_OPTIMIZER.items() if k != "optimizer"}}
    assert parse_space(default).default_config().finetune.lr == 0.05


def test_set_reaches_one_case_of_a_dependent_leaf(tmp_path: Path) -> None:
    path = write(tmp_path, {**BASE, "finetune": {**BY_OPTIMIZER, "optimizer": "adam"}})
    # a value for one case, then that case chosen: SGD's lr is fixed, Adam's range untouched
    sgd = load_space(path, ["finetune.lr.sgd=0.12", "finetune.optimizer=sgd"])
    assert "finetune.lr" not in {d.path for d in sgd.dims}
    assert sgd.default_config().finetune.lr == 0.12
    adam = load_space(path, ["finetune.lr.sgd=0.12"])
    lr = {d.path: d for d in adam.dims}["finetune.lr"]
    assert (lr.low, lr.high, lr.default) == (1e-3, 5e-2, 8e-3)
    # a range for one case, under a searched parent: that case's parameter takes it
    searched = load_space(
        path, ["finetune.optimizer={choices: [adam, sgd]}", "finetune.lr.adam={low: 0.002, high: 0.02}"]
    )
    dims = {d.path: d for d in searched.dims}
    assert (dims["finetune.lr[adam]"].low, dims["finetune.lr[adam]"].high) == (0.002, 0.02)
    assert (dims["finetune.lr[sgd]"].low, dims["finetune.lr[sgd]"].high) == (1e-2, 0.3)
    # a case the leaf does not have is refused by name, with the cases it has
    with pytest.raises(ConfigError) as info:
        load_space(path, ["finetune.lr.sdg=0.1"])
    assert "--set finetune.lr.sdg: finetune.lr has no case 'sdg' (its cases: adam, sgd)" in str(info.value)
    with pytest.raises(
        ConfigError, match=r"^--set finetune\.lr\.adam\.low: a case is set whole; .*--set 'finetune\.lr\.adam="
    ):
        load_space(path, ["finetune.lr.adam.low=0.01"])
    with pytest.raises(ConfigError, match=r"finetune\.weight_decay takes a value, not sub-keys"):
        load_space(path, ["finetune.weight_decay.sgd=0.1"])  # not a dependent leaf


@pytest.mark.parametrize(
    ("finetune", "message"),
    [
        (
            {**BY_OPTIMIZER, "lr": {"by": "optimizer", "adam": ADAM_LR}},
            "finetune.lr: no case for finetune.optimizer='sgd",
        ),
        ({"optimizer": "adam", "lr": {"by": "optimizer", "sgd": 0.1}}, "no case for finetune.optimizer='adam'"),
        ({"lr": {"by": "grad_clip", "adam": 0.1}}, "no case for finetune.grad_clip=None"),
        ({"grad_clip": {"low": 1.0, "high": 5.0}, "lr": {"by": "grad_clip", "x": 0.1}}, "searched over a range"),
        ({"lr": {"by": "optimiser", "adam": 0.1}}, "unknown key finetune.optimiser; known keys:"),
        ({"lr": {"by": "lr", "adam": 0.1}}, "finetune.lr.by names the leaf itself"),
        ({"lr": {"by": "optimizer"}}, "finetune.lr: no cases"),
        ({"lr": {"by": 3, "sgd": 0.1}}, "finetune.lr.by must name the leaf it depends on"),
        ({"lr": {"by": "optimizer", "sgd": {"by": "optimizer", "sgd": 0.1}}}, "finetune.lr.sgd: a case cannot depend"),
        (
            {**BY_OPTIMIZER, "weight_decay": {"by": "momentum", "adam": 0.0, "sgd": 0.0}},
            "finetune.momentum depends on another leaf itself",
        ),
        ({**BY_OPTIMIZER, "momentum": {"by": "optimizer", "adam": 0.9, "sgd": 1.5}}, "finetune.momentum must be"),
    ],
)
def test_a_bad_dependent_leaf_is_refused_with_its_key(finetune: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_space({**BASE, "finetune": finetune})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_size_and_per_layer_values_cannot_depend_on_a_searched_leaf() -> None:
    prune = {"allocation": {"choices": ["global", "erk"]}, "density": {"by": "allocation", "global": 0.1, "erk": 0.2}}
    with pytest.raises(ConfigError, match=r"prune\.density cannot depend on a searched leaf"):
        parse_space({**BASE, "prune": prune})
    fixed = {"allocation": "erk", "density": {"by": "allocation", "global": 0.1, "erk": {"low": 0.01, "high": 0.2}}}
    density = next(d for d in parse_space({**BASE, "prune": fixed}).dims if d.path == "prune.density")
    assert (density.low, density.high, density.when) == (0.01, 0.2, None)  # a fixed parent is fine
    per_layer = {"sparsity": {"fc1": {"by": "train.penalty", "l1": 0.5}}}
    with pytest.raises(ConfigError, match=r"prune\.sparsity\.fc1: only a section's own leaf"):
        parse_space({**BASE, "prune": per_layer})
