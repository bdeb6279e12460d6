"""The bad-input table: every failure a user can cause, run as a user would (main.py, demo.py, the tools).

Every row builds its own inputs, runs the script in a fresh process (tests/cli_runner.py) and asserts the exit
status, the lines on stderr (one line naming the file, key or value for an error), no Python traceback anywhere,
and that nothing was lost: every file that existed before the run still holds its bytes (logs may only grow), or
was moved with its bytes intact. docs/reference.md, "Reliability", lists the same rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
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
from configuration import REPO_ROOT, Config
from runtime.checkpoint import load_checkpoint
from runtime.run_lock import LOCK_NAME
from tests.cli_runner import Finished, Run, run
from tests.helpers import TINY_VISION, free_port, render_lmdb
from tools.lmdb_writer import write_lmdb
from tools.synth.fonts import find_fonts
from tools.synth.plain import render_word

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
import runtime.checkpoint as checkpoint

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


# ---- rows: runs that collide ----

def row_stale_lock_of_a_crashed_run(case: Case) -> Row:
    """A lock file left by a run that died (its pid no longer alive): taken over with one log line."""
    run_dir = case.trained_run()
    child = subprocess.Popen(['true'])
    child.wait()
    (run_dir / LOCK_NAME).write_text(json.dumps({'pid': child.pid, 'host': socket.gethostname(),
                                                 'started': '2026-01-01 00:00:00'}))
    path = case.config(lambda tree: tree['training'].update(max_iters=6))

    def check(done: Finished) -> None:
        line = f'took over the stale lock {run_dir / LOCK_NAME} of pid {child.pid} on host '
        assert done.stdout.count(line) == 1 and line in (run_dir / 'train.txt').read_text()
        assert 'training done at iter 6' in done.stdout
        assert not (run_dir / LOCK_NAME).exists()  # released at the end

    return Row(['--config', path, '--resume', run_dir], status=0, lines=0, check=check)


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


def _set_num_samples(root: Path, count: int) -> None:
    with lmdb.open(str(root), map_size=1 << 26) as env, env.begin(write=True) as txn:
        txn.put(b'num-samples', str(count).encode())


def row_test_lmdb_num_samples_above_its_entries(case: Case) -> Row:
    root = case.copy_lmdb()
    _set_num_samples(root, 12)  # 8 entries

    def check(done: Finished) -> None:
        note = f'{root}: num-samples is 12 but 4 of those labels are missing from the LMDB'
        assert done.stdout.count(note) == 1 and note in (case.workdir / 'run' / 'test.txt').read_text()

    return Row(['--config', case.config(), '--phase', 'test', '--image_only', '--checkpoint', case.checkpoint(),
                '--test_root', root], status=0, lines=0, check=check)


def row_test_labels_all_longer_than_max_length(case: Case) -> Row:
    root = render_lmdb(case.folder / 'long', 5, seed=4, words=['abcdefghijklmnopq'])  # 17 > max_length 12
    return Row(['--config', case.config(), '--phase', 'test', '--image_only', '--checkpoint', case.checkpoint(),
                '--test_root', root], [f'no usable label among the 5 samples of {root}: 5 longer than '
                                       'dataset.max_length 12'])


def _train_on(case: Case, root: Path, **training: object) -> Path:
    return case.config(lambda tree: (tree['dataset']['train'].update(roots=[str(root)]),
                                     tree['dataset'].update(num_workers=1), tree['training'].update(**training)))


def _no_traceback_in_train_log(case: Case) -> Callable[[Finished], None]:
    def check(done: Finished) -> None:
        log = case.workdir / 'run' / 'train.txt'
        assert 'Traceback' not in (log.read_text() if log.exists() else '')
    return check


def row_training_labels_all_longer_than_max_length(case: Case) -> Row:
    root = render_lmdb(case.folder / 'long', 16, seed=4, words=['abcdefghijklmnopq'])
    return Row(['--config', _train_on(case, root)], [f'{root}: 100 samples in a row were unusable (the last: '
                                                     'unusable label: longer than dataset.max_length 12)'],
               check=_no_traceback_in_train_log(case))


def row_training_num_samples_far_above_its_entries(case: Case) -> Row:
    root = render_lmdb(case.folder / 'few', 16, seed=4)
    _set_num_samples(root, 100000)
    return Row(['--config', _train_on(case, root)], [f'{root}: 100 samples in a row were unusable (the last: no '
                                                     'image-', 'key in the LMDB (num-samples above its entries?)'],
               check=_no_traceback_in_train_log(case))


def row_training_images_all_1x1(case: Case) -> Row:
    ok, png = cv2.imencode('.png', np.zeros((1, 1, 3), np.uint8))
    root = case.folder / 'dots'
    write_lmdb(root, [(png.tobytes(), word) for word in ['cat', 'dog'] * 8], check_images=False)
    return Row(['--config', _train_on(case, root)], [f'{root}: 100 samples in a row were unusable (the last: 1 x 1 '
                                                     'px, a side of 6 px or less)'],
               check=_no_traceback_in_train_log(case))


def row_training_labels_outside_the_charset(case: Case) -> Row:
    root = render_lmdb(case.folder / 'cyrillic', 16, seed=4, words=['cat', 'дом', 'dog', 'кот'])
    path = _train_on(case, root, max_iters=2)

    def check(done: Finished) -> None:
        said = [line for line in done.stdout.splitlines() if 'holds characters outside the charset' in line]
        assert len(said) == 1, said
        assert ("'д' 'о' 'м'" in said[0] or "'к' 'о' 'т'" in said[0]) and 'charset_36.txt (37 classes)' in said[0]
        assert 'training done at iter 2' in done.stdout

    return Row(['--config', path], status=0, lines=0, check=check)


def row_second_test_run_fails_and_keeps_the_first_results(case: Case) -> Row:
    """A test run that fails half-way leaves the earlier run's results under their usual names."""
    args = _test_with(case, case.checkpoint())
    first = run('main.py', args, case.folder / 'first')
    assert first.status == 0, first.stderr
    results = case.workdir / 'run' / 'test_results.csv'
    old = results.read_bytes()
    root = _bad_image_lmdb(case)

    def check(done: Finished) -> None:
        assert results.read_bytes() == old and not list(results.parent.glob('test_results-*'))
        assert (case.workdir / 'run' / 'predictions' / 'test.tsv').exists()

    return Row([*args, '--test_root', root], [str(root), 'cannot be decoded'], check=check)


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


