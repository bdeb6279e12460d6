"""The log lines every phase starts with."""

from __future__ import annotations

import logging
import os

from configuration import Config
from runtime.distributed import DistEnv
from runtime.launcher import LAUNCHED_BY_ENV


def log_config_notes(config: Config, env: DistEnv, logger: logging.Logger) -> None:
    """Log (rank 0) the config's translated upstream keys and how the processes were started."""
    if not env.is_main:
        return
    for note in config.translations:
        logger.info(note)
    reason = os.environ.get(LAUNCHED_BY_ENV)
    if reason:
        logger.info(f'{env.world_size} processes started by main.py through torch\'s elastic launcher ({reason})')
    elif config.training_processes is not None and config.training_processes != env.world_size:
        logger.warning(f'training.processes {config.training_processes} is ignored under torchrun: it started '
                       f'{env.world_size} process(es) (WORLD_SIZE)')
