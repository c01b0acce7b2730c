"""Hydra callbacks: remember where the last run or sweep wrote, for the CLI's summary."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

# Set in the process that launched the jobs (callbacks run there, whatever the launcher).
LAST_OUTPUT: dict[str, str] = {}


class RememberOutput(Callback):
    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        LAST_OUTPUT.clear()
        LAST_OUTPUT.update(mode="run", dir=str(config.hydra.runtime.output_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        LAST_OUTPUT.clear()
        LAST_OUTPUT.update(mode="multirun", dir=str(config.hydra.sweep.dir))
