"""Write the config that continues a training run from a weights-only milestone with a fresh optimiser.

    python -m tools.continue_config --config C.yaml --milestone M.pth --output C.continue.yaml

The output is C.yaml with `model.checkpoint` set to the milestone, `training.start_iters` to the milestone's
`iteration` (so the lr schedule, logging and the end of training keep their places) and a short lr warm-up from
there (`optimizer.scheduler.warmup_iters`, counted from `training.start_iters`). A milestone released with
`tools.release_checkpoint --finished` has nothing to continue: no config is written and the exit status is 3
(FINISHED), which tools/run_resumable.sh reads as a done run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import yaml

from configuration import ConfigError, load_yaml
from runtime.checkpoint import CheckpointError, load_checkpoint

FINISHED = 3  # exit status: the milestone's run ran to its end


def continue_config(config: dict, milestone: str, iteration: int, warmup_iters: int) -> dict:
    """`config` (a parsed YAML file) set to start from `milestone`'s weights at `iteration`."""
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in config.items()}
    out.setdefault('model', {})['checkpoint'] = milestone
    out.setdefault('training', {})['start_iters'] = iteration
    optimizer = out.setdefault('optimizer', {})
    optimizer['scheduler'] = {**optimizer.get('scheduler', {}), 'warmup_iters': warmup_iters}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', required=True, help='the run\'s config')
    parser.add_argument('--milestone', required=True, help='weights-only checkpoint with an `iteration` key')
    parser.add_argument('--output', required=True, help='config file to write')
    parser.add_argument('--warmup_iters', type=int, default=200)
    args = parser.parse_args(argv)
    try:
        state = load_checkpoint(args.milestone)
        if 'iteration' not in state:
            raise CheckpointError(f'{args.milestone} holds no iteration (release it with tools.release_checkpoint)')
        if state.get('finished'):
            print(f'{args.milestone}: its run finished (iteration {state["iteration"]}), nothing to continue')
            return FINISHED
        config = continue_config(load_yaml(args.config), args.milestone, int(state['iteration']), args.warmup_iters)
    except (CheckpointError, ConfigError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    with open(args.output, 'w', encoding='utf-8') as f:
        f.write(f'# {args.config} continued from {args.milestone} (tools/continue_config.py)\n')
        yaml.safe_dump(config, f, sort_keys=False)
    print(f'{args.output}: from {args.milestone} at iteration {state["iteration"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
