"""Shared fixtures. Statistical tests run in float64 with fixed seeds."""

import pytest
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from benchmarks.schema import config_path


@pytest.fixture(autouse=True)
def _fixed_threads():
    # Results must not depend on the thread count; two threads match the CI machine.
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def _notes_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("finished-sweeps")


@pytest.fixture(autouse=True)
def _finished_sweep_notes_in_tmp(_notes_folder, monkeypatch):
    # Sweeps run in-process note themselves under the working folder (benchmarks.finished);
    # the suite's notes go to a temporary folder, not the checkout's results/.
    monkeypatch.setattr("benchmarks.finished.NOTES", _notes_folder)
    yield


@pytest.fixture
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_path(), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()
