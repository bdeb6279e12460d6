"""Train or evaluate ABINet-Vision / ConCLR-Vision with fastai 1.0.60 (ABINet's command line)."""

from __future__ import annotations

import fastai_compat  # noqa: F401  (must come before fastai)

import argparse
import importlib
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch
from fastai.basic_data import DataBunch, DeviceDataLoader
from fastai.basic_train import Learner
from fastai.train import GradientClipping
from torch import nn
from torch.utils.data import DataLoader

from callbacks.conaug import ConAugPretransform
from callbacks.iteration import IterationCallback
from callbacks.lr_schedule import PiecewiseConstantLR
from callbacks.tensorboard_images import log_eval_images
from checkpoint import CheckpointError, load_weights
from dataset import DatasetError, ImageDataset, dataset_kwargs, get_dataset
from evaluation import EvalResult, evaluate, format_table, table_rows, write_csv
from losses.conclr_loss import ConCLRLoss
from losses.recognition import RecognitionLoss
from utils import CharsetMapper, Config, ConfigError, seed_everything, setup_logger

MODEL_EVALS = ('vision',)
ATTENTION_PICTURES_PER_SET = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """ABINet's flags."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--config', type=str, required=True, help='YAML config merged over configs/template.yaml')
    parser.add_argument('--phase', type=str, default=None, choices=['train', 'test'], help='overrides global.phase')
    parser.add_argument('--name', type=str, default=None, help='run name (work directory <workdir>/<name>)')
    parser.add_argument('--checkpoint', type=str, default=None, help='checkpoint of the whole model to load')
    parser.add_argument('--test_root', type=str, nargs='+', default=None, help='LMDB(s) to evaluate instead of '
                        'dataset.test.roots')
    parser.add_argument('--model_eval', type=str, default='vision', help="output to evaluate ('vision')")
    parser.add_argument('--image_only', action='store_true', help='test phase: no attention pictures')
    parser.add_argument('--debug', action='store_true', help='no worker processes, log every iteration')
    parser.add_argument('--model_strict', action='store_false',
                        help='as in ABINet: passing this flag turns strict checkpoint loading OFF')
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    """The config file with the command-line overrides applied."""
    config = Config(args.config)
    if args.phase is not None:
        config.global_phase = args.phase
    if args.name is not None:
        config.global_name = args.name
    if args.checkpoint is not None:
        config.model_checkpoint = args.checkpoint
    if args.test_root is not None:
        config.dataset_test_roots = list(args.test_root)
    if not args.model_strict:
        config.model_strict = False
    if args.debug:
        config.dataset_num_workers = 0
        config.training_show_iters = 1
    if args.model_eval not in MODEL_EVALS:
        raise ConfigError(f'--model_eval {args.model_eval!r}: only {MODEL_EVALS} exist here (this project holds '
                          'the ABINet vision model, not the language or alignment models)')
    return config


def build_model(config: Config) -> nn.Module:
    """Instantiate `model.name` (a class under modules/) and load `model.vision.checkpoint`, `model.checkpoint`."""
    module_name, _, class_name = config.model_name.rpartition('.')
    if not module_name.startswith('modules.'):
        raise ConfigError(f'model.name {config.model_name!r} must name a class under modules/')
    try:
        model_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise ConfigError(f'model.name {config.model_name!r}: no such class') from None
    model = model_class(config)
    for path in (config.model_vision_checkpoint, config.model_checkpoint):
        if path:
            load_weights(model, path, strict=config.model_strict)
    return model


def is_conclr(model: nn.Module) -> bool:
    """Whether the model trains with ConAug views and the contrastive loss."""
    return hasattr(model, 'projection_head')


def test_loader(config: Config, dataset: torch.utils.data.Dataset, device: torch.device) -> DeviceDataLoader:
    """Fixed-order evaluation loader."""
    dl = DataLoader(dataset, batch_size=config.dataset_test_batch_size, shuffle=False,
                    num_workers=config.dataset_num_workers,
                    pin_memory=config.dataset_pin_memory and device.type == 'cuda')
    return DeviceDataLoader(dl, device)


def build_learner(config: Config, model: nn.Module, train_dl: DataLoader, valid_dl: DataLoader,
                  device: torch.device) -> Learner:
    """The fastai Learner with ABINet's optimiser settings and the recognition (+ contrastive) loss."""
    data = DataBunch(train_dl, valid_dl, device=device)
    opt_class = getattr(torch.optim, config.optimizer_type, None)
    if opt_class is None:
        raise ConfigError(f'optimizer.type {config.optimizer_type!r} is not a torch.optim class')
    opt_args = {k.removeprefix('optimizer_args_'): tuple(v) if isinstance(v, list) else v
                for k, v in config.items() if k.startswith('optimizer_args_') and v is not None}
    if is_conclr(model):
        loss_func: nn.Module = ConCLRLoss(config.training_tau, config.training_alpha, config.training_include_eos)
    else:
        loss_func = RecognitionLoss()
    return Learner(data, model.to(device), opt_func=partial(opt_class, **opt_args), loss_func=loss_func,
                   wd=config.optimizer_wd, true_wd=config.optimizer_true_wd, bn_wd=config.optimizer_bn_wd,
                   path=str(config.workdir), model_dir='.', silent=True)


