"""The training phase in named steps: data, loaders (with the resumed place), model, learner (optimiser,
precision), callbacks, fit. `train()` reads as the list of them."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from fastai.basic_train import Learner
from fastai.callback import Callback
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from callbacks.accumulate import GradientAccumulation, GradientClipping, check_accumulate
from callbacks.amp import MixedPrecision, amp_mode, bf16_supported
from callbacks.conaug import ConAugPretransform
from callbacks.distributed import DistributedTrainer
from callbacks.iteration import IterationCallback
from callbacks.lr_schedule import PiecewiseConstantLR, schedule_end
from callbacks.nonfinite import NonFiniteGuard
from configuration import Config
from dataset import (
    SMALL_SIDE,
    DatasetError,
    ImageDataset,
    dataset_kwargs,
    get_dataset,
    named_test_sets,
)
from evaluation.loop import evaluate
from inference.pictures import log_eval_images
from modules.memory_format import enable_cudnn_autotune, weights_memory_format
from runtime.checkpoint import ResumePoint, capture_rng
from runtime.distributed import (
    DistEnv,
    ResumableDistributedSampler,
    all_gather_objects,
    broadcast_object,
    current_env,
    local_batch_size,
    setup_rank_logger,
    sum_across_ranks,
    unwrap,
)
from runtime.matmul_precision import set_tf32
from runtime.run_lock import RunLock, RunLockError, check_resume_source
from runtime.stop_signal import Interrupted, StopSignal
from training.builders import build_learner, build_model, check_optimizer_precision, is_conclr
from training.loaders import eval_dataloader, loader_seed, shutdown_workers, train_dataloader
from training.memory_estimate import (
    MemoryEstimate,
    MemoryEstimateError,
    check_fits,
    free_memory,
    local_processes,
    measure,
    out_of_memory_line,
)
from training.resume import Resume
from training.run_log import log_config_notes
from training.validate import validate_config
from utils import CharsetMapper, seed_everything

# Test hook: when set to a folder, every rank writes its final weights and evaluation history there (rank<r>.pth).
DUMP_FINAL_STATE_ENV = 'CONCLR_DUMP_FINAL_STATE'
# Test hook: "RANK:ITERATION" makes that rank fail as it starts that training iteration (1-based), as a loader
# error would, so the tests can check that a failing rank ends the whole job instead of hanging it.
FAIL_AT_ENV = 'CONCLR_TEST_FAIL_AT'
# In a distributed run the ranks agree on a stop request (a gloo all-reduce) every this many optimiser steps.
STOP_CHECK_STEPS = 5


@dataclass
class TrainData:
    """The opened training and evaluation data."""

    charset: CharsetMapper
    train_set: ConcatDataset
    test_sets: dict[str, ImageDataset]
    valid_set: ConcatDataset  # the test sets concatenated: what every evaluation during training reads


@dataclass
class Loaders:
    """This process's training and evaluation loaders, and where in the data training starts."""

    sampler: ResumableDistributedSampler
    train_dl: DataLoader
    valid_dl: DataLoader
    iters_per_epoch: int
    point: ResumePoint
    sampler_seed: int


def open_data(config: Config) -> TrainData:
    """Step 1: the charset, `dataset.train.roots` and the named `dataset.test.roots`."""
    charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
    train_set = get_dataset(config.dataset_train_roots, charset, True, **dataset_kwargs(config, True))
    test_sets = named_test_sets(config.dataset_test_roots, charset, **dataset_kwargs(config, False))
    return TrainData(charset, train_set, test_sets, ConcatDataset(list(test_sets.values())))


