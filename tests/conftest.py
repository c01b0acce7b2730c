"""Shared fixtures. Statistical tests run in float64 with fixed seeds."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _fixed_threads():
    # Results must not depend on the thread count; two threads match the CI machine.
    torch.set_num_threads(2)
    yield
