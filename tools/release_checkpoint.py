"""Turn a training checkpoint into a small release file: the model weights only (no optimiser state, no RNG state),
written atomically, with its size and sha256 printed for the README.

    python -m tools.release_checkpoint --checkpoint workdir/x/x_2_6000.pth --output checkpoints/x.pth

The release keeps `iteration` and `best_cwr` for the record; it loads with `weights_only=True` like any checkpoint
(`--checkpoint` of main.py and demo.py, or `model.checkpoint`). `--finished` marks the release of a run that ran to its
end (for example its best weights, kept as the run's milestone): tools/run_resumable.sh then treats the run as done
instead of continuing it from the milestone's iteration.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from runtime.checkpoint import CheckpointError, file_sha256, load_checkpoint, model_state, write_atomically

KEPT = ('iteration', 'best_cwr', 'finished')


def release_state(state: dict, finished: bool = False) -> dict:
    """The release contents of a loaded checkpoint: {'model': weights, 'opt': None}, the keys in KEPT, `finished`."""
    kept = {k: state[k] for k in KEPT if k in state}
    if finished:
        kept['finished'] = True
    return {'model': model_state(state), 'opt': None, **kept}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', required=True, help='training checkpoint to release')
    parser.add_argument('--output', required=True, help='release file to write')
    parser.add_argument('--finished', action='store_true', help='the run ran to its end: nothing to continue')
    args = parser.parse_args(argv)
    try:
        state = release_state(load_checkpoint(args.checkpoint), finished=args.finished)
    except CheckpointError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    path = write_atomically(args.output, state)
    print(f'{path}\t{path.stat().st_size / 1e6:.2f} MB\tsha256 {file_sha256(path)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