def start_log(config: Config, env: DistEnv, device: torch.device, data: TrainData) -> logging.Logger:
    """Step 2: the log file (only once the data opened: a start that fails on a missing LMDB leaves no train.txt)
    with the run's setting; an error when the data holds less than one global batch."""
    global_batch = config.dataset_train_batch_size
    logger = setup_rank_logger(config.workdir, 'train', env)
    logger.info(f'config {config.path}, work directory {config.workdir}, device {device}')
    log_config_notes(config, env, logger)
    accumulate = check_accumulate(config.training_accumulate)
    micro = local_batch_size(global_batch, env.world_size, accumulate)
    if env.distributed or accumulate > 1:
        backend = f' ({"NCCL" if dist.get_backend() == "nccl" else "gloo"})' if env.distributed else ''
        processes = f'{env.world_size} processes' if env.distributed else '1 process'
        logger.info(f'{processes}{backend}: global batch {global_batch} = {env.world_size} x '
                    f'{micro}' + (f' x {accumulate} accumulated micro-batches' if accumulate > 1 else ''))
    logger.info(f'training samples {len(data.train_set)} from {len(config.dataset_train_roots)} root(s); '
                f'evaluation samples {len(data.valid_set)} from {", ".join(data.test_sets)}')
    for ds in data.test_sets.values():
        if ds.missing_note() and env.is_main:
            logger.warning(ds.missing_note())
    if len(data.train_set) < global_batch:
        raise DatasetError(f'{len(data.train_set)} training samples are fewer than one batch ({global_batch})')
    return logger


def make_loaders(config: Config, env: DistEnv, device: torch.device, data: TrainData, resume: Resume,
                 logger: logging.Logger) -> Loaders:
    """Step 3: the sampler placed at the (resumed) start, and the loaders."""
    accumulate = config.training_accumulate
    batch = local_batch_size(config.dataset_train_batch_size, env.world_size, accumulate)
    seed = resume.sampler_seed()
    sampler = ResumableDistributedSampler(data.train_set, env.world_size, env.rank, seed, batch,
                                          accumulate=accumulate)
    iters_per_epoch = sampler.steps_per_epoch  # optimiser steps
    point = resume.point(iters_per_epoch, env, logger)
    sampler.resume_at(point.epoch, point.skip_batches)
    sampler.set_epoch(point.epoch)
    train_dl = train_dataloader(config, data.train_set, sampler, batch, device,
                                seed=loader_seed(seed, env.rank, point.iteration))
    valid_dl = eval_dataloader(config, data.valid_set, device, persistent=True)  # evaluated again and again
    return Loaders(sampler, train_dl, valid_dl, iters_per_epoch, point, seed)


def make_model(config: Config, env: DistEnv, device: torch.device, resume: Resume,
               logger: logging.Logger) -> nn.Module:
    """Step 4: the model with the resumed weights, in the memory format training uses."""
    model = build_model(config)
    resume.restore_model(model)
    starts = [f'{key} {path}' for key, path in (('model.vision.checkpoint', config.model_vision_checkpoint),
                                                 ('model.checkpoint', config.model_checkpoint)) if path]
    if starts and resume.path is None:
        logger.info(f'starting from the weights of {" and ".join(starts)} (fresh optimiser)')
    logger.info(f'model {type(model).__name__}: {sum(p.numel() for p in model.parameters()):,} parameters')
    if config.training_channels_last:
        if device.type == 'cuda':
            # weights here; inputs and the backbone's output follow the weights (modules use dense_like)
            model = model.to(memory_format=weights_memory_format(device, True))
        else:
            logger.warning('training.channels_last is ignored on the CPU')
    if enable_cudnn_autotune(device):
        logger.info('cudnn.benchmark on (fixed input shapes)')
    if set_tf32(config.training_tf32, device):
        logger.info('TF32 matrix products and convolutions on (training.tf32)')
    if config.training_sync_bn and env.distributed and device.type != 'cuda':
        logger.warning('training.sync_bn needs CUDA (NCCL); plain BatchNorm is used')
    return model


def make_learner(config: Config, env: DistEnv, device: torch.device, model: nn.Module, loaders: Loaders,
                 resume: Resume, logger: logging.Logger) -> tuple[Learner, MixedPrecision | None]:
    """Step 5: the Learner with the resumed optimiser state, and mixed precision when `training.amp` asks."""
    if env.rank > 0:  # every rank its own dropout and ConAug draws; the weights all start as rank 0's
        seed_everything((config.global_seed if config.global_seed is not None else torch.initial_seed()) + env.rank)
    amp = amp_mode(config.training_amp, device)
    check_optimizer_precision(config, amp)
    learn = build_learner(config, model, loaders.train_dl, loaders.valid_dl, device)
    resume.restore_optimizer(learn, logger)
    if not amp:
        if str(config.training_amp).strip().lower() == 'auto':
            logger.info(f'training.amp auto: float32 on {device} (bf16 needs a CUDA GPU that has it)')
        return learn, None
    precision = MixedPrecision(learn, amp, device.type, accumulate=config.training_accumulate)
    learn.callbacks.append(precision)  # learner-wide: evaluation forward passes run under autocast too
    resume.restore_scaler(precision.scaler)
    logger.info(f'mixed precision {amp}' + (' with a gradient scaler' if precision.scaler else ''))
    return learn, precision


