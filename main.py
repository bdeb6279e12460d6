"""Train or evaluate ABINet-Vision / ConCLR-Vision with fastai 1.0.60 (ABINet's command line).

`python main.py --config ...` runs one process per visible GPU (one on the CPU), or `training.processes`: with
more than one it starts them itself through torch's elastic launcher (runtime/launcher.py), so they run exactly as under
`torchrun --nproc_per_node=N main.py --config ...`. Several machines: torchrun with --nnodes and a rendezvous; see
runtime/distributed.py.
"""

from __future__ import annotations

from runtime.quiet_start import ignore_stop_signals_at_exit  # first: Ctrl-C during the slow imports ends in one line

import runtime.fastai_compat  # noqa: F401  (must come before fastai)

import argparse
import os
import sys
from pathlib import Path

import torch

from callbacks.nonfinite import NonFiniteLossError
from configuration import Config, ConfigError
from dataset import DatasetError
from inference.onnx_backend import BACKENDS, QUANTIZE, OnnxBackendError
from runtime.checkpoint import CheckpointError
from runtime.distributed import (
    cleanup_distributed,
    is_distributed,
    launched_by_torchrun,
    process_rank,
    setup_distributed,
)
from runtime.errors import one_line_error
from runtime.launcher import launch, process_count, report_error
from runtime.stop_signal import Interrupted, StopSignal, resume_command, signal_name
from training.builders import build_learner, build_model, is_conclr
from training.testing import checkpoint_to_test, test
from training.train import train
from training.validate import validate_config
from utils import check_writable, tune_malloc

# ABINet's names, for code that drives training from Python (`import main; main.train(config, device)`).
__all__ = ['build_learner', 'build_model', 'is_conclr', 'main', 'parse_args', 'test', 'train']

MODEL_EVALS = ('vision',)
MAIN_SCRIPT = Path(__file__).resolve()


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
    parser.add_argument('--backend', type=str, default='pytorch', choices=BACKENDS,
                        help='test phase: what runs the model, PyTorch or ONNX Runtime on the CPU (exported once per '
                        'checkpoint, cached beside it)')
    parser.add_argument('--quantize', type=str, default=None, choices=QUANTIZE,
                        help='test phase with --backend onnxruntime: int8 matrix products (dynamic quantisation)')
    parser.add_argument('--model_strict', action='store_false',
                        help='as in ABINet: passing this flag turns strict checkpoint loading OFF')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=None,
                        help='set by torch.distributed.launch: taken as LOCAL_RANK (an error when it contradicts '
                        'that variable)')
    return parser.parse_args(argv)


def apply_local_rank(local_rank: int | None) -> None:
    """--local_rank of torch.distributed.launch as LOCAL_RANK (ConfigError when it contradicts the variable)."""
    if local_rank is None:
        return
    given = os.environ.get('LOCAL_RANK')
    if given is not None and given != str(local_rank):
        raise ConfigError(f'--local_rank {local_rank} contradicts the environment\'s LOCAL_RANK={given}')
    os.environ['LOCAL_RANK'] = str(local_rank)


def build_config(args: argparse.Namespace) -> Config:
    """The config file with the command-line overrides applied."""
    config = Config(args.config)
    if args.phase is not None:
        config.global_phase = args.phase
    if args.name is not None:
        config.global_name = args.name
    if args.checkpoint is not None:
        config.update({'model_checkpoint': args.checkpoint}, source='--checkpoint')
    if args.resume is not None:
        config.training_resume = args.resume
    if args.test_root is not None:
        config.dataset_test_roots = list(args.test_root)
    if not args.model_strict:
        config.model_strict = False
    if args.debug:
        config.dataset_num_workers = 0
        config.training_show_iters = 1
    if args.quantize and args.backend != 'onnxruntime':
        raise ConfigError(f'--quantize {args.quantize} needs --backend onnxruntime')
    if args.backend != 'pytorch' and config.global_phase != 'test':
        raise ConfigError(f'--backend {args.backend} is for the test phase (--phase test); training runs PyTorch')
    if args.model_eval not in MODEL_EVALS:
        raise ConfigError(f'--model_eval {args.model_eval!r}: only {MODEL_EVALS} exist here (this project holds '
                          'the ABINet vision model, not the language or alignment models)')
    return config


def processes_to_start(config: Config) -> tuple[int, str]:
    """How many worker processes a plain `python main.py` starts (1: none, it runs itself), and why.

    Under torchrun it is always 1: torchrun started the workers and `training.processes` is ignored."""
    if launched_by_torchrun():
        return 1, ''
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    share = str(config.global_dist_backend).lower() == 'gloo'
    count = process_count(config.training_processes, gpus, share_gpus=share)
    why = (f'training.processes {config.training_processes}' if config.training_processes is not None
           else f'one per visible GPU: {gpus}')
    return count, why


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
        apply_local_rank(args.local_rank)
        config = build_config(args)
        validate_config(config)  # before any data opens or any file is written
        check_writable(config.workdir)
        processes, why = processes_to_start(config)
        if processes > 1:  # the launching process only waits: each worker handles SIGINT / SIGTERM itself
            if config.global_phase == 'test':
                checkpoint_to_test(config)  # a missing best checkpoint is an error before any worker starts
            return launch(processes, MAIN_SCRIPT, sys.argv[1:] if argv is None else list(argv), why)
        with stop.installed():
            if config.global_malloc_tune:
                tune_malloc()
            env = setup_distributed(timeout_s=config.global_dist_timeout, backend=config.global_dist_backend)
            if config.global_phase == 'train':
                train(config, env.device, env, stop=stop)
            else:
                test(config, env.device, image_only=args.image_only, env=env, backend=args.backend,
                     quantize=args.quantize)
        failed = False
    except Interrupted as e:
        ignore_stop_signals_at_exit()  # the command is ending and says so once: more signals change nothing
        failed = False  # every rank agreed to stop at the same step: the group ends normally
        if (env.rank if env is not None else process_rank()) == 0:
            print(interrupt_line(e, sys.argv if argv is None else [__file__, *argv]), file=sys.stderr)
        return e.exit_status
    except (ConfigError, DatasetError, CheckpointError, FileNotFoundError, NonFiniteLossError, OnnxBackendError) as e:
        report_error(one_line_error(e), env.rank if env is not None else process_rank())
        return 2
    finally:
        if is_distributed():
            cleanup_distributed(failed=failed)
    return 0


if __name__ == '__main__':
    status = main()
    ignore_stop_signals_at_exit()  # a late Ctrl-C must not print a traceback from an atexit callback
    sys.exit(status)
