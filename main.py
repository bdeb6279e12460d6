"""Train or evaluate ABINet-Vision / ConCLR-Vision with fastai 1.0.60 (ABINet's command line).

`python main.py --config ...` runs one process per visible GPU (one on the CPU), or `training.processes`: with
more than one it starts them itself through torch's elastic launcher (support/launcher.py), so they run exactly as under
`torchrun --nproc_per_node=N main.py --config ...`. Several machines: torchrun with --nnodes and a rendezvous; see
support/distributed.py.
"""

from __future__ import annotations

import support.fastai_compat  # noqa: F401  (must come before fastai)

import argparse
import importlib
import logging
import os
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from fastai.basic_data import DataBunch, DeviceDataLoader
from fastai.basic_train import Learner
from fastai.callback import Callback
from fastai.train import GradientClipping
from torch import nn
from torch.utils.data import DataLoader

from callbacks.amp import MixedPrecision, amp_mode
from callbacks.conaug import ConAugPretransform
from callbacks.distributed import DistributedTrainer
from callbacks.iteration import IterationCallback
from callbacks.lr_schedule import PiecewiseConstantLR, schedule_end
from callbacks.nonfinite import NonFiniteGuard, NonFiniteLossError
from dataset import (
    SMALL_SIDE,
    DatasetError,
    ImageDataset,
    dataset_kwargs,
    get_dataset,
    limit_opencv_threads,
    one_line_error,
    process_rank,
    seed_worker,
    shutdown_workers,
)
from losses.conclr_loss import ConCLRLoss
from losses.recognition import RecognitionLoss
from modules.decoding import decode_logits
from support.checkpoint import (
    CheckpointError,
    ResumePoint,
    capture_rng,
    find_checkpoint,
    load_checkpoint,
    load_weights,
    periodic_checkpoints,
    restore_rng,
    resume_point,
)
from support.distributed import (
    DistEnv,
    ResumableDistributedSampler,
    ShardedBatchSampler,
    all_gather_objects,
    cleanup_distributed,
    current_env,
    is_distributed,
    launched_by_torchrun,
    local_batch_size,
    setup_distributed,
    setup_rank_logger,
    shared_seed,
    sum_across_ranks,
    unwrap,
)
from support.evaluation import EvalResult, evaluate, format_table, table_rows, write_csv
from support.launcher import LAUNCHED_BY_ENV, launch, process_count, report_error
from support.memory_format import align_optimizer_state, enable_cudnn_autotune, weights_memory_format
from support.pictures import attention_maps, attention_picture, denormalize, log_eval_images, save_rgb
from support.stop_signal import Interrupted, StopSignal, resume_command, signal_name
from utils import CharsetMapper, Config, ConfigError, check_writable, seed_everything, tune_malloc