def row_empty_name(case: Case) -> Row:
    path = case.config()
    return Row(['--config', path, '--name', ''], [str(path), 'global.name (--name) \'\' must be a non-empty'],
               check=lambda done: _nothing_created(case))


def _config_build_row(edit: Callable[[dict], None], says: list[str]) -> Callable[[Case], Row]:
    def build(case: Case) -> Row:
        path = case.config(edit)
        return Row(['--config', path], [str(path), *says], check=lambda done: _nothing_created(case))
    return build


row_nhead_not_dividing_d_model = _config_build_row(
    lambda tree: tree['model']['vision'].update(nhead=3),
    ['model.vision.nhead 3 does not divide model.vision.d_model 16'])
row_d_model_unequal_last_resnet_width = _config_build_row(
    lambda tree: tree['model']['vision'].update(d_model=32),
    ['model.vision.d_model 32 must equal the last entry of model.vision.resnet_widths (16)'])
row_unknown_attention_mode = _config_build_row(
    lambda tree: tree['model']['vision'].update(attention='cross'), ["model.vision.attention 'cross' is none of"])
row_image_size_unfit_for_the_attention = _config_build_row(
    lambda tree: tree['dataset'].update(image_height=24),
    ['dataset.image_height 24 gives a feature map side of 6', 'model.vision.attention position'])
row_unknown_model_class = _config_build_row(
    lambda tree: tree['model'].update(name='modules.model_abinet.ABINetModel'),
    ["model.name 'modules.model_abinet.ABINetModel': no such class here"])
row_list_valued_lr = _config_build_row(
    lambda tree: tree['optimizer'].update(lr=[1.0, 1.0, 1.0]), ["'optimizer_lr' expects float"])
row_argument_the_optimiser_does_not_take = _config_build_row(
    lambda tree: tree['optimizer'].update(args={'momentum': 0.9}),
    ['optimizer.args.momentum is not an argument of Adam (it takes lr, betas'])


def _charset_row(content: str, says: list[str]) -> Callable[[Case], Row]:
    def build(case: Case) -> Row:
        charset = case.folder / 'charset.txt'
        charset.write_text(content, encoding='utf-8')
        path = case.config(lambda tree: tree['dataset'].update(charset_path=str(charset)))
        return Row(['--config', path], [f'{charset}:', *says], check=lambda done: _nothing_created(case))
    return build


row_charset_duplicate_character = _charset_row('0\ta\n1\tb\n2\ta\n', ['3: character \'a\' is already at line 1'])
row_charset_missing_index = _charset_row('0\ta\n2\tb\n', ['2: index 2 where 1 was expected (index 1 is missing)'])
row_charset_two_character_entry = _charset_row('0\ta\n1\tbc\n', ["2: one character per line, got 'bc'"])
row_charset_space_instead_of_tab = _charset_row('0\ta\n1 b\n', ["2: expected", '(a space instead of the tab?)'])


