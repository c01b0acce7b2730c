"""Config tests through Hydra's Compose API: every option composes and instantiates."""

import pytest
import torch
from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from benchmarks.config import ConfigError, build
from estimators import Estimator


def group_options(group):
    return GlobalHydra.instance().config_loader().get_group_options(group)


def test_every_estimator_and_objective_option_builds(hydra_conf):
    estimators, objectives = group_options("estimator"), group_options("objective")
    assert {"reinforce", "reinforce_loo", "reinforce_ema", "reinforce_optimal", "reparam"} <= set(
        estimators
    )
    assert {"gaussian_quadratic", "gaussian_cosine", "bernoulli_threshold",
            "categorical_linear"} <= set(objectives)  # fmt: skip
    for objective in objectives:
        for estimator in estimators:
            cfg = compose("config", overrides=[f"estimator={estimator}", f"objective={objective}",
                                               "dtype=float64"])  # fmt: skip
            est, obj = build(cfg)
            assert isinstance(est, Estimator)
            assert obj.theta.dtype == torch.float64


def test_schema_refuses_wrong_types_and_unknown_keys(hydra_conf):
    with pytest.raises(ConfigCompositionException, match="n_samples"):
        compose("config", overrides=["n_samples=ten"])
    with pytest.raises(ConfigCompositionException, match="n_sample"):
        compose("config", overrides=["n_sample=3"])
    cfg = compose("config")
    with pytest.raises(ValidationError):
        cfg.replicates = "many"


@pytest.mark.parametrize(
    "override, message",
    [
        ("n_samples=0", "n_samples must be at least 1"),
        ("replicates=1", "replicates must be at least 2"),
        ("dtype=float16", "dtype must be one of"),
        ("device=tpu", "device must be one of"),
        ("threads=0", "threads must be at least 1"),
        ("objective.sigma=-2", "objective.sigma must be > 0"),
    ],
)
def test_build_refuses_bad_values_in_one_line(hydra_conf, override, message):
    cfg = compose("config", overrides=[override])
    with pytest.raises(ConfigError, match=message) as info:
        build(cfg)
    assert "\n" not in str(info.value)


def test_cuda_without_cuda_is_an_error_and_auto_falls_back(hydra_conf, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        build(compose("config", overrides=["device=cuda"]))
    _, objective = build(compose("config", overrides=["device=auto"]))
    assert objective.theta.device.type == "cpu"
    assert "running on CPU" in capsys.readouterr().err


def test_sweep_preset_sets_a_multirun_grid(hydra_conf):
    cfg = compose("config", overrides=["sweep=toy_variance"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert set(params["estimator"].split(",")) == {
        "reinforce", "reinforce_loo", "reinforce_ema", "reinforce_optimal", "reparam"}  # fmt: skip
    assert params["n_samples"] == "1,10,100"


def test_build_cell_gives_plain_objects_and_typed_task_settings(hydra_conf):
    from benchmarks.config import Cell, build_cell
    from benchmarks.settings import TrainSettings, VarianceSettings

    cell = build_cell(compose("config", overrides=["n_samples=7", "seed=3"]),
                      estimator_name="reinforce", objective_name="gaussian_quadratic")  # fmt: skip
    assert isinstance(cell, Cell) and isinstance(cell.task, VarianceSettings)
    assert (cell.task.n_samples, cell.task.seed, cell.task.nonfinite) == (7, 3, "record")
    assert cell.task_name == "variance" and cell.tracked == {}
    overrides = ["task=train", "task.lr=1e-2", "task.track=[reparam,reinforce]"]
    cell = build_cell(compose("config", overrides=overrides), estimator_name="reinforce")
    assert isinstance(cell.task, TrainSettings) and cell.task.lr == 0.01
    assert cell.task.track == ("reparam", "reinforce")
    # The training estimator is measured as training leaves it, so it is not built again.
    assert set(cell.tracked) == {"reparam"} and isinstance(cell.tracked["reparam"], Estimator)


def test_build_cell_with_built_shares_objects_only_between_equal_sources(hydra_conf):
    """The check's ``built``: cells that differ only in sizes, seed or task settings get
    the same estimator and objective; a different objective or estimator node, dtype or
    estimator is built anew; and each cell's own values are still checked."""
    from benchmarks.config import BUILT_KEPT, build_cell

    built: dict = {}

    def cell(*overrides):
        return build_cell(compose("config", overrides=list(overrides)), built=built)

    first = cell("n_samples=1")
    same = cell("n_samples=100", "seed=3", "task.warmup_steps=2")
    assert same.objective is first.objective and same.estimator is first.estimator
    assert same.task.n_samples == 100 and first.task.n_samples == 1
    for other in (["objective.mu=2"], ["dtype=float64"], ["objective=gaussian_cosine"]):
        assert cell(*other).objective is not first.objective, other
    assert cell("estimator=reparam").estimator is not first.estimator
    ema = cell("estimator=reinforce_ema").estimator
    assert cell("estimator=reinforce_ema", "n_samples=5").estimator is ema
    assert cell("estimator=reinforce_ema", "estimator.baseline.decay=0.5").estimator is not ema
    with pytest.raises(ConfigError, match="n_samples must be at least 1"):
        cell("n_samples=0")
    with pytest.raises(ConfigError, match="objective.sigma must be > 0"):
        cell("objective.sigma=-2")
    # Without ``built`` (the job), every call builds its own.
    assert build_cell(compose("config")).objective is not first.objective
    # Only the last BUILT_KEPT objects are kept: the oldest is built again.
    for mu in range(BUILT_KEPT):
        cell(f"objective.mu={mu + 10}")
    assert len(built) == BUILT_KEPT and cell("n_samples=1").objective is not first.objective


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["task=train", "task.steps=0"], "task.steps must be a positive integer, got 0"),
        (["task=train", "task.eval_every=-1"], "task.eval_every must be a positive integer"),
        (["task=train", "task.lr=0"], "task.lr must be a number > 0, got 0"),
        (["task=train", "task.lr=fast"], "task.lr must be a number > 0, got 'fast'"),
        (["task=train", "task.compile=maybe"], "task.compile must be true or false"),
        (["task=train", "task.track=reparam"], "task.track must be a list of estimator names"),
        (["task=train", "task.track=[nope]"], "task.track: unknown estimator 'nope'"),
        (["task.nonfinite=skip"], "task.nonfinite must be one of record, drop"),
        (["task.name=nope"], "task must be one of: variance, train; got 'nope'"),
    ],
)
def test_build_cell_refuses_bad_task_settings_in_one_line(hydra_conf, overrides, message):
    from benchmarks.config import build_cell

    with pytest.raises(ConfigError, match=message) as info:
        build_cell(compose("config", overrides=overrides))
    assert "\n" not in str(info.value)


def test_task_settings_check_their_values_without_a_config():
    from benchmarks.settings import TrainSettings, VarianceSettings

    with pytest.raises(ConfigError, match="replicates must be at least 2"):
        VarianceSettings(n_samples=1, replicates=1)
    with pytest.raises(ConfigError, match="task.steps must be a positive integer"):
        TrainSettings(n_samples=1, replicates=2, steps=0)
    assert TrainSettings(n_samples=1, replicates=2, track=["reparam"]).track == ("reparam",)