def check_memory(config: Config, env: DistEnv, device: torch.device, model: nn.Module,
                 precision: MixedPrecision | None, logger: logging.Logger) -> MemoryEstimate | None:
    """Step 5b: the memory a step will need against the device's free memory (one log line); a one-line
    MemoryEstimateError with advice when it will not fit. Off with `training.memory_check: false`."""
    if not config.training_memory_check:
        return None
    accumulate = config.training_accumulate
    micro = local_batch_size(config.dataset_train_batch_size, env.world_size, accumulate)
    shape = (3, config.dataset_image_height, config.dataset_image_width)
    views = 3 if is_conclr(model) else 1
    amp = precision.mode if precision is not None else None
    estimate = measure(model, shape, views, device, precision.dtype if precision is not None else None, micro, amp)
    bf16 = None
    if amp is None and bf16_supported(device):
        bf16 = measure(model, shape, views, device, torch.bfloat16, micro, 'bf16')
    line = check_fits(estimate, free_memory(device, local_processes()), device, config.dataset_train_batch_size,
                      env.world_size, accumulate, bf16)
    logger.info(line)
    return estimate


def evaluator(config: Config, learn: Learner, data: TrainData, writer: Any,
              stop: StopSignal | None) -> Callable[[int], dict[str, float] | None]:
    """The evaluation IterationCallback runs: loss and metrics on the valid set, TensorBoard pictures; None when
    a stop cut it short."""
    def run_eval(iteration: int) -> dict[str, float] | None:
        result = evaluate(learn, learn.data.valid_dl, data.charset, config.dataset_eval_case_sensitive,
                          should_stop=(lambda: stop.requested) if stop is not None else None)
        if stop is not None and stop.agreed():  # a collective: every rank, every evaluation
            return None  # cut short: neither logged nor compared with the best
        if writer is not None:
            log_eval_images(writer, unwrap(learn.model), data.valid_set, data.charset, iteration)
        return {'loss': result.loss, **{k: v for k, v in result.metrics.summary().items() if k != 'words'}}
    return run_eval


def checkpoint_extras(config: Config, env: DistEnv, loaders: Loaders,
                      precision: MixedPrecision | None) -> Callable[[], dict[str, Any]]:
    """What every checkpoint holds beyond model and optimiser: the run's layout and random states (a collective)."""
    def extra_state() -> dict[str, Any]:
        scaler = precision.scaler.state_dict() if precision is not None and precision.scaler is not None else None
        return {'iters_per_epoch': loaders.iters_per_epoch, 'world_size': env.world_size,
                'accumulate': config.training_accumulate,
                'global_batch': config.dataset_train_batch_size, 'sampler_seed': loaders.sampler_seed,
                'rng': all_gather_objects(capture_rng()), 'scaler': scaler}
    return extra_state


def make_iteration_callback(config: Config, env: DistEnv, *, learn: Learner, loaders: Loaders,
                            resume: Resume, logger: logging.Logger, writer: Any,
                            evaluate: Callable[[int], dict[str, float] | None],
                            extra_state: Callable[[], dict[str, Any]],
                            stop: StopSignal | None) -> IterationCallback:
    """Step 6a: logging, evaluation and checkpoints every so many iterations, from the (resumed) start."""
    point = loaders.point
    return IterationCallback(
        learn, name=config.global_name, workdir=config.workdir, logger=logger, evaluate=evaluate, writer=writer,
        show_iters=config.training_show_iters, eval_iters=config.training_eval_iters,
        save_iters=config.training_save_iters, start_iter=point.iteration, max_iters=config.training_max_iters,
        best_cwr=resume.best_cwr, start_epoch=point.epoch, start_batch=point.skip_batches, is_main=env.is_main,
        world_size=env.world_size, extra_state=extra_state, saved=resume.saved(), stop=stop,
        records=resume.records(), accumulate=config.training_accumulate,
        stop_every=STOP_CHECK_STEPS if env.distributed else 1)


