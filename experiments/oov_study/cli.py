"""Command line of the out-of-vocabulary study, `python -m experiments.oov_study` (README "Does ConCLR help?").

    python -m experiments.oov_study --preset experiments/oov_study/configs/cpu.yaml \
        --output experiments/oov_study/log/cpu

Run it again with the same preset and output to continue an interrupted study: finished runs are not trained
again. A folder made by another preset is refused. `--hours` bounds one invocation (a time-limited job): runs that
would not end in time are left for the next.
"""

from __future__ import annotations

from runtime.quiet_start import ignore_stop_signals_at_exit

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch
import yaml

from configuration import ConfigError
from dataset import DatasetError
from experiments.oov_study.preset import ExperimentError, load_preset
from experiments.oov_study.study import run_study
from runtime.checkpoint import CheckpointError
from runtime.stop_signal import Interrupted, StopSignal, signal_name


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(prog='python -m experiments.oov_study', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--preset', required=True, help='study preset (experiments/oov_study/configs/*.yaml)')
    parser.add_argument('--output', required=True, help='folder for data, runs and the report; resumable')
    parser.add_argument('--iters', type=int, default=None, help='override config.training.max_iters (steps of the '
                        'same-steps runs), for a short check; part of the preset the folder belongs to')
    parser.add_argument('--no_benchmarks', action='store_true', help='skip the real benchmark LMDBs')
    parser.add_argument('--cpu', action='store_true', help='run on the CPU even when a GPU is present')
    parser.add_argument('--hours', type=float, default=None, help='time limit: start only the runs expected to end '
                        'within this many hours (going by the median finished run of the same arm or model; a run '
                        'with no such estimate only as the first); the others wait for the next invocation '
                        '(time-limited jobs)')
    parser.add_argument('--retrain', nargs='+', default=[], metavar='RUN_ID', help='train these finished runs '
                        'again, each as <run id>-r1: the old run stays in the log, counted in no table (for a run '
                        'that recorded too little, e.g. no test-set digests); remembered in the folder\'s '
                        'retrain.json')
    parser.add_argument('--report_only', action='store_true', help='train and render nothing: rewrite results.json '
                        'and results.md from the finished runs of --output')
    return parser.parse_args(argv)


def interrupt_line(e: Interrupted) -> str:
    """The one line a stopped study prints: what stopped it, what was saved, and that the same command continues."""
    saved = f'saved {e.checkpoint}' if e.checkpoint is not None else 'nothing of the current run was saved'
    return f'{signal_name(e.signum)} stopped the study{e}; {saved}; run the same command again to continue'


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends with one `error:` line on stderr and exit status 2, SIGINT / SIGTERM with one
    line and 130 / 143 (a training run saves a resumable checkpoint after its current step first)."""
    args = parse_args(argv)
    stop = StopSignal()
    try:
        preset = load_preset(args.preset, args.iters)
        if args.no_benchmarks:
            preset.experiment['benchmarks'] = False
        device = torch.device('cuda' if torch.cuda.is_available() and not args.cpu else 'cpu')
        if args.hours is not None and args.hours <= 0:
            raise ExperimentError(f'--hours must be positive, got {args.hours}')
        with stop.installed():
            run_study(preset, Path(args.output).resolve(), device, args.hours, args.report_only, stop, args.retrain)
    except Interrupted as e:
        ignore_stop_signals_at_exit()  # the command is ending and says so once: more signals change nothing
        print(interrupt_line(e), file=sys.stderr)
        return e.exit_status
    except (ExperimentError, ConfigError, DatasetError, CheckpointError, FileNotFoundError, yaml.YAMLError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0