MODEL_EVALS = ('vision',)
ATTENTION_PICTURES_PER_SET = 16
MAIN_SCRIPT = Path(__file__).resolve()
# Test hook: when set to a folder, every rank writes its final weights and evaluation history there (rank<r>.pth).
DUMP_FINAL_STATE_ENV = 'CONCLR_DUMP_FINAL_STATE'
# Test hook: "RANK:ITERATION" makes that rank fail as it starts that training iteration (1-based), as a loader
# error would, so the tests can check that a failing rank ends the whole job instead of hanging it.
FAIL_AT_ENV = 'CONCLR_TEST_FAIL_AT'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """ABINet's flags."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--config', type=str, required=True, help='YAML config merged over configs/template.yaml')
    parser.add_argument('--phase', type=str, default=None, choices=['train', 'test'], help='overrides global.phase')
    parser.add_argument('--name', type=str, default=None, help='run name (work directory <workdir>/<name>)')
    parser.add_argument('--checkpoint', type=str, default=None, help='checkpoint of the whole model to load')
    parser.add_argument('--resume', type=str, default=None, help='continue an interrupted training run from this '
                        'checkpoint, or from the newest periodic checkpoint of this work directory')
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
    if args.resume is not None:
        config.training_resume = args.resume
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


def eval_dataloader(config: Config, dataset: torch.utils.data.Dataset, device: torch.device) -> DataLoader:
    """Fixed-order evaluation batches of `dataset.test.batch_size`; in a distributed run this process's share
    (batches dealt round-robin, see ShardedBatchSampler)."""
    env = current_env(device)
    limit_opencv_threads()  # before any worker is forked
    batches = ShardedBatchSampler(len(dataset), config.dataset_test_batch_size, env.rank, env.world_size)
    return DataLoader(dataset, batch_sampler=batches, num_workers=config.dataset_num_workers,
                      pin_memory=config.dataset_pin_memory and device.type == 'cuda', worker_init_fn=seed_worker)


def test_loader(config: Config, dataset: torch.utils.data.Dataset, device: torch.device) -> DeviceDataLoader:
    """Fixed-order evaluation loader (this process's share of it in a distributed run)."""
    return DeviceDataLoader(eval_dataloader(config, dataset, device), device)


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


def _loader_seed(sampler_seed: int, rank: int, iteration: int) -> int:
    """Seed of the training loader's own generator (worker base seeds), distinct per rank and per (re)start."""
    return (sampler_seed * 1_000_003 + rank * 7_919 + iteration) % 2**63


class _FailAt(Callback):
    """Raise a DatasetError as training iteration `iteration` (1-based, counted from this run's start) begins."""

    def __init__(self, iteration: int):
        self.iteration = iteration

    def on_batch_begin(self, iteration: int, train: bool, **kwargs: Any) -> None:
        if train and iteration + 1 == self.iteration:
            raise DatasetError(f'{FAIL_AT_ENV}: simulated loader failure at iteration {self.iteration}')


def _failure_hook(rank: int) -> list[Callback]:
    """The `FAIL_AT_ENV` test hook's callback for this rank (none normally)."""
    value = os.environ.get(FAIL_AT_ENV)
    if not value:
        return []
    fail_rank, _, iteration = value.partition(':')
    return [_FailAt(int(iteration))] if int(fail_rank) == rank else []


def train(config: Config, device: torch.device, env: DistEnv | None = None,
          stop: StopSignal | None = None) -> IterationCallback:
    """Train on dataset.train.roots, evaluating on the concatenated dataset.test.roots.

    In a distributed run (torchrun) every process calls it with its own `env`; `dataset.train.batch_size` is the
    global batch, split evenly over the processes. `training.resume` continues an interrupted run. With `stop`
    (installed signal handlers), SIGINT / SIGTERM end training after the current step with one resumable
    checkpoint and raise Interrupted.
    """
    env = env or current_env(device)
    amp = amp_mode(config.training_amp)
    global_batch = config.dataset_train_batch_size
    batch = local_batch_size(global_batch, env.world_size)
    seed_everything(config.global_seed)
    charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
    train_set = get_dataset(config.dataset_train_roots, charset, True, **dataset_kwargs(config, True))
    test_sets = get_dataset(config.dataset_test_roots, charset, False, **dataset_kwargs(config, False))
    valid_set = torch.utils.data.ConcatDataset(list(test_sets.values()))
    # the log file only once the data opened: a start that fails on a missing LMDB leaves no train.txt behind
    logger = setup_rank_logger(config.workdir, 'train', env)
    logger.info(f'config {config.path}, work directory {config.workdir}, device {device}')
    log_config_notes(config, env, logger)
    if env.distributed:
        logger.info(f'{env.world_size} processes ({"NCCL" if device.type == "cuda" else "gloo"}): global batch '
                    f'{global_batch} = {env.world_size} x {batch}')
    logger.info(f'training samples {len(train_set)} from {len(config.dataset_train_roots)} root(s); '
                f'evaluation samples {len(valid_set)} from {", ".join(test_sets)}')
    if len(train_set) < global_batch:
        raise DatasetError(f'{len(train_set)} training samples are fewer than one batch ({global_batch})')

    resume_path = find_checkpoint(config.training_resume) if config.training_resume else None
    state = load_checkpoint(resume_path) if resume_path is not None else None
    sampler_seed = int(state['sampler_seed']) if state and state.get('sampler_seed') is not None \
        else shared_seed(config.global_seed)
    sampler = ResumableDistributedSampler(train_set, env.world_size, env.rank, sampler_seed, batch)
    iters_per_epoch = sampler.num_samples // batch
    if state is not None:
        point = resume_point(state, iters_per_epoch, env.world_size, global_batch)
        logger.info(f'resuming from {resume_path} at iteration {point.iteration}: {point.note}')
    else:
        point = ResumePoint(config.training_start_iters, 0, 0, True, '')
    sampler.resume_at(point.epoch, point.skip_batches)
    sampler.set_epoch(point.epoch)
    workers = config.dataset_num_workers
    pin = config.dataset_pin_memory and device.type == 'cuda'
    generator = torch.Generator().manual_seed(_loader_seed(sampler_seed, env.rank, point.iteration))
    limit_opencv_threads()  # before any worker is forked
    train_dl = DataLoader(train_set, batch_size=batch, sampler=sampler, drop_last=True, num_workers=workers,
                          pin_memory=pin, persistent_workers=workers > 0, worker_init_fn=seed_worker,
                          generator=generator)
    valid_dl = eval_dataloader(config, valid_set, device)

    model = build_model(config)
    if resume_path is not None:
        load_weights(model, resume_path, strict=True)
    logger.info(f'model {type(model).__name__}: {sum(p.numel() for p in model.parameters()):,} parameters')
    if config.training_channels_last:
        if device.type == 'cuda':
            # weights here; inputs and the backbone's output follow the weights (modules use dense_like)
            model = model.to(memory_format=weights_memory_format(device, True))
        else:
            logger.warning('training.channels_last is ignored on the CPU')
    if enable_cudnn_autotune(device):
        logger.info('cudnn.benchmark on (fixed input shapes)')
    if config.training_sync_bn and env.distributed and device.type != 'cuda':
        logger.warning('training.sync_bn needs CUDA (NCCL); plain BatchNorm is used')
    if env.rank > 0:  # every rank its own dropout and ConAug draws; the weights all start as rank 0's
        seed_everything((config.global_seed if config.global_seed is not None else torch.initial_seed()) + env.rank)
    learn = build_learner(config, model, train_dl, valid_dl, device)
    if state is not None:
        if state.get('opt') is not None:
            learn.create_opt(config.optimizer_lr, config.optimizer_wd)
            learn.opt.load_state_dict(state['opt'])
            align_optimizer_state(learn.opt.opt)  # NCHW moments from the file, channels-last weights
        else:
            logger.warning(f'{resume_path} holds no optimiser state: the optimiser starts afresh')
    precision = MixedPrecision(learn, amp, device.type) if amp else None
    if precision is not None:
        learn.callbacks.append(precision)  # learner-wide: evaluation forward passes run under autocast too
        if precision.scaler is not None and state is not None and state.get('scaler'):
            precision.scaler.load_state_dict(state['scaler'])
        logger.info(f'mixed precision {amp}' + (' with a gradient scaler' if precision.scaler else ''))

    from tensorboardX import SummaryWriter
    writer = SummaryWriter(str(config.workdir)) if env.is_main else None

    def run_eval(iteration: int) -> dict[str, float] | None:
        result = evaluate(learn, learn.data.valid_dl, charset, config.dataset_eval_case_sensitive,
                          should_stop=(lambda: stop.requested) if stop is not None else None)
        if stop is not None and stop.agreed():  # a collective: every rank, every evaluation
            return None  # cut short: neither logged nor compared with the best
        if writer is not None:
            log_eval_images(writer, unwrap(learn.model), valid_set, charset, iteration)
        return {'loss': result.loss, **{k: v for k, v in result.metrics.summary().items() if k != 'words'}}

    def extra_state() -> dict[str, Any]:
        scaler = precision.scaler.state_dict() if precision is not None and precision.scaler is not None else None
        return {'iters_per_epoch': iters_per_epoch, 'world_size': env.world_size, 'global_batch': global_batch,
                'sampler_seed': sampler_seed, 'rng': all_gather_objects(capture_rng()), 'scaler': scaler}

    iteration_cb = IterationCallback(
        learn, config.global_name, config.workdir, logger, run_eval, writer, config.training_show_iters,
        config.training_eval_iters, config.training_save_iters, point.iteration, config.training_max_iters,
        float(state.get('best_cwr', -1.0)) if state is not None else -1.0, start_epoch=point.epoch,
        start_batch=point.skip_batches, is_main=env.is_main, world_size=env.world_size, extra_state=extra_state,
        saved=periodic_checkpoints(config.workdir, config.global_name) if state is not None else None, stop=stop)
    callbacks: list[Any] = [
        DistributedTrainer(learn, env, sampler, point.epoch, sync_bn=config.training_sync_bn,
                           find_unused_parameters=config.training_find_unused_parameters),
        NonFiniteGuard(learn, config.training_max_nonfinite, logger, verbose=env.is_main, start_iter=point.iteration),
        PiecewiseConstantLR(learn, config.optimizer_lr, config.optimizer_scheduler_periods,
                            config.optimizer_scheduler_gamma, point.iteration, iters_per_epoch,
                            warmup_iters=config.optimizer_scheduler_warmup_iters, epochs=config.training_epochs,
                            logger=logger)]
    if config.optimizer_clip_grad:
        callbacks.append(GradientClipping(learn, clip=config.optimizer_clip_grad))
    if is_conclr(model):
        callbacks.append(ConAugPretransform(side=config.conaug_side, charset=charset,
                                            test_conaug=config.dataset_test_conaug and env.is_main,
                                            workdir=config.workdir, writer=writer))
    callbacks.append(iteration_cb)
    callbacks += _failure_hook(env.rank)
    epochs = config.training_epochs - point.epoch
    max_iters = config.training_max_iters
    end = schedule_end(config.optimizer_scheduler_periods, iters_per_epoch, config.training_epochs)
    if epochs <= 0 or (max_iters is not None and point.iteration >= max_iters) or \
            (end is not None and point.iteration >= end):
        logger.info(f'nothing left to train at iteration {point.iteration}, epoch {point.epoch} '
                    f'(training.epochs {config.training_epochs}, optimizer.scheduler.periods '
                    f'{config.optimizer_scheduler_periods}, training.max_iters {max_iters})')
        if writer is not None:
            writer.close()
        return iteration_cb
    if state is not None and len(state.get('rng') or []) == env.world_size:
        restore_rng(state['rng'][env.rank])
    try:
        with stop.deferred() if stop is not None else nullcontext():
            learn.fit(epochs, lr=config.optimizer_lr, callbacks=callbacks)
    finally:
        if writer is not None:
            writer.close()
        shutdown_workers(train_dl)  # the Learner's reference cycle would keep them alive after train() returns
    if stop is not None and stop.agreed():
        _raise_interrupted(stop, iteration_cb)
    logger.info(f'training done at iter {iteration_cb.iteration}; best cwr {iteration_cb.best_cwr:.4f}; '
                + replaced_summary(train_set, device))
    dump = os.environ.get(DUMP_FINAL_STATE_ENV)
    if dump:
        Path(dump).mkdir(parents=True, exist_ok=True)
        torch.save({'model': unwrap(learn.model).state_dict(), 'history': iteration_cb.history},
                   Path(dump) / f'rank{env.rank}.pth')
    return iteration_cb


def replaced_summary(train_set: Any, device: torch.device) -> str:
    """How many training samples were replaced, by cause, summed over worker processes and ranks (a collective)."""
    unreadable, small = sum_across_ranks([float(sum(ds.num_replaced for ds in train_set.datasets)),
                                          float(sum(ds.num_small for ds in train_set.datasets))], device)
    return (f'training samples replaced by random ones: {int(unreadable)} unreadable (undecodable image or '
            f'unusable label), {int(small)} too small (a side of {SMALL_SIDE} px or less)')


def _raise_interrupted(stop: StopSignal, iteration_cb: IterationCallback) -> None:
    """Interrupted naming the step reached and the checkpoint that holds it."""
    raise Interrupted(stop.signum, f' at iteration {iteration_cb.iteration}',
                      checkpoint=iteration_cb.saved[-1] if iteration_cb.saved else None)


def test(config: Config, device: torch.device, image_only: bool = False,
         env: DistEnv | None = None) -> list[dict[str, Any]]:
    """Evaluate every test root on its own and together; print and save the table and per-sample predictions.

    Under torchrun every process evaluates its share of each set; rank 0 writes the results, which equal a
    single-process run's exactly.
    """
    env = env or current_env(device)
    best = checkpoint_to_test(config)  # before the data opens: a missing best checkpoint is the first error
    amp = amp_mode(config.training_amp)
    charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
    test_sets = get_dataset(config.dataset_test_roots, charset, False, **dataset_kwargs(config, False))
    logger = setup_rank_logger(config.workdir, 'test', env)  # after the data opened, as in train()
    log_config_notes(config, env, logger)
    if best is not None:
        config.model_checkpoint = str(best)
        logger.info(f'no --checkpoint given: loading the run\'s best checkpoint {best}')
    model = build_model(config)
    enable_cudnn_autotune(device)
    logger.info(f'evaluating {config.model_checkpoint} on {", ".join(test_sets)}'
                + (f' with {env.world_size} processes' if env.distributed else ''))
    loaders = {name: test_loader(config, ds, device) for name, ds in test_sets.items()}
    first = next(iter(loaders.values())).dl
    learn = build_learner(config, model, first, first, device)
    if amp:
        learn.callbacks.append(MixedPrecision(learn, amp, device.type))
    if env.is_main:
        set_aside_previous_results(config.workdir, logger)
    results = []
    for name, dl in loaders.items():
        result = evaluate(learn, dl, charset, config.dataset_eval_case_sensitive, record=True, name=name,
                          left_out=test_sets[name].num_left_out)
        results.append(result)
        if env.is_main:
            _dump_predictions(config.workdir / 'predictions' / f'{name}.tsv', result)
            if not image_only:
                _attention_pictures(model, test_sets[name], charset, config.workdir / 'attention' / name, device)
    rows = table_rows(results)
    if env.is_main:
        logger.info('results\n' + format_table(rows))
        write_csv(rows, config.workdir / 'test_results.csv')
        logger.info(f'wrote {config.workdir / "test_results.csv"} and per-sample predictions in '
                    f'{config.workdir / "predictions"}' + ('' if image_only else f', attention pictures in '
                                                            f'{config.workdir / "attention"}'))
    return rows


def best_checkpoint(config: Config) -> Path:
    """The run's best checkpoint, `<global.workdir>/<global.name>/best-<global.name>.pth`."""
    return config.workdir / f'best-{config.global_name}.pth'


def checkpoint_to_test(config: Config) -> Path | None:
    """None when `model.checkpoint` (--checkpoint) is set; else the run's best checkpoint, which the test phase
    evaluates then, as upstream (an error naming it when it does not exist)."""
    if config.model_checkpoint:
        return None
    path = best_checkpoint(config)
    if not path.is_file():
        raise CheckpointError(f'no --checkpoint given and the run\'s best checkpoint {path} does not exist '
                              '(train first, or pass --checkpoint PATH)')
    return path


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


def processes_to_start(config: Config) -> tuple[int, str]:
    """How many worker processes a plain `python main.py` starts (1: none, it runs itself), and why.

    Under torchrun it is always 1: torchrun started the workers and `training.processes` is ignored."""
    if launched_by_torchrun():
        return 1, ''
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    count = process_count(config.training_processes, gpus)
    why = (f'training.processes {config.training_processes}' if config.training_processes is not None
           else f'one per visible GPU: {gpus}')
    return count, why


TEST_OUTPUTS = ('test_results.csv', 'predictions', 'attention')


def set_aside_previous_results(workdir: Path, logger: logging.Logger) -> list[Path]:
    """Rename the outputs of an earlier test phase in `workdir` to `<name>-<its time>` (say so in the log), so a
    new test run never overwrites them; returns the new names."""
    found = [workdir / name for name in TEST_OUTPUTS if (workdir / name).exists()]
    if not found:
        return []
    stamp = time.strftime('%Y%m%d-%H%M%S', time.localtime(found[0].stat().st_mtime))
    kept = []
    for path in found:
        target, k = path.with_name(f'{path.stem}-{stamp}{path.suffix}'), 1
        while target.exists():
            target, k = path.with_name(f'{path.stem}-{stamp}-{k}{path.suffix}'), k + 1
        kept.append(path.rename(target))
    logger.info(f'an earlier test run left results here; kept them as {", ".join(p.name for p in kept)}')
    return kept


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
    folder.mkdir(parents=True, exist_ok=True)
    count = min(ATTENTION_PICTURES_PER_SET, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(count)])  # stays on the host for the pictures
    model.eval()
    output = model(images.to(device))
    texts, _, _ = decode_logits(output['logits'], charset)
    maps = attention_maps(output['attn_scores'])  # one device copy for the batch
    for i in range(count):
        picture = attention_picture(denormalize(images[i]), maps[i], texts[i])
        save_rgb(folder / f'{i:04d}.png', picture)