def training_callbacks(config: Config, env: DistEnv, *, learn: Learner, loaders: Loaders, data: TrainData,
                       logger: logging.Logger, writer: Any, iteration_cb: IterationCallback) -> list[Callback]:
    """Step 6b: DDP, the non-finite guard, the lr schedule, clipping, ConAug, the iteration bookkeeping."""
    point, accumulate = loaders.point, config.training_accumulate
    callbacks: list[Callback] = [
        DistributedTrainer(learn, env, loaders.sampler, point.epoch, sync_bn=config.training_sync_bn,
                           find_unused_parameters=config.training_find_unused_parameters),
        NonFiniteGuard(learn, config.training_max_nonfinite, logger, verbose=env.is_main, start_iter=point.iteration,
                       accumulate=accumulate),
        PiecewiseConstantLR(learn, config.optimizer_lr, config.optimizer_scheduler_periods,
                            config.optimizer_scheduler_gamma, point.iteration, loaders.iters_per_epoch,
                            warmup_iters=config.optimizer_scheduler_warmup_iters,
                            warmup_from=config.training_start_iters, epochs=config.training_epochs, logger=logger,
                            accumulate=accumulate)]
    if accumulate > 1:
        callbacks.append(GradientAccumulation(learn, accumulate))
    if config.optimizer_clip_grad:
        callbacks.append(GradientClipping(learn, clip=config.optimizer_clip_grad, accumulate=accumulate))
    if is_conclr(unwrap(learn.model)):
        if accumulate > 1:
            micro = learn.data.train_dl.batch_size
            logger.info(f'training.accumulate {accumulate}: ConAug pairs and contrastive negatives come from one '
                        f'micro-batch of {micro} images per process, so ConCLR\'s objective is not that of one batch '
                        f'of {config.dataset_train_batch_size} (docs/distributed.md)')
        callbacks.append(ConAugPretransform(side=config.conaug_side, charset=data.charset,
                                            test_conaug=config.dataset_test_conaug and env.is_main,
                                            workdir=config.workdir, writer=writer))
    return callbacks + [iteration_cb] + _failure_hook(env.rank)


def nothing_left(config: Config, loaders: Loaders, logger: logging.Logger) -> bool:
    """Whether the (resumed) start is already past the last epoch, phase or `training.max_iters` (logged)."""
    point, max_iters = loaders.point, config.training_max_iters
    end = schedule_end(config.optimizer_scheduler_periods, loaders.iters_per_epoch, config.training_epochs)
    if config.training_epochs - point.epoch > 0 and (max_iters is None or point.iteration < max_iters) and \
            (end is None or point.iteration < end):
        return False
    logger.info(f'nothing left to train at iteration {point.iteration}, epoch {point.epoch} '
                f'(training.epochs {config.training_epochs}, optimizer.scheduler.periods '
                f'{config.optimizer_scheduler_periods}, training.max_iters {max_iters})')
    return True


def fit(config: Config, learn: Learner, loaders: Loaders, callbacks: list[Callback],
        stop: StopSignal | None, oom_line: Callable[[], str] | None = None) -> None:
    """Step 7: fastai's fit over the epochs left (signals deferred to step boundaries); the loader's workers
    end with it. Running out of device memory ends with `oom_line()`'s one line instead of a traceback."""
    try:
        with stop.deferred() if stop is not None else nullcontext():
            learn.fit(config.training_epochs - loaders.point.epoch, lr=config.optimizer_lr, callbacks=callbacks)
    except torch.OutOfMemoryError:
        if oom_line is None:
            raise
        raise MemoryEstimateError(oom_line()) from None
    finally:
        shutdown_workers(loaders.train_dl)  # the Learner's reference cycle would keep them alive after train()
        shutdown_workers(loaders.valid_dl)