def row_sgd_gets_only_its_own_arguments(case: Case) -> Row:
    path = case.config(lambda tree: (tree['optimizer'].update(type='SGD', args={'momentum': 0.9}),
                                     tree['training'].update(max_iters=2)))
    return Row(['--config', path], status=0, lines=0,
               check=lambda done: 'training done at iter 2' in done.stdout)


def row_local_rank_flag_of_torch_distributed_launch(case: Case) -> Row:
    return Row([*_test_with(case, case.checkpoint()), '--local_rank=0'], status=0, lines=0)


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


def row_resume_with_the_other_model_type(case: Case) -> Row:
    run_dir = case.trained_run()  # an ABINet-Vision run
    path = case.config(lambda tree: (tree['model'].update(name='modules.model_conclr.ConCLR_Vision',
                                                          projection={'channels': 8}),
                                     tree['model']['vision'].update(loss_weight=[1.0, 0.5, 0.5])))
    return Row(['--config', path, '--resume', run_dir],
               [f'--resume {run_dir / "run_0_4.pth"}: a checkpoint of ABINet-Vision (no projection head), but this '
                'config builds ConCLR_Vision', 'resume with the config it was trained with'])


def row_resume_with_another_optimiser_type(case: Case) -> Row:
    run_dir = case.trained_run()  # trained with Adam
    path = case.config(lambda tree: tree['optimizer'].update(type='SGD', args={'momentum': 0.9}))
    return Row(['--config', path, '--resume', run_dir],
               [f'--resume {run_dir / "run_0_4.pth"}: its optimiser state does not fit optimizer.type SGD',
                'it lacks dampening, momentum', 'resume with the config it was trained with'])


DISK_FULL = '''
import errno, runpy, sys
import torch

real_save = torch.save


class Full:
    """A file whose every write fails as on a full disk."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, 'No space left on device')

    def flush(self):
        pass


torch.save = lambda obj, f, *args, **kwargs: real_save(obj, Full(f), *args, **kwargs)
sys.argv = ['main.py', *sys.argv[1:]]
runpy.run_path('main.py', run_name='__main__')
'''


def row_disk_full_while_saving_a_checkpoint(case: Case) -> Row:
    run_dir = case.trained_run()
    script = case.folder / 'disk_full.py'
    script.write_text(DISK_FULL)
    path = case.config(lambda tree: tree['training'].update(max_iters=6, eval_iters=1000, save_iters=6))

    def check(done: Finished) -> None:
        assert not list(run_dir.glob('.*.tmp'))  # the temporary file is gone, the earlier checkpoints whole
        assert load_checkpoint(run_dir / 'run_0_4.pth')['iteration'] == 4

    return Row(['--config', path, '--resume', run_dir], [f'cannot save {run_dir / "run_0_6.pth"}: No space left on '
                                                          'device'], script=str(script), check=check)


def row_checkpoint_of_another_charset(case: Case) -> Row:
    checkpoint = case.checkpoint()
    path = case.config(lambda tree: tree['dataset'].update(charset_path='data/charset_62.txt'))
    return Row(_test_with(case, checkpoint, config=path),
               [str(checkpoint), 'only the classifier differs: charset of 37 classes vs 63'])


def _fine_tuning_config(case: Case) -> tuple[Path, Path]:
    """A fine-tuning config (model.checkpoint: where it started) whose run has a best checkpoint of its own."""
    start = case.folder / 'start.pth'
    shutil.copy(case.world.run / 'run_0_2.pth', start)
    run_dir = case.trained_run()
    return case.config(lambda tree: tree['model'].update(checkpoint=str(start))), run_dir / 'best-run.pth'


def row_test_after_fine_tuning_loads_the_runs_best(case: Case) -> Row:
    path, best = _fine_tuning_config(case)

    def check(done: Finished) -> None:
        assert (f'model.checkpoint {case.folder / "start.pth"} is where this run started; no --checkpoint given: '
                f'loading the run\'s best checkpoint {best}') in done.stdout

    return Row(['--config', path, '--phase', 'test', '--image_only'], status=0, lines=0, check=check)


def row_demo_after_fine_tuning_loads_the_runs_best(case: Case) -> Row:
    path, best = _fine_tuning_config(case)
    folder = case.folder / 'images'
    folder.mkdir()
    _word_png(folder / 'a.png', 'cat', 0)
    return Row(['--config', path, '--input', folder, '--image_only'],
               [f'is where this run started; no --checkpoint given: loading the run\'s best checkpoint {best}'],
               status=0, script='demo.py')


