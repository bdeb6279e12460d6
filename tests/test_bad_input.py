"""The bad-input table: every failure a user can cause, run as a user would (main.py, demo.py, the tools).

Every row builds its own inputs, runs the script in a fresh process (tests/cli_runner.py) and asserts the exit
status, the lines on stderr (one line naming the file, key or value for an error), no Python traceback anywhere,
and that nothing was lost: every file that existed before the run still holds its bytes (logs may only grow), or
was moved with its bytes intact. docs/reference.md, "Reliability", lists the same rows.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import lmdb
import numpy as np
import pytest
import torch
import yaml

import main
from support.checkpoint import load_checkpoint
from tests.cli_runner import Finished, Run, run
from tests.helpers import TINY_VISION, free_port, render_lmdb
from tools.create_lmdb_dataset import write_lmdb
from tools.render_synthetic import find_fonts, render_word
from utils import REPO_ROOT, Config

GROWING_LOGS = ('train.txt', 'test.txt')  # append-only: their earlier content must stay a prefix


@dataclass
class World:
    """Inputs shared by the rows (never written by them): LMDBs, a trained run and its config tree."""

    folder: Path
    train: Path
    test: Path
    tree: dict
    run: Path  # work directory of a 4-iteration run: best-run.pth, run_0_2.pth, run_0_4.pth, train.txt


@pytest.fixture(scope='module')
def world(tmp_path_factory) -> World:
    folder = tmp_path_factory.mktemp('world')
    train, test = render_lmdb(folder / 'train', 48, seed=1), render_lmdb(folder / 'test', 8, seed=2)
    tree = {'global': {'name': 'run', 'workdir': str(folder / 'workdir'), 'seed': 0},
            'dataset': {'train': {'roots': [str(train)], 'batch_size': 8},
                        'test': {'roots': [str(test)], 'batch_size': 4},
                        'num_workers': 0, 'data_aug': False, 'max_length': 12},
            'training': {'epochs': 100, 'max_iters': 4, 'show_iters': 1, 'eval_iters': 2, 'save_iters': 2},
            'optimizer': {'lr': 0.003},
            'model': {'name': 'modules.model_vision.BaseVision', 'vision': dict(TINY_VISION)}}
    path = folder / 'world.yaml'
    path.write_text(yaml.safe_dump(tree))
    main.train(Config(path), torch.device('cpu'))
    return World(folder, train, test, tree, folder / 'workdir' / 'run')


@dataclass
class Row:
    """One case: the command line and what must come out of it."""

    argv: list[str]
    says: list[str] = field(default_factory=list)  # each in the single stderr line
    status: int = 2
    script: str = 'main.py'
    lines: int = 1  # lines on stderr
    check: Callable[[Finished], None] | None = None  # more assertions on the outcome
    interrupt: tuple[int, Callable[[], bool]] | None = None  # send this signal to the group once the test holds


class Case:
    """A row's own folder, with helpers to build its inputs there."""

    def __init__(self, folder: Path, world: World):
        self.folder, self.world = folder, world
        self.workdir = folder / 'workdir'

    def config(self, edit: Callable[[dict], None] | None = None, text: Callable[[str], str] | None = None,
               name: str = 'c.yaml') -> Path:
        """The world's config with the work directory here, edited as a tree and/or as YAML text."""
        tree = yaml.safe_load(yaml.safe_dump(self.world.tree))
        tree['global']['workdir'] = str(self.workdir)
        if edit is not None:
            edit(tree)
        content = yaml.safe_dump(tree)
        path = self.folder / name
        path.write_text(text(content) if text is not None else content)
        return path

    def trained_run(self) -> Path:
        """A copy of the world's trained work directory as this row's `workdir/run`."""
        shutil.copytree(self.world.run, self.workdir / 'run')
        return self.workdir / 'run'

    def checkpoint(self) -> Path:
        return self.trained_run() / 'run_0_4.pth'

    def copy_lmdb(self, name: str = 'test') -> Path:
        target = self.folder / name
        shutil.copytree(self.world.test, target)
        return target