def train(config: Config, device: torch.device, env: DistEnv | None = None,
          stop: StopSignal | None = None) -> IterationCallback:
    """Train on dataset.train.roots, evaluating on the concatenated dataset.test.roots.

    In a distributed run (torchrun) every process calls it with its own `env`; `dataset.train.batch_size` is the
    global batch, split evenly over the processes. `training.resume` continues an interrupted run. With `stop`
    (installed signal handlers), SIGINT / SIGTERM end training after the current step with one resumable
    checkpoint and raise Interrupted.
    """
    env = env or current_env(device)
    validate_config(config)  # a config that cannot make a run is an error before any data opens
    amp_mode(config.training_amp, device)  # a bad value is an error before any data opens
    seed_everything(config.global_seed)
    data = open_data(config)
    with own_workdir(config, env) as lock:
        return _train(config, device, env, stop, data, lock)


@contextmanager
def own_workdir(config: Config, env: DistEnv) -> Iterator[RunLock | None]:
    """Hold the work directory's lock while the block runs (rank 0; every rank learns whether it could): a live
    run there, or one writing the folder `training.resume` names, is a RunLockError on every rank."""
    lock, problem = None, None
    if env.is_main:
        try:
            check_resume_source(config.training_resume, config.workdir)
            lock = RunLock.acquire(config.workdir)
        except RunLockError as e:
            problem = str(e)
        except OSError as e:  # said on every rank: the others would otherwise wait for rank 0 in the broadcast
            problem = f'work directory {config.workdir}: cannot create its lock file: {e.strerror or e}'
    problem = broadcast_object(problem)
    if problem is not None:
        raise RunLockError(problem)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def _train(config: Config, device: torch.device, env: DistEnv, stop: StopSignal | None, data: TrainData,
           lock: RunLock | None) -> IterationCallback:
    """train() once the data is open and the work directory is this run's."""
    logger = start_log(config, env, device, data)
    if lock is not None and lock.taken_over:
        logger.warning(lock.taken_over)
    resume = Resume.read(config)
    loaders = make_loaders(config, env, device, data, resume, logger)
    model = make_model(config, env, device, resume, logger)
    learn, precision = make_learner(config, env, device, model, loaders, resume, logger)
    estimate = check_memory(config, env, device, model, precision, logger)
    from tensorboardX import SummaryWriter
    writer = SummaryWriter(str(config.workdir)) if env.is_main else None
    try:
        iteration_cb = make_iteration_callback(
            config, env, learn=learn, loaders=loaders, resume=resume, logger=logger, writer=writer,
            evaluate=evaluator(config, learn, data, writer, stop),
            extra_state=checkpoint_extras(config, env, loaders, precision), stop=stop)
        if nothing_left(config, loaders, logger):
            return iteration_cb
        callbacks = training_callbacks(config, env, learn=learn, loaders=loaders, data=data, logger=logger,
                                       writer=writer, iteration_cb=iteration_cb)
        resume.restore_rng(env)

        def oom_line() -> str:
            return out_of_memory_line(estimate, device, config.dataset_train_batch_size, env.world_size,
                                      config.training_accumulate, precision.mode if precision else None,
                                      iteration_cb.iteration + 1)
        fit(config, learn, loaders, callbacks, stop, oom_line)
    finally:
        if writer is not None:
            writer.close()
    return finish(env, device, data, learn, iteration_cb, stop, logger)


def finish(env: DistEnv, device: torch.device, data: TrainData, learn: Learner, iteration_cb: IterationCallback,
           stop: StopSignal | None, logger: logging.Logger) -> IterationCallback:
    """Step 8: Interrupted after a signal; else the closing log line (and the test hook's final-state dump)."""
    if stop is not None and stop.agreed():
        raise Interrupted(stop.signum, f' at iteration {iteration_cb.iteration}',
                          checkpoint=iteration_cb.saved[-1] if iteration_cb.saved else None)
    logger.info(f'training done at iter {iteration_cb.iteration}; best cwr {iteration_cb.best_cwr:.4f}; '
                + replaced_summary(data.train_set, device))
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
