"""Summarise training runs from their TensorBoard events: iterations to reach given word accuracies.

    python -m experiments.recipe_sweep.table experiments/recipe_sweep/log/*/ \
        [--thresholds 0.1 0.5] [--step_seconds NAME=S ...]

For every run folder it prints the first evaluated iteration whose eval/cwr reaches each threshold (">N" when
the run's last evaluation at N did not), and the best cwr with its iteration; `--step_seconds` turns iterations
into minutes with a per-step time measured separately (the runs' own wall-clock is not used: runs of a sweep
share the machine).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def eval_curve(run_dir: Path, tag: str = 'eval/cwr') -> list[tuple[int, float]]:
    """(iteration, value) of `tag` in a run folder's event files, by iteration (a resumed run's repeats: last)."""
    points: dict[int, float] = {}
    for events in sorted(run_dir.glob('events.out.tfevents.*')):
        accumulator = EventAccumulator(str(events), size_guidance={'scalars': 0}, purge_orphaned_data=False)
        accumulator.Reload()
        if tag in accumulator.Tags().get('scalars', []):
            points.update({e.step: e.value for e in accumulator.Scalars(tag)})
    return sorted(points.items())


def first_reaching(curve: list[tuple[int, float]], threshold: float) -> int | None:
    """The first iteration whose value is at least `threshold`, or None."""
    return next((step for step, value in curve if value >= threshold), None)


def summarise(run_dir: Path, thresholds: list[float], step_seconds: float | None) -> str:
    """One markdown table row for a run folder."""
    curve = eval_curve(run_dir)
    if not curve:
        return f'| {run_dir.name} | no evaluation yet |'
    last = curve[-1][0]
    cells = []
    for t in thresholds:
        step = first_reaching(curve, t)
        minutes = f' ({step * step_seconds / 60:.1f} min)' if step is not None and step_seconds else ''
        cells.append(f'{step}{minutes}' if step is not None else f'>{last}')
    best_step, best = max(curve, key=lambda p: p[1])
    return f'| {run_dir.name} | ' + ' | '.join(cells) + f' | {100 * best:.1f} % at {best_step} | {last} |'


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', type=Path, help='run folders (work directories)')
    parser.add_argument('--thresholds', nargs='+', type=float, default=[0.1, 0.5])
    parser.add_argument('--step_seconds', nargs='*', default=[], metavar='NAME=S',
                        help='seconds per training step of a run, measured on a quiet machine')
    args = parser.parse_args(argv)
    seconds = {}
    for item in args.step_seconds:
        name, _, value = item.partition('=')
        seconds[name] = float(value)
    header = ' | '.join(f'iterations to {100 * t:g} % cwr' for t in args.thresholds)
    print(f'| run | {header} | best cwr | last evaluated |')
    print('|---' * (len(args.thresholds) + 3) + '|')
    for run in args.runs:
        if run.is_dir():
            print(summarise(run, args.thresholds, seconds.get(run.name)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