def _set(tree: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split('.')
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[last] = value


def _config_value_row(dotted: str, value: object) -> Callable[[Case], Row]:
    def build(case: Case) -> Row:
        path = case.config(lambda tree: _set(tree, dotted, value))
        return Row(['--config', path], [str(path), dotted.replace('.', '_'), repr(value)],
                   check=lambda done: _nothing_created(case))
    return build


def _nothing_created(case: Case) -> None:
    assert not case.workdir.exists(), 'a failed start left a work directory behind'


# ---- rows: Ctrl-C and SIGTERM during training ----

def _log_has(path: Path, text: str) -> Callable[[], bool]:
    return lambda: path.exists() and text in path.read_text()


def _stop_row(case: Case, signum: int, resume_after: bool) -> Row:
    """Resume the trained run with a loader worker, stop it by `signum` to the whole group after iteration 6."""
    run_dir = case.trained_run()
    best = (run_dir / 'best-run.pth').read_bytes()
    path = case.config(lambda tree: (tree['dataset'].update(num_workers=1),
                                     tree['training'].update(max_iters=1000, eval_iters=1000, save_iters=1000)))
    log = run_dir / 'train.txt'
    marker = 'iter 6: loss'

    def check(done: Finished) -> None:
        name = signal.Signals(signum).name
        line = done.stderr.strip()
        saved = Path(line.split('; saved ')[1].split(';')[0])
        state = load_checkpoint(saved)
        assert saved.parent == run_dir and saved.name == f'run_{state["epoch"]}_{state["iteration"]}.pth'
        assert state['iteration'] >= 6 and line.startswith(f'{name} stopped the run at iteration {state["iteration"]}')
        assert saved.stat().st_mode & 0o777 == 0o666 & ~_umask()  # the process umask, like every other output
        after = log.read_text().split(marker, 1)[1]
        assert ' eval ' not in after and 'best cwr' not in after  # no evaluation after the signal
        assert f'stopped by {name} at iter {state["iteration"]}' in after
        assert (run_dir / 'best-run.pth').read_bytes() == best
        if resume_after:
            _resume_as_printed(case, path, line, saved, state['iteration'])

    return Row(['--config', path, '--resume', run_dir], ['--resume', str(run_dir)], status=128 + signum,
               check=check, interrupt=(signum, _log_has(log, marker)))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _resume_as_printed(case: Case, config: Path, line: str, saved: Path, iteration: int) -> None:
    """Run the printed command (two more iterations): it continues after `iteration`."""
    command = shlex.split(line.split('continue with: ')[1])
    args = command[command.index(next(a for a in command if a.endswith('main.py'))) + 1:]
    config.write_text(config.read_text().replace('max_iters: 1000', f'max_iters: {iteration + 2}'))
    done = run('main.py', args, case.folder / 'resumed')
    assert done.status == 0 and 'Traceback' not in done.stderr, done.stderr
    assert f'resuming from {saved} at iteration {iteration}: ' in done.stdout
    assert f'training done at iter {iteration + 2}' in done.stdout


def row_sigint_during_training(case: Case) -> Row:
    return _stop_row(case, signal.SIGINT, resume_after=True)


def row_sigterm_during_training(case: Case) -> Row:
    return _stop_row(case, signal.SIGTERM, resume_after=False)


SAVE_THEN_HANG = '''
import signal, sys
from pathlib import Path
import torch
import support.checkpoint as checkpoint

def half_written(obj, f, *args, **kwargs):
    f.write(b'PK\\x03\\x04 the first bytes of a checkpoint')
    f.flush()
    Path(sys.argv[2]).touch()
    signal.pause()

torch.save = half_written
checkpoint.save_checkpoint(sys.argv[1], torch.nn.Linear(2, 2))
'''


def row_sigkill_during_a_save(case: Case) -> Row:
    target = case.checkpoint()
    script = case.folder / 'save_then_hang.py'
    script.write_text(SAVE_THEN_HANG.format(repo=str(REPO_ROOT)))
    ready = case.folder / 'ready'

    def check(done: Finished) -> None:
        assert load_checkpoint(target)['iteration'] == 4  # the earlier checkpoint, whole

    return Row([target, ready], status=-signal.SIGKILL, script=str(script), lines=0, check=check,
               interrupt=(signal.SIGKILL, ready.exists))


# ---- rows: data ----

def _bad_image_lmdb(case: Case) -> Path:
    """A test LMDB whose third image is not an image."""
    fonts, rng = find_fonts()[:2], np.random.default_rng(0)
    samples = []
    for i, word in enumerate(['cat', 'dog', 'tree', 'zoo', 'quiz', 'light']):
        ok, png = cv2.imencode('.png', render_word(word, fonts[i % len(fonts)], rng))
        samples.append((b'not an image' if i == 2 else png.tobytes(), word))
    write_lmdb(case.folder / 'bad_image', samples, check_images=False)
    return case.folder / 'bad_image'


def row_corrupt_test_image_with_workers(case: Case) -> Row:
    root = _bad_image_lmdb(case)
    path = case.config(lambda tree: tree['dataset'].update(num_workers=1))
    return Row(['--config', path, '--phase', 'test', '--image_only', '--checkpoint', case.checkpoint(),
                '--test_root', root], [str(root), 'image 3', 'cannot be decoded'])


def row_corrupt_lmdb_pages_with_workers(case: Case) -> Row:
    root = case.copy_lmdb()
    data = bytearray((root / 'data.mdb').read_bytes())
    page = 4096
    data[3 * page:4 * page] = b'\xff' * page  # an image page: labels still read, images do not
    (root / 'data.mdb').write_bytes(bytes(data))
    path = case.config(lambda tree: tree['dataset'].update(num_workers=1))
    return Row(['--config', path, '--phase', 'test', '--image_only', '--checkpoint', case.checkpoint(),
                '--test_root', root], [f'corrupt LMDB {root}', 'MDB_CORRUPTED'])


def row_missing_lmdb(case: Case) -> Row:
    missing = case.folder / 'no_such_lmdb'
    path = case.config(lambda tree: tree['dataset']['train'].update(roots=[str(missing)]))
    return Row(['--config', path], [f'LMDB not found: {missing}'], check=lambda done: _nothing_created(case))


def row_truncated_lmdb(case: Case) -> Row:
    root = case.copy_lmdb()
    size = (root / 'data.mdb').stat().st_size
    os.truncate(root / 'data.mdb', size // 2)
    path = case.config()
    return Row(['--config', path, '--phase', 'test', '--checkpoint', case.checkpoint(), '--test_root', root],
               [f'truncated LMDB {root}'])


def row_read_only_data_roots(case: Case) -> Row:
    roots = [case.copy_lmdb('train_ro'), case.copy_lmdb('test_ro')]
    path = case.config(lambda tree: (tree['dataset']['train'].update(roots=[str(roots[0])]),
                                     tree['dataset']['test'].update(roots=[str(roots[1])]),
                                     tree['training'].update(max_iters=2)))
    for root in roots:
        (root / 'data.mdb').chmod(0o444)
        root.chmod(0o555)

    def check(done: Finished) -> None:
        assert 'training done at iter 2' in done.stdout
        assert sorted(p.name for p in roots[0].iterdir()) == ['data.mdb']  # no lock file, nothing written there
        for root in roots:
            root.chmod(0o755)

    return Row(['--config', path], status=0, lines=0, check=check)


def row_label_longer_than_max_length(case: Case) -> Row:
    root = render_lmdb(case.folder / 'long', 6, seed=4, words=['cat', 'abcdefghijklmnopq'])  # 17 > max_length 12
    path = case.config()

    def check(done: Finished) -> None:
        csv = (case.workdir / 'run' / 'test_results.csv').read_text().splitlines()
        assert csv[1].split(',')[:3] == ['long', '3', '3']  # 3 usable samples, 3 left out and counted

    return Row(['--config', path, '--phase', 'test', '--image_only', '--checkpoint', case.checkpoint(),
                '--test_root', root], status=0, lines=0, check=check)


# ---- rows: configuration ----

row_float_batch_size = _config_value_row('dataset.test.batch_size', 64.0)
row_zero_batch_size = _config_value_row('dataset.train.batch_size', 0)
row_negative_batch_size = _config_value_row('dataset.train.batch_size', -4)
row_fractional_batch_size = _config_value_row('dataset.train.batch_size', 2.5)
row_negative_workers = _config_value_row('dataset.num_workers', -1)
row_zero_lr = _config_value_row('optimizer.lr', 0)
row_zero_period = _config_value_row('optimizer.scheduler.periods', [0])
row_zero_accumulate = _config_value_row('training.accumulate', 0)
row_workers_in_words = _config_value_row('dataset.num_workers', 'four')


def row_accumulate_not_dividing_the_batch(case: Case) -> Row:
    path = case.config(lambda tree: tree['training'].update(accumulate=3))
    batch = case.world.tree['dataset']['train']['batch_size']
    return Row(['--config', path], [f'dataset.train.batch_size {batch} (the global batch) is not divisible by the 1 '
                                    'processes x training.accumulate 3'])


def row_unknown_dist_backend(case: Case) -> Row:
    path = case.config(lambda tree: tree['global'].update(dist_backend='mpi'))
    return Row(['--config', path], ['global.dist_backend', "'mpi'", 'nccl, gloo or null'])


def row_fp16_with_fused_adam(case: Case) -> Row:
    path = case.config(lambda tree: (tree['training'].update(amp='fp16'),
                                     tree.setdefault('optimizer', {}).setdefault('args', {}).update(fused=True)))
    return Row(['--config', path], ['optimizer.args.fused true with training.amp fp16', 'training.amp bf16'])


def row_unknown_key(case: Case) -> Row:
    path = case.config(lambda tree: tree['training'].update(trainig_epochs=3))
    return Row(['--config', path], [str(path), "'training_trainig_epochs'", "'training_epochs'"])


def row_yaml_syntax_error(case: Case) -> Row:
    path = case.config(text=lambda content: content.replace('max_length: 12', 'max_length: [12'))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if 'max_length' in text)
    return Row(['--config', path], [f'{path}:', f'starts at {line}:'], check=lambda done: _nothing_created(case))


def row_lr_written_3e_4(case: Case) -> Row:
    path = case.config(lambda tree: tree['training'].update(max_iters=2),
                       text=lambda content: content.replace('lr: 0.003', 'lr: 3e-4'))
    assert 'lr: 3e-4' in path.read_text()

    def check(done: Finished) -> None:
        assert 'lr = 3.00e-04' in done.stdout and 'training done at iter 2' in done.stdout

    return Row(['--config', path], status=0, lines=0, check=check)


def row_unwritable_work_directory(case: Case) -> Row:
    if os.geteuid() == 0:  # root writes through permission bits; sysfs refuses new files even to root
        parent = Path('/sys')
    else:
        parent = case.folder / 'read_only'
        parent.mkdir()
        parent.chmod(0o555)
    path = case.config(lambda tree: tree['global'].update(workdir=str(parent / 'workdir')))
    return Row(['--config', path], [f'work directory {parent / "workdir" / "run"} is not writable'],
               check=lambda done: None if os.geteuid() == 0 else parent.chmod(0o755))


# ---- rows: checkpoints ----

def _test_with(case: Case, checkpoint: Path, *extra: str, config: Path | None = None) -> list:
    return ['--config', config or case.config(), '--phase', 'test', '--image_only', '--checkpoint', checkpoint,
            *extra]


def row_text_file_as_checkpoint(case: Case) -> Row:
    notes = case.folder / 'notes.txt'
    notes.write_text('best run: iteration 4\n')
    return Row(_test_with(case, notes), [f'{notes} is a text file', "'best run: iteration 4\\n'"])


def row_truncated_checkpoint(case: Case) -> Row:
    checkpoint = case.checkpoint()
    half = case.folder / 'half.pth'
    half.write_bytes(checkpoint.read_bytes()[:checkpoint.stat().st_size // 2])
    return Row(_test_with(case, half), [str(half), 'truncated or damaged'])


def row_code_executing_checkpoint(case: Case) -> Row:
    marker = case.folder / 'code_ran'
    evil = case.folder / 'evil.pth'
    torch.save({'model': load_checkpoint(case.checkpoint())['model'], 'x': _Planted(marker)}, evil)
    return Row(_test_with(case, evil), [str(evil), 'refused', 'open'], check=lambda done: not marker.exists())


class _Planted:
    """Unpickling it would call open(marker, 'w')."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, 'w')


def row_checkpoint_of_another_model_size(case: Case) -> Row:
    checkpoint = case.checkpoint()
    wider = case.config(lambda tree: tree['model']['vision'].update(
        d_model=32, d_inner=64, resnet_widths=[4, 8, 8, 16, 32]), name='wider.yaml')
    saved = load_checkpoint(checkpoint)['model']
    own = main.build_model(Config(wider)).state_dict()
    fitting = sum(k in own and own[k].shape == v.shape for k, v in saved.items())
    mismatched = sum(k in own and own[k].shape != v.shape for k, v in saved.items())
    return Row(_test_with(case, checkpoint, config=wider),
               [str(checkpoint), f'({fitting} of its {len(saved)} tensors fit)', f'shape mismatch {mismatched} (',
                'another model size: use the config it was trained with'])


def row_nothing_fits_with_strict_off(case: Case) -> Row:
    foreign = case.folder / 'foreign.pth'
    torch.save({'model': {'encoder.weight': torch.zeros(3, 3)}}, foreign)
    return Row(_test_with(case, foreign, '--model_strict'), [str(foreign), '(0 of its 1 tensors fit)'])


def row_partial_fit_with_strict_off(case: Case) -> Row:
    state = load_checkpoint(case.checkpoint())
    weights = dict(state['model'])
    dropped = [k for k in weights if k.startswith('cls.')]
    for key in dropped:
        del weights[key]
    weights['decoder.extra'] = torch.zeros(2)
    partial = case.folder / 'partial.pth'
    torch.save({'model': weights}, partial)
    total = len(state['model'])

    def check(done: Finished) -> None:
        expected = (f'{total - len(dropped)} of the model\'s {total} tensors loaded, 1 of the checkpoint\'s '
                    f'{total - len(dropped) + 1} skipped (not in the model or another shape), {len(dropped)} left at '
                    'their initial values')
        assert expected in (case.workdir / 'run' / 'test.txt').read_text()

    return Row(_test_with(case, partial, '--model_strict'), status=0, lines=0, check=check)


# ---- rows: results ----

def row_second_test_run_keeps_the_first(case: Case) -> Row:
    checkpoint = case.checkpoint()
    args = _test_with(case, checkpoint)
    first = run('main.py', args, case.folder / 'first')
    assert first.status == 0, first.stderr
    old = (case.workdir / 'run' / 'test_results.csv').read_bytes()

    def check(done: Finished) -> None:
        kept = [p for p in (case.workdir / 'run').glob('test_results-*.csv')]
        assert len(kept) == 1 and kept[0].read_bytes() == old
        assert f'kept them as {kept[0].name}, predictions-' in done.stdout
        table = next(line for line in done.stdout.splitlines() if line.startswith('test '))
        row = (case.workdir / 'run' / 'test_results.csv').read_text().splitlines()[1].split(',')
        assert [f'{float(v):.2f}' for v in row[3:7]] == [c.strip() for c in table.split('|')[3:7]]  # percent

    return Row(args, status=0, lines=0, check=check)


# ---- rows: demo and tools ----

def _word_png(path: Path, word: str, seed: int) -> np.ndarray:
    image = render_word(word, find_fonts()[0], np.random.default_rng(seed))
    assert cv2.imwrite(str(path), image[..., ::-1])
    return image


def row_demo_undecodable_file(case: Case) -> Row:
    folder = case.folder / 'images'
    folder.mkdir()
    _word_png(folder / 'good.png', 'cat', 0)
    (folder / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n but nothing after')
    return Row(['--config', case.config(), '--checkpoint', case.checkpoint(), '--input', folder, '--image_only'],
               [f'warning: {folder / "broken.png"}', 'cannot be decoded; skipped'], status=0, script='demo.py',
               check=lambda done: done.stdout.startswith(f'{folder / "good.png"}\t'))


def row_demo_transparent_png(case: Case) -> Row:
    """Black text on a transparent background reads as the same text drawn on white."""
    folder = case.folder / 'images'
    folder.mkdir()
    grey = cv2.cvtColor(render_word('house', find_fonts()[0], np.random.default_rng(5)), cv2.COLOR_RGB2GRAY)
    ink = 255 - grey  # opacity of the text
    rgba = np.zeros((*grey.shape, 4), np.uint8)
    rgba[..., 3] = ink  # black everywhere, only the alpha draws the word
    assert cv2.imwrite(str(folder / 'a_transparent.png'), rgba)
    white = np.repeat((255 - ink)[..., None], 3, axis=2)  # black over white with that opacity, by hand
    assert cv2.imwrite(str(folder / 'b_on_white.png'), white)

    pictures = case.folder / 'pictures'

    def check(done: Finished) -> None:
        lines = [line.split('\t') for line in done.stdout.splitlines()]
        assert len(lines) == 2 and lines[0][1:] == lines[1][1:]  # same prediction, same confidence
        # each picture shows the model's input and its attention: the same input gives the same picture
        first, second = (cv2.imread(str(pictures / name)) for name in ('a_transparent.png', 'b_on_white.png'))
        assert first is not None and np.array_equal(first, second)

    return Row(['--config', case.config(), '--checkpoint', case.checkpoint(), '--input', folder,
                '--output', pictures], [f'attention pictures of 2 image(s) written to {pictures}'], status=0,
               script='demo.py', check=check)


def row_create_lmdb_undecodable_image(case: Case) -> Row:
    folder = case.folder / 'images'
    folder.mkdir()
    _word_png(folder / 'good.png', 'cat', 0)
    (folder / 'scan.png').write_bytes(b'\xff\xd8 not really a picture')
    gt = case.folder / 'gt.txt'
    gt.write_text('good.png\tcat\nscan.png\tdog\n')
    output = case.folder / 'out_lmdb'

    def check(done: Finished) -> None:
        assert 'wrote 1 of 2 samples' in done.stdout
        with lmdb.open(str(output), readonly=True, lock=False) as env, env.begin() as txn:
            assert txn.get(b'num-samples') == b'1' and txn.get(b'label-000000001') == b'cat'

    return Row(['--input_dir', folder, '--gt_file', gt, '--output', output],
               [f'warning: {folder / "scan.png"}', "label 'dog'", 'not a decodable image'], status=0,
               script='tools/create_lmdb_dataset.py', check=check)


ROWS = {name.removeprefix('row_'): value for name, value in dict(globals()).items() if name.startswith('row_')}


def _snapshot(folders: list[Path]) -> dict[Path, bytes]:
    return {p: p.read_bytes() for folder in folders for p in sorted(folder.rglob('*')) if p.is_file()}


def _assert_nothing_lost(before: dict[Path, bytes], folders: list[Path]) -> None:
    after = _snapshot(folders)
    digests = {hashlib.sha256(data).digest() for data in after.values()}
    for path, data in before.items():
        if path in after and path.name in GROWING_LOGS:
            assert after[path].startswith(data), f'{path} lost earlier lines'
        elif path in after:
            assert after[path] == data, f'{path} changed'
        else:
            assert hashlib.sha256(data).digest() in digests, f'{path} was lost'


@pytest.mark.parametrize('name', list(ROWS))
def test_row(name, world, tmp_path):
    case = Case(tmp_path / 'case', world)
    case.folder.mkdir()
    row = ROWS[name](case)
    watched = [case.folder, world.folder]
    before = _snapshot(watched)
    started = Run(row.script, row.argv, tmp_path / 'output')
    if row.interrupt is not None:
        signum, ready = row.interrupt
        started.wait_for(ready)
        started.signal_group(signum)
    done = started.finish()
    lines = done.stderr.strip().splitlines()
    assert done.status == row.status, done.stderr[-3000:]
    assert len(lines) == row.lines, done.stderr[-3000:]
    assert 'Traceback' not in done.stderr + done.stdout
    for text in row.says:
        assert text in lines[0], (text, lines[0])
    if row.status == 2:
        assert lines[0].startswith('error: ')
    _assert_nothing_lost(before, watched)
    if row.check is not None:
        assert row.check(done) is not False


def test_row_sigint_to_one_rank_stops_every_rank(world, tmp_path):
    """Two ranks (as torchrun starts them); SIGINT reaches rank 1 only: both stop after the same step, rank 0
    alone saves and prints the resume line."""
    case = Case(tmp_path / 'case', world)
    case.folder.mkdir()
    run_dir = case.workdir / 'run'
    path = case.config(lambda tree: tree['training'].update(max_iters=1000, eval_iters=1000, save_iters=1000))
    env = {'WORLD_SIZE': '2', 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(free_port())}
    ranks = [Run('main.py', ['--config', path], tmp_path / f'rank{r}', dict(env, RANK=str(r), LOCAL_RANK=str(r)))
             for r in range(2)]
    ranks[0].wait_for(_log_has(run_dir / 'train.txt', 'iter 3: loss'))
    ranks[1].signal_group(signal.SIGINT)
    done = [r.finish() for r in ranks]
    assert [d.status for d in done] == [130, 130], done[0].stderr[-2000:] + done[1].stderr[-2000:]
    assert done[1].stderr == '' and 'Traceback' not in done[0].stderr + done[0].stdout
    line, = done[0].stderr.strip().splitlines()
    saved, = run_dir.glob('*.pth')  # one checkpoint, by rank 0
    state = load_checkpoint(saved)
    assert state['world_size'] == 2 and len(state['rng']) == 2
    assert line.startswith(f'SIGINT stopped the run at iteration {state["iteration"]}; saved ')
    assert f'--resume {run_dir}/run_{state["epoch"]}_{state["iteration"]}.pth' in line