def train(config: Config, device: torch.device) -> IterationCallback:
    """Train on dataset.train.roots, evaluating on the concatenated dataset.test.roots."""
    logger = setup_logger(config.workdir, 'train')
    logger.info(f'config {config.path}, work directory {config.workdir}, device {device}')
    seed_everything(config.global_seed)
    charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
    train_set = get_dataset(config.dataset_train_roots, charset, True, **dataset_kwargs(config, True))
    test_sets = get_dataset(config.dataset_test_roots, charset, False, **dataset_kwargs(config, False))
    valid_set = torch.utils.data.ConcatDataset(list(test_sets.values()))
    logger.info(f'training samples {len(train_set)} from {len(config.dataset_train_roots)} root(s); '
                f'evaluation samples {len(valid_set)} from {", ".join(test_sets)}')
    if len(train_set) < config.dataset_train_batch_size:
        raise DatasetError(f'{len(train_set)} training samples are fewer than one batch '
                           f'({config.dataset_train_batch_size})')
    train_dl = DataLoader(train_set, batch_size=config.dataset_train_batch_size, shuffle=True, drop_last=True,
                          num_workers=config.dataset_num_workers,
                          pin_memory=config.dataset_pin_memory and device.type == 'cuda',
                          persistent_workers=config.dataset_num_workers > 0)
    valid_dl = DataLoader(valid_set, batch_size=config.dataset_test_batch_size, shuffle=False,
                          num_workers=config.dataset_num_workers)

    model = build_model(config)
    logger.info(f'model {type(model).__name__}: {sum(p.numel() for p in model.parameters()):,} parameters')
    learn = build_learner(config, model, train_dl, valid_dl, device)

    from tensorboardX import SummaryWriter
    writer = SummaryWriter(str(config.workdir))

    def run_eval(iteration: int) -> dict[str, float]:
        result = evaluate(learn, learn.data.valid_dl, charset, config.dataset_eval_case_sensitive)
        log_eval_images(writer, learn.model, valid_set, charset, iteration)
        return {'loss': result.loss, **{k: v for k, v in result.metrics.summary().items() if k != 'words'}}

    iteration_cb = IterationCallback(
        learn, config.global_name, config.workdir, logger, run_eval, writer, config.training_show_iters,
        config.training_eval_iters, config.training_save_iters, config.training_start_iters,
        config.training_max_iters)
    callbacks: list[Any] = [PiecewiseConstantLR(learn, config.optimizer_lr, config.optimizer_scheduler_periods,
                                                config.optimizer_scheduler_gamma, config.training_start_iters)]
    if config.optimizer_clip_grad:
        callbacks.append(GradientClipping(learn, clip=config.optimizer_clip_grad))
    if is_conclr(model):
        callbacks.append(ConAugPretransform(side=config.conaug_side, charset=charset,
                                            test_conaug=config.dataset_test_conaug, workdir=config.workdir,
                                            writer=writer))
    callbacks.append(iteration_cb)
    try:
        learn.fit(config.training_epochs, lr=config.optimizer_lr, callbacks=callbacks)
    finally:
        writer.close()
    replaced = sum(ds.num_replaced for ds in train_set.datasets)
    logger.info(f'training done at iter {iteration_cb.iteration}; best cwr {iteration_cb.best_cwr:.4f}; '
                f'{replaced} unreadable training sample(s) replaced')
    return iteration_cb


