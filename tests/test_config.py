"""Config tests through Hydra's Compose API: every option composes and instantiates."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from benchmarks.config import ConfigError, build, config_path
from estimators import Estimator

CONF = config_path()


@pytest.fixture
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_dir(CONF, version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


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