def row_demo_file_names_with_tab_and_newline(case: Case) -> Row:
    folder = case.folder / 'images'
    folder.mkdir()
    _word_png(folder / 'a\tb.png', 'cat', 0)
    _word_png(folder / 'c\nd.png', 'dog', 1)

    def check(done: Finished) -> None:
        lines = [line.split('\t') for line in done.stdout.splitlines()]
        assert [fields[0] for fields in lines] == [f'{folder}/a\\tb.png', f'{folder}/c\\nd.png']
        assert all(len(fields) == 3 for fields in lines)

    return Row(['--config', case.config(), '--checkpoint', case.checkpoint(), '--input', folder, '--image_only'],
               status=0, lines=0, script='demo.py', check=check)


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
        if path.name == LOCK_NAME:
            continue  # a dead run's lock file is there to be taken over
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


def _stopped_live_run(case: Case, tmp_path: Path) -> tuple[Run, Path]:
    """A training run of `case` that has saved a checkpoint and a best one, then stopped (SIGSTOP) so that its files
    hold still while a second run tries the same folder."""
    path = case.config(lambda tree: tree['training'].update(max_iters=1000, eval_iters=2, save_iters=2))
    first = Run('main.py', ['--config', path], tmp_path / 'first')
    first.wait_for(_log_has(case.workdir / 'run' / 'train.txt', 'run_0_2.pth'))
    first.signal_group(signal.SIGSTOP)
    return first, path


def _end_live_run(first: Run) -> None:
    first.signal_group(signal.SIGCONT)
    first.signal_group(signal.SIGINT)
    assert first.finish().status == 130


@pytest.mark.parametrize('how', ['same_name', 'resume_same_folder', 'resume_into_another_name'])
def test_row_second_run_while_the_first_lives(how, world, tmp_path):
    """Two trainings in one work directory (or resuming from a folder a live run writes): the second refuses with
    one line naming the first (pid, host, start), and the first run's files stay as they were."""
    case = Case(tmp_path / 'case', world)
    case.folder.mkdir()
    first, path = _stopped_live_run(case, tmp_path)
    try:
        run_dir = case.workdir / 'run'
        before = _snapshot([case.folder])
        argv = {'same_name': ['--config', path],
                'resume_same_folder': ['--config', path, '--resume', run_dir],
                'resume_into_another_name': ['--config', path, '--name', 'other', '--resume', run_dir]}[how]
        done = run('main.py', argv, tmp_path / 'second')
        line, = done.stderr.strip().splitlines()
        assert done.status == 2 and 'Traceback' not in done.stderr + done.stdout
        owner = f'pid {first.process.pid} on host {socket.gethostname()}, started '
        if how == 'resume_into_another_name':
            assert line.startswith(f'error: --resume {run_dir}: {run_dir} belongs to a live run ({owner}'), line
            assert not (case.workdir / 'other' / 'train.txt').exists()
        else:
            assert line.startswith(f'error: work directory {run_dir} is in use by another run ({owner}'), line
        assert _snapshot([case.folder]) == before  # nothing written, nothing lost
    finally:
        _end_live_run(first)


def test_row_sigint_pressed_repeatedly(world, tmp_path):
    """Ctrl-C again and again while training stops: the one line still names the checkpoint it saved, and no
    atexit callback prints a traceback."""
    case = Case(tmp_path / 'case', world)
    case.folder.mkdir()
    run_dir = case.trained_run()
    path = case.config(lambda tree: tree['training'].update(max_iters=1000, eval_iters=1000, save_iters=1000))
    started = Run('main.py', ['--config', path, '--resume', run_dir], tmp_path / 'output')
    started.wait_for(_log_has(run_dir / 'train.txt', 'iter 6: loss'))
    while started.process.is_alive():
        started.signal_group(signal.SIGINT)
        time.sleep(0.01)
    done = started.finish()
    line, = done.stderr.strip().splitlines()
    assert done.status == 130 and 'Traceback' not in done.stderr + done.stdout
    assert line.startswith('SIGINT stopped the run at iteration ') and '; saved ' in line and 'continue with' in line


def test_row_sigint_during_the_imports(world, tmp_path):
    """Ctrl-C while `python main.py` still imports torch and fastai: one line, 130, no traceback."""
    case = Case(tmp_path / 'case', world)
    case.folder.mkdir()
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / 'main.py'), '--config', str(case.config())],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS='1'))
    time.sleep(1.5)  # the imports take several seconds
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err == 'SIGINT stopped the run while it started; nothing was saved\n' and out == ''
    assert not case.workdir.exists()