def test(config: Config, device: torch.device, image_only: bool = False) -> list[dict[str, Any]]:
    """Evaluate every test root on its own and together; print and save the table and per-sample predictions."""
    logger = setup_logger(config.workdir, 'test')
    if not (config.model_checkpoint or config.model_vision_checkpoint):
        raise ConfigError('the test phase needs a checkpoint: --checkpoint PATH (or model.checkpoint)')
    charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
    test_sets = get_dataset(config.dataset_test_roots, charset, False, **dataset_kwargs(config, False))
    model = build_model(config)
    logger.info(f'evaluating {config.model_checkpoint or config.model_vision_checkpoint} on {", ".join(test_sets)}')
    loaders = {name: test_loader(config, ds, device) for name, ds in test_sets.items()}
    first = next(iter(loaders.values())).dl
    learn = build_learner(config, model, first, first, device)
    results = []
    for name, dl in loaders.items():
        result = evaluate(learn, dl, charset, config.dataset_eval_case_sensitive, record=True, name=name,
                          left_out=test_sets[name].num_left_out)
        results.append(result)
        _dump_predictions(config.workdir / 'predictions' / f'{name}.tsv', result)
        if not image_only:
            _attention_pictures(model, test_sets[name], charset, config.workdir / 'attention' / name, device)
    rows = table_rows(results)
    logger.info('results\n' + format_table(rows))
    write_csv(rows, config.workdir / 'test_results.csv')
    logger.info(f'wrote {config.workdir / "test_results.csv"} and per-sample predictions in '
                f'{config.workdir / "predictions"}' + ('' if image_only else f', attention pictures in '
                                                        f'{config.workdir / "attention"}'))
    return rows


def _dump_predictions(path: Path, result: EvalResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        f.write('index\tground_truth\tprediction\tconfidence\tcorrect\n')
        for i, (gt, pred, conf) in enumerate(result.records):
            correct = pred == gt if result.metrics.case_sensitive else pred.lower() == gt.lower()
            f.write(f'{i}\t{gt}\t{pred}\t{conf:.4f}\t{int(correct)}\n')


@torch.no_grad()
def _attention_pictures(model: nn.Module, dataset: ImageDataset, charset: CharsetMapper, folder: Path,
                        device: torch.device) -> None:
    from modules.decoding import decode_logits
    from visualization import attention_picture, denormalize, save_rgb

    folder.mkdir(parents=True, exist_ok=True)
    count = min(ATTENTION_PICTURES_PER_SET, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(count)]).to(device)
    model.eval()
    output = model(images)
    texts, _, _ = decode_logits(output['logits'], charset)
    for i in range(count):
        picture = attention_picture(denormalize(images[i]), output['attn_scores'][i], texts[i])
        save_rgb(folder / f'{i:04d}.png', picture)


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input ends with a one-line error and exit status 2."""
    args = parse_args(argv)
    try:
        config = build_config(args)
        device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
        if config.global_phase == 'train':
            train(config, device)
        else:
            test(config, device, image_only=args.image_only)
    except (ConfigError, DatasetError, CheckpointError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
