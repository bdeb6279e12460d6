"""Restoring a resumed training run: every use of the checkpoint that `training.resume` names, in one place."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastai.basic_train import Learner
from torch import nn

from configuration import Config
from modules.memory_format import align_optimizer_state
from runtime.checkpoint import (
    HEAD_PREFIX,
    CheckpointError,
    ResumePoint,
    find_checkpoint,
    load_checkpoint,
    load_weights,
    model_state,
    periodic_checkpoints,
    restore_rng,
    resume_point,
)
from runtime.distributed import DistEnv, shared_seed


@dataclass
class Resume:
    """The checkpoint a resumed run continues from (`path` and `state` None for a fresh run), read once with the
    run's config."""

    config: Config
    path: Path | None = None
    state: dict[str, Any] | None = None

    @classmethod
    def read(cls, config: Config) -> Resume:
        """The checkpoint of `training.resume` (a file, or the newest periodic one of a folder), if set."""
        if not config.training_resume:
            return cls(config)
        path = find_checkpoint(config.training_resume)
        return cls(config, path, load_checkpoint(path))

    def sampler_seed(self) -> int:
        """The training sampler's seed: the checkpoint's, else one drawn from `global.seed` (same on every rank)."""
        if self.state is not None and self.state.get('sampler_seed') is not None:
            return int(self.state['sampler_seed'])
        return shared_seed(self.config.global_seed)

    def point(self, iters_per_epoch: int, env: DistEnv, logger: logging.Logger) -> ResumePoint:
        """Where training starts: `training.start_iters` for a fresh run, else the checkpoint's place."""
        if self.state is None:
            return ResumePoint(self.config.training_start_iters, 0, 0, True, '')
        point = resume_point(self.state, iters_per_epoch, env.world_size, self.config.dataset_train_batch_size)
        logger.info(f'resuming from {self.path} at iteration {point.iteration}: {point.note}')
        return point

    def restore_model(self, model: nn.Module) -> None:
        """Load the checkpoint's weights (strictly) into `model`; CheckpointError when the checkpoint is of the other
        model type (ConCLR with its projection head vs ABINet-Vision): a resumed run continues the same model."""
        if self.path is None:
            return
        file_head = any(k.startswith(HEAD_PREFIX) for k in model_state(self.state, self.path))
        own_head = any(k.startswith(HEAD_PREFIX) for k in getattr(model, 'module', model).state_dict())
        if file_head != own_head:
            kinds = {True: 'ConCLR-Vision (with a projection head)', False: 'ABINet-Vision (no projection head)'}
            raise CheckpointError(f'--resume {self.path}: a checkpoint of {kinds[file_head]}, but this config builds '
                                  f'{type(model).__name__}, {kinds[own_head]}: resume with the config it was trained '
                                  'with (to start another model from its weights use --checkpoint instead)')
        load_weights(model, self.path, strict=True)

    def restore_optimizer(self, learn: Learner, logger: logging.Logger) -> None:
        """Create the Learner's optimiser with the checkpoint's state (a warning when it holds none)."""
        if self.state is None:
            return
        if self.state.get('opt') is None:
            logger.warning(f'{self.path} holds no optimiser state: the optimiser starts afresh')
            return
        config = self.config
        learn.create_opt(config.optimizer_lr, config.optimizer_wd)
        opt = learn.opt.opt
        other = (f'--resume {self.path}: its optimiser state does not fit optimizer.type {config.optimizer_type} of '
                 'this config')
        try:
            learn.opt.load_state_dict(self.state['opt'])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f'{other} ({e}): resume with the config it was trained with') from None
        missing = sorted({k for group in opt.param_groups for k in opt.defaults if k not in group})
        if missing:
            raise CheckpointError(f'{other}: it lacks {", ".join(missing)}, so it was saved by another optimiser '
                                  'type; resume with the config it was trained with')
        align_optimizer_state(learn.opt.opt)  # NCHW moments from the file, channels-last weights

    def restore_scaler(self, scaler: Any) -> None:
        """Load the fp16 GradScaler's state, when both exist."""
        if scaler is not None and self.state is not None and self.state.get('scaler'):
            scaler.load_state_dict(self.state['scaler'])

    def restore_rng(self, env: DistEnv) -> None:
        """Set this rank's random generators to the checkpoint's (when it was saved with as many processes)."""
        if self.state is not None and len(self.state.get('rng') or []) == env.world_size:
            restore_rng(self.state['rng'][env.rank])

    @property
    def best_cwr(self) -> float:
        """The best cwr so far (-1 for a fresh run)."""
        return float(self.state.get('best_cwr', -1.0)) if self.state is not None else -1.0

    def records(self) -> dict[str, Any] | None:
        """The checkpoint's evaluations, loss windows and timings (None for a fresh run or an older checkpoint)."""
        return self.state.get('records') if self.state is not None else None

    def saved(self) -> list[Path] | None:
        """The run's periodic checkpoints already on disk, for the keep-last-five rule (None for a fresh run)."""
        if self.state is None:
            return None
        return periodic_checkpoints(self.config.workdir, self.config.global_name)
