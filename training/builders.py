"""Builders from the config: the model, its loss, the optimiser and the fastai Learner (training and tools alike)."""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from fastai.basic_data import DataBunch
from fastai.basic_train import Learner
from torch import nn
from torch.utils.data import DataLoader

from configuration import Config, ConfigError
from losses.conclr_loss import ConCLRLoss, view_weights
from losses.recognition import RecognitionLoss, first_weight
from runtime.checkpoint import load_weights
from training.validate import check_geometry, model_class, optimizer_args, optimizer_class


def build_model(config: Config) -> nn.Module:
    """Instantiate `model.name` (a class under modules/) and load `model.vision.checkpoint`, `model.checkpoint`."""
    check_geometry(config, config.path or 'config')
    model = model_class(config)(config)
    for path in (config.model_vision_checkpoint, config.model_checkpoint):
        if path:
            load_weights(model, path, strict=config.model_strict)
    return model


def is_conclr(model: nn.Module) -> bool:
    """Whether the model trains with ConAug views and the contrastive loss."""
    return hasattr(model, 'projection_head')


def build_loss(config: Config, conclr: bool) -> nn.Module:
    """ConCLRLoss (view weights, tau, alpha) for a ConCLR model, else RecognitionLoss; the weights come from
    `model.vision.loss_weight`."""
    weight = config.model_vision_loss_weight
    if not conclr:
        return RecognitionLoss(first_weight(weight))
    try:
        weights = view_weights(weight)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return ConCLRLoss(config.training_tau, config.training_alpha, config.training_include_eos, weights=weights)


def optimizer_func(config: Config) -> Callable[..., torch.optim.Optimizer]:
    """`optimizer.type` (a torch.optim class) with the `optimizer.args` its signature takes; call it with
    parameters and lr."""
    return partial(optimizer_class(config), **optimizer_args(config))


def check_optimizer_precision(config: Config, amp: str | None) -> None:
    """An error when fp16's GradScaler would not guard the optimiser: a fused or capturable torch.optim step sits
    behind fastai's OptimWrapper, where the scaler's overflow flags do not reach it, so overflowing steps would
    be applied."""
    for key in ('fused', 'capturable'):
        if amp == 'fp16' and getattr(config, f'optimizer_args_{key}', None):
            raise ConfigError(f'optimizer.args.{key} true with training.amp fp16: the gradient scaler cannot skip '
                              f'overflowing steps of a {key} optimiser behind fastai\'s wrapper; use training.amp '
                              f'bf16 or optimizer.args.{key} false')


def build_learner(config: Config, model: nn.Module, train_dl: DataLoader, valid_dl: DataLoader,
                  device: torch.device) -> Learner:
    """The fastai Learner with ABINet's optimiser settings and the recognition (+ contrastive) loss."""
    data = DataBunch(train_dl, valid_dl, device=device)
    loss_func = build_loss(config, is_conclr(model))
    return Learner(data, model.to(device), opt_func=optimizer_func(config), loss_func=loss_func,
                   wd=config.optimizer_wd, true_wd=config.optimizer_true_wd, bn_wd=config.optimizer_bn_wd,
                   path=str(config.workdir), model_dir='.', silent=True)