def interrupt_line(e: Interrupted, command: list[str]) -> str:
    """The one line a stopped run prints: what stopped it, what was saved, and how to continue."""
    line = f'{signal_name(e.signum)} stopped the run{e}'
    if e.checkpoint is None:
        return line + '; nothing was saved'
    return f'{line}; saved {e.checkpoint}; continue with: {resume_command(e.checkpoint, command)}'


def main(argv: list[str] | None = None) -> int:
    """Entry point (plain or under torchrun); bad input ends with a one-line error and exit status 2, SIGINT /
    SIGTERM with one line and 130 / 143 (training saves a resumable checkpoint first)."""
    args = parse_args(argv)
    env = None
    failed = True  # until the phase returns: a failed process aborts the group instead of a collective destroy
    stop = StopSignal()
    try:
        config = build_config(args)
        check_writable(config.workdir)
        processes, why = processes_to_start(config)
        if processes > 1:  # the launching process only waits: each worker handles SIGINT / SIGTERM itself
            if config.global_phase == 'test':
                checkpoint_to_test(config)  # a missing best checkpoint is an error before any worker starts
            return launch(processes, MAIN_SCRIPT, sys.argv[1:] if argv is None else list(argv), why)
        with stop.installed():
            if config.global_malloc_tune:
                tune_malloc()
            env = setup_distributed(timeout_s=config.global_dist_timeout)
            if config.global_phase == 'train':
                train(config, env.device, env, stop=stop)
            else:
                test(config, env.device, image_only=args.image_only, env=env)
        failed = False
    except Interrupted as e:
        failed = False  # every rank agreed to stop at the same step: the group ends normally
        if (env.rank if env is not None else process_rank()) == 0:
            print(interrupt_line(e, sys.argv if argv is None else [__file__, *argv]), file=sys.stderr)
        return e.exit_status
    except (ConfigError, DatasetError, CheckpointError, FileNotFoundError, NonFiniteLossError) as e:
        report_error(one_line_error(e), env.rank if env is not None else process_rank())
        return 2
    finally:
        if is_distributed():
            cleanup_distributed(failed=failed)
    return 0


if __name__ == '__main__':
    sys.exit(main())
