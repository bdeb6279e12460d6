"""tools/gpu_check.py: the CPU dry run goes through every part and leaves each part's outputs and summary.md; an
injected failure or hang is reported as such while the later parts still run; the pieces (time limits, process
group killing, log parsing, batch fallbacks) against hand-computed values. No timing is asserted beyond a kill."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from argparse import Namespace

import pytest
import torch
import yaml

from tools import gpu_check as G
from tools import gpu_check_parts as P
from tools import wheelhouse as W
from tools.benchmark import cli, training_sections


def summary_rows(folder) -> dict[str, list[str]]:
    """part -> [status, seconds, limit, detail] from summary.md's table."""
    rows = {}
    for line in (folder / 'summary.md').read_text().splitlines():
        cells = [c.strip() for c in line.strip('|').split('|')]
        if len(cells) == 5 and cells[0] in G.PARTS:
            rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('gpu_check')
    status = G.main(['--dry-run', '--log-root', str(root / 'log'), '--python', sys.executable,
                     '--archive', str(root / 'archive')])
    return status, root / 'log' / 'cpu-dry-run', root / 'archive'


def test_dry_run_reports_every_part_ok(dry_run):
    status, out, _ = dry_run
    rows = summary_rows(out)
    assert status == 0, (out / 'summary.md').read_text()
    assert list(rows) == list(G.PARTS) and all(row[0] == 'ok' for row in rows.values()), rows
    parts = {p['name']: p for p in json.loads((out / 'summary.json').read_text())['parts']}
    assert all(parts[name]['status'] == 'ok' for name in G.PARTS)


def test_dry_run_setup_and_cuda_tests_outputs(dry_run):
    _, out, _ = dry_run
    setup = json.loads((out / 'setup' / 'result.json').read_text())
    assert setup['ok'] and setup['facts']['torch'] == torch.__version__
    assert (out / 'setup' / 'nvidia-smi.txt').is_file() and (out / 'setup' / 'pip-list.txt').is_file()
    cases = ET.parse(out / 'cuda_tests' / 'junit.xml').getroot().iter('testcase')
    outcomes = [[child.tag for child in case] for case in cases]
    # 2 models x 3 precisions, channels-last, ConAug, contrastive loss x 2: all run (on the CPU) and pass (the user
    # commands' CUDA tests run only on a GPU; their CPU variants are in the normal suite)
    assert len(outcomes) == 10 and all(not o for o in outcomes), outcomes
    assert summary_rows(out)['cuda_tests'][3].startswith('10 passed, 0 failed')
    assert 'tests/test_user_commands.py' in G.cmd_cuda_tests(G.Context(sys.executable, out, out, False, None, out,
                                                                        {}), 60)


def test_dry_run_benchmark_has_the_gpu_rows(dry_run):
    _, out, _ = dry_run
    doc = json.loads((out / 'benchmark' / 'benchmark.json').read_text())
    rows = {r['key']: r for r in doc['rows']}
    for precision in ('', '@bf16', '@fp16'):
        for key in ('train.abinet.img_s', 'train.conclr.img_s', 'train.ratio', 'train.abinet.mfu',
                    'loader.workers_needed', 'infer.b1.img_s', 'infer.b64.img_s', 'flops.matmul_tflops'):
            assert rows[key + precision]['value'] is not None, key + precision
    for precision in ('@bf16', '@fp16'):
        for model in ('abinet', 'conclr'):
            # numerics, not timing: two steps of the tiny model in bf16 / fp16 stay far within 2 % of float32
            row = rows[f'loss.{model}.vs_fp32{precision}']
            assert row['target'] == '< 0.02' and row['status'] == 'PASS' and 0 <= row['value'] < 0.02, row
    # a timing share on a busy CPU: its value may fall either side, but the verdict must match the value
    share = rows['share.conaug_clr']
    assert 0 < share['value'] < 1 and share['status'] == ('PASS' if share['value'] < 0.02 else 'FAIL'), share
    assert doc['meta']['channels_last'] and doc['meta']['infer_batches'] == [1, 4]
    # the batch comes from the memory estimate beforehand, never from out-of-memory retries
    assert doc['meta']['fit_memory'] and not doc['meta']['fit_batch'] and doc['meta']['batch'] == 2
    assert doc['meta']['batch_note'].startswith('batch 2 of 2 asked: the line-up needs about ')
    assert 'eval batch 4 [bf16]' in (out / 'benchmark' / 'output.log').read_text()


def test_dry_run_training_run_and_its_loss_curve(dry_run):
    _, out, _ = dry_run
    train = out / 'train'
    logged = [line for line in (train / 'train.txt').read_text().splitlines() if re.search(r'iter \d+: loss = ', line)]
    curve = (train / 'loss_curve.tsv').read_text().splitlines()[1:]
    assert len(curve) == len(logged) == 3  # 6 steps, a loss line every 2
    assert [int(line.split('\t')[0]) for line in curve] == [2, 4, 6]
    assert (train / 'loss_curve.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    config = yaml.safe_load((train / 'config.yaml').read_text())
    assert config['training']['amp'] == 'bf16' and config['training']['channels_last']
    assert 'loss_curve.png' in (out / 'summary.md').read_text()


def test_dry_run_study_and_archive(dry_run):
    _, out, archive = dry_run
    study = out / 'study'
    assert (study / 'results.md').is_file() and (study / 'curves_steps.png').is_file()
    assert yaml.safe_load((study / 'preset.yaml').read_text())['config']['training']['max_iters'] == 4
    assert not list(study.rglob('*.pth')) and not (study / 'data').exists()
    with tarfile.open(archive / 'gpu_check.tar.gz') as tar:
        names = tar.getnames()
    assert 'cpu-dry-run/summary.md' in names and 'cpu-dry-run/train/loss_curve.png' in names
    assert (archive / 'summary.md').read_text() == (out / 'summary.md').read_text()


def test_failed_and_hung_parts_are_reported_and_later_parts_still_run(tmp_path):
    start = time.monotonic()
    status = G.main(['--dry-run', '--log-root', str(tmp_path), '--python', sys.executable,
                     '--parts', 'cuda_tests', 'benchmark', 'train',
                     '--inject', 'cuda_tests=fail', '--inject', 'benchmark=timeout', '--limit', 'benchmark=2'])
    out = tmp_path / 'cpu-dry-run'
    rows = summary_rows(out)
    assert status == 1
    assert rows['cuda_tests'][0] == 'FAILED' and 'exit status 3' in rows['cuda_tests'][3]
    assert 'injected failure' in rows['cuda_tests'][3]
    assert rows['benchmark'][0] == 'TIMED OUT' and 'killed at its 2 s limit' in rows['benchmark'][3]
    assert float(rows['benchmark'][1]) < 2 + G.KILL_GRACE_S + 5
    assert rows['train'][0] == 'ok' and (out / 'train' / 'loss_curve.png').is_file()
    assert rows['setup'][0] == rows['study'][0] == 'not run'
    assert time.monotonic() - start < 3600  # the hang did not run its hour


def test_a_part_that_cannot_start_is_reported_and_the_summary_written(tmp_path):
    status = G.main(['--dry-run', '--log-root', str(tmp_path), '--python', str(tmp_path / 'no-such-python'),
                     '--parts', 'setup', 'train'])
    out = tmp_path / 'cpu-dry-run'
    rows = summary_rows(out)
    assert status == 1
    assert rows['setup'][0] == rows['train'][0] == 'FAILED'
    assert rows['setup'][3].startswith('could not start: FileNotFoundError')
    assert [p['status'] for p in json.loads((out / 'summary.json').read_text())['parts']] == [
        'FAILED', 'not run', 'not run', 'FAILED', 'not run']


# ------------------------------------------------------------------------------------ pieces


def test_run_limited_kills_the_whole_process_group(tmp_path):
    pid_file = tmp_path / 'child.pid'
    script = ('import subprocess, sys, time; '
              'c = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]); '
              f'open({str(pid_file)!r}, "w").write(str(c.pid)); time.sleep(300)')
    rc, seconds = G.run_limited([sys.executable, '-c', script], tmp_path / 'log.txt', 3, dict(os.environ))
    assert rc is None and seconds < 3 + 2 * G.KILL_GRACE_S
    child = int(pid_file.read_text())
    time.sleep(0.5)
    assert not os.path.exists(f'/proc/{child}') or 'Z' in open(f'/proc/{child}/stat').read().split()[2]
    assert "killed after 3 s (the part's limit)" in (tmp_path / 'log.txt').read_text()


def test_the_whole_check_fits_six_minutes():
    assert sum(G.LIMITS.values()) == G.BUDGET_S and G.BUDGET_S + G.RESERVE_S <= 360
    assert set(G.LIMITS) == set(G.PARTS) and set(G.MIN_START) == set(G.OPTIONAL)
    assert all(G.MIN_START[name] <= G.LIMITS[name] for name in G.OPTIONAL)
    assert '--fit_batch' not in G.benchmark_args(False, G.REPO_ROOT / 'b.json')
    assert '--fit_memory' in G.benchmark_args(False, G.REPO_ROOT / 'b.json')


def test_part_limits_follow_the_budget():
    args = Namespace(dry_run=False)
    assert G.part_limit('benchmark', args, {}, 1000) == G.LIMITS['benchmark']
    assert G.part_limit('benchmark', args, {}, 30) == 30  # a required part gets what is left
    assert G.part_limit('train', args, {}, G.MIN_START['train'] - 1) is None  # an optional one is skipped
    assert G.part_limit('train', args, {}, 1000) == G.LIMITS['train']
    assert G.part_limit('study', args, {}, G.MIN_START['study'] - 1) is None
    assert G.part_limit('study', args, {}, 100) == 100  # the last part may use all that earlier parts saved
    assert G.part_limit('train', args, {'train': 7}, 1000) == 7


def test_bad_inject_and_limit_arguments_are_one_line_errors():
    with pytest.raises(SystemExit, match="--inject 'bench=fail'"):
        G.parse_faults(['bench=fail'])
    with pytest.raises(SystemExit, match="--limit 'train=soon'"):
        G.parse_limits(['train=soon'])
    assert G.parse_faults(['train=timeout']) == {'train': 'timeout'}


@pytest.mark.skipif(torch.cuda.is_available() or shutil.which('nvidia-smi') is not None,
                    reason='this machine has a GPU: the check would run for real')
def test_without_a_gpu_the_real_check_refuses(tmp_path, capsys):
    assert G.main(['--log-root', str(tmp_path), '--python', sys.executable]) == 2
    assert 'no CUDA GPU seen' in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_train_steps_fit_the_benchmarked_step(tmp_path):
    ctx = G.Context(sys.executable, tmp_path, tmp_path, False, None, tmp_path, {})
    assert G.train_steps(ctx, 60) == G.FALLBACK_STEPS == 40  # no benchmark result: a few dozen steps
    (tmp_path / 'benchmark').mkdir()
    (tmp_path / 'benchmark' / 'benchmark.json').write_text(json.dumps({'metrics': {'train.abinet.step_s@bf16': 0.1}}))
    assert G.train_steps(ctx, 60) == 133  # (60 s - 40 s start-up) / (1.5 x 0.1 s)
    assert G.train_steps(ctx, 1000) == G.TRAIN_STEPS


def test_train_log_parsing_on_hand_made_lines():
    text = ('[x INFO] epoch 0 iter 10: loss = 3.2100, vision_loss = 3.2100, lr = 1.00e-04, 412.3 img/s, '
            'data 0.4 s / compute 11.8 s\n'
            '[x INFO] epoch 0 iter 20: eval loss = 3.0, cwr = 0.1250, ccr = 0.5\n'
            '[x INFO] epoch 1 iter 20: loss = nan, lr = 1.00e-04, 99.0 img/s, data 1.0 s / compute 2.0 s\n')
    log = P.read_train_log(text)
    assert log['points'][0] == (10, 3.21) and log['points'][1][0] == 20 and log['points'][1][1] != log['points'][1][1]
    assert log['speeds'] == [(412.3, 0.4, 11.8), (99.0, 1.0, 2.0)] and log['cwr'] == [(20, 0.125)]


def test_benchmark_batch_is_the_largest_the_memory_estimate_fits(monkeypatch):
    from training import memory_estimate as M

    mib = 2 ** 20
    fake = {1: M.MemoryEstimate(1000, 1 * mib, 0.0, 1, None), 3: M.MemoryEstimate(2000, 3 * mib, 0.0, 1, None)}
    monkeypatch.setattr(M, 'measure', lambda model, shape, views, *a, **k: fake[views])  # ABINet 1 view, ConCLR 3
    s = cli.settings_from(cli.parse_args(['--quick', '--device', 'cpu', '--batch', '64']))
    # three models' state (2 x 16,000 + 32,000 bytes) + ConCLR's 3 MiB per image x 1.25 + the reserve
    free = 64000 + 1.25 * 3 * mib * 20 + M.RESERVE
    assert training_sections.lineup_bytes({'abinet': fake[1], 'conclr': fake[3]}, 20) == free
    # room for 20 images: the largest multiple of 8 is 16
    assert training_sections.memory_batch(s, free)[0] == 16
    assert training_sections.memory_batch(s, free * 10)[0] == 64  # never above the batch asked for
    batch, note = training_sections.memory_batch(s, M.RESERVE + 64000 + 1.25 * 3 * mib * 5)
    assert batch == 5 and note.startswith('batch 5 of 64 asked: the line-up needs about 0.8 GiB')
    batch, note = training_sections.memory_batch(s, 1.0)
    assert batch == 1 and note.endswith('(not even that fits: expect out-of-memory rows)')


def test_study_iters_and_fallback_batches():
    assert P.study_iters(50) == 50 and P.study_iters(20) == 10 and P.study_iters(1000) == 450
    assert training_sections.fallback_batches(384) == [384, 256, 192, 128, 96, 64, 48]
    assert training_sections.fallback_batches(2) == [2, 1]


def make_wheel(folder, name: str = 'gpu_check_demo_pkg', version: str = '0.1'):
    """A minimal pure-Python wheel whose module says it was installed."""
    import zipfile

    dist = f'{name}-{version}.dist-info'
    files = {f'{name}/__init__.py': 'INSTALLED = True\n',
             f'{dist}/METADATA': f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n',
             f'{dist}/WHEEL': 'Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n'}
    files[f'{dist}/RECORD'] = ''.join(f'{path},,\n' for path in [*files, f'{dist}/RECORD'])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f'{name}-{version}-py3-none-any.whl'
    with zipfile.ZipFile(path, 'w') as z:
        for file, text in files.items():
            z.writestr(file, text)
    return path


def fake_wheelhouse(tmp_path, requirement: str):
    """A wheelhouse with one demo wheel, and requirements / lock files that ask for `requirement`."""
    make_wheel(tmp_path / 'wheelhouse')
    (tmp_path / 'requirements.txt').write_text(f'{requirement}\n')
    (tmp_path / 'lock.txt').write_text('gpu-check-demo-pkg==0.1\n')
    return tmp_path / 'wheelhouse', tmp_path / 'requirements.txt', tmp_path / 'lock.txt'


def test_wheelhouse_pip_command_keeps_a_cuda_torch(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(W, 'torch_build', lambda python: ('2.5.1+cu124', '12.4'))
    monkeypatch.setattr(W.subprocess, 'run', lambda cmd, **kw: calls.append(cmd) or Namespace(
        returncode=0, stdout='', stderr=''))
    (tmp_path / 'wh').mkdir()
    W.install('/node/python', tmp_path / 'wh', tmp_path)
    keep = tmp_path / 'constraints-keep-torch.txt'
    assert calls == [['/node/python', '-m', 'pip', 'install', '--disable-pip-version-check', '--no-index',
                      '--find-links', str(tmp_path / 'wh'), '-r', str(W.REQUIREMENTS), '-c', str(keep)]]
    pins = keep.read_text().splitlines()
    assert pins[-1] == 'torch==2.5.1+cu124' and 'fastai==1.0.60' in pins and 'nvidia-ml-py3==7.352.0' in pins
    assert not [line for line in pins[:-1] if re.match(r'(torch|torchvision|triton|nvidia-cu|cuda-)', line)]
    # a CPU torch (or none) is not kept: the lock file as it is, torch from the wheelhouse
    monkeypatch.setattr(W, 'torch_build', lambda python: ('2.14.1+cpu', ''))
    W.install('/node/python', tmp_path / 'wh', tmp_path)
    assert calls[-1][-2:] == ['-c', str(W.LOCK)]


def test_wheelhouse_missing_package_is_one_line_naming_it(tmp_path, monkeypatch):
    pip_says = ('Looking in links: /wh\nERROR: Could not find a version that satisfies the requirement '
                'editdistance==0.8.1 (from versions: none)\nERROR: No matching distribution found for '
                'editdistance==0.8.1\n')
    monkeypatch.setattr(W, 'torch_build', lambda python: None)
    monkeypatch.setattr(W.subprocess, 'run', lambda cmd, **kw: Namespace(returncode=1, stdout='', stderr=pip_says))
    (tmp_path / 'wh').mkdir()
    with pytest.raises(W.WheelhouseError) as e:
        W.install('/node/python', tmp_path / 'wh', tmp_path)
    assert '\n' not in str(e.value) and str(e.value).startswith(f'the wheelhouse {tmp_path / "wh"} lacks '
                                                                'editdistance==0.8.1 ')
    with pytest.raises(W.WheelhouseError, match='is not a folder'):
        W.install('/node/python', tmp_path / 'none', tmp_path)


def test_wheelhouse_conflict_output_names_the_pin_the_folder_lacks(tmp_path):
    """pip 23's words when the pinned version is nowhere but another version is on some other find-links path."""
    pip_says = ('ERROR: Cannot install setuptools<81 because these package versions have conflicting dependencies.\n\n'
                'The conflict is caused by:\n    The user requested setuptools<81\n'
                '    The user requested (constraint) setuptools==80.10.2\n\nTo fix this you could try to:\n'
                '1. loosen the range of package versions you\'ve specified\n'
                'ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/...\n')
    assert W.failure_line(pip_says, tmp_path).startswith(f'the wheelhouse {tmp_path} lacks setuptools==80.10.2 ')
    (tmp_path / 'setuptools-79.0.0-py3-none-any.whl').write_bytes(b'')
    assert W.failure_line(pip_says, tmp_path) == (
        f'installing from the wheelhouse {tmp_path} failed: conflicting versions: The user requested setuptools<81; '
        'The user requested (constraint) setuptools==80.10.2')


def test_wheelhouse_installs_with_real_pip_into_a_fresh_venv(tmp_path, monkeypatch):
    """pip itself, offline, in a temporary venv: the demo wheel installs; a package the folder lacks is named."""
    for name in ('PIP_FIND_LINKS', 'PIP_INDEX_URL', 'PIP_EXTRA_INDEX_URL'):  # only the wheelhouse, whatever is set
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('PIP_CONFIG_FILE', os.devnull)
    python = str(W.ensure_venv(tmp_path / 'venv', sys.executable))
    wheels, requirements, lock = fake_wheelhouse(tmp_path, 'gpu-check-demo-pkg')
    W.install(python, wheels, tmp_path, requirements, lock, log=tmp_path / 'install.log')
    done = subprocess.run([python, '-c', 'import gpu_check_demo_pkg as m; print(m.INSTALLED)'], capture_output=True,
                          text=True)
    assert done.stdout.strip() == 'True', done.stderr
    requirements.write_text('gpu-check-demo-pkg\ngpu-check-absent-pkg\n')
    with pytest.raises(W.WheelhouseError, match=r'lacks gpu-check-absent-pkg \(for this machine'):
        W.install(python, wheels, tmp_path, requirements, lock)
    lock.write_text('gpu-check-demo-pkg==0.1\ngpu-check-absent-pkg==1.0\n')  # pinned too: still named
    with pytest.raises(W.WheelhouseError, match=r'lacks gpu-check-absent-pkg(==1.0)? \(for this machine'):
        W.install(python, wheels, tmp_path, requirements, lock)
    # a file of it that does not satisfy the pin is a conflict, reported as such
    make_wheel(wheels, 'gpu_check_absent_pkg', '0.5')
    with pytest.raises(W.WheelhouseError, match=r'failed: conflicting versions: The user requested gpu-check-absent'):
        W.install(python, wheels, tmp_path, requirements, lock)


def test_setup_part_installs_from_the_wheelhouse_into_the_venv(tmp_path, monkeypatch):
    make_wheel(tmp_path / 'site')  # stands for what pip installs: on the path once "installed"
    calls = []

    def fake_install(python, wheelhouse, work, *a, log=None):
        calls.append((python, wheelhouse))
        import zipfile
        with zipfile.ZipFile(tmp_path / 'site' / 'gpu_check_demo_pkg-0.1-py3-none-any.whl') as z:
            z.extractall(tmp_path / 'installed')
        monkeypatch.setenv('PYTHONPATH', str(tmp_path / 'installed'))
        return []

    monkeypatch.setattr(P, 'REQUIRED_MODULES', ('yaml', 'gpu_check_demo_pkg'))
    monkeypatch.setattr(W, 'ensure_venv', lambda venv, base: sys.executable)
    monkeypatch.setattr(W, 'install', fake_install)
    args = P.parse_args(['setup', '--dir', str(tmp_path / 'out'), '--work', str(tmp_path / 'work'), '--dry-run',
                         '--wheelhouse', str(tmp_path / 'wh'), '--venv', str(tmp_path / 'venv')])
    assert P.part_setup(args)
    result = json.loads((tmp_path / 'out' / 'result.json').read_text())
    assert calls == [(sys.executable, tmp_path / 'wh')]
    assert result['facts']['missing_before'] == 'gpu_check_demo_pkg'
    assert result['facts']['installed_into'] == sys.executable
    assert result['detail'].endswith(f'; installed from {tmp_path / "wh"} into {sys.executable}')


def test_setup_part_reports_the_wheelhouse_error_and_what_stays_missing(tmp_path, monkeypatch):
    def failing_install(python, wheelhouse, work, *a, log=None):
        raise W.WheelhouseError(f'the wheelhouse {wheelhouse} lacks lmdb==2.0.0 (for this machine)')

    monkeypatch.setattr(P, 'REQUIRED_MODULES', ('yaml', 'gpu_check_no_such_module'))
    monkeypatch.setattr(W, 'ensure_venv', lambda venv, base: sys.executable)
    monkeypatch.setattr(W, 'install', failing_install)
    base = ['setup', '--dir', str(tmp_path / 'out'), '--work', str(tmp_path / 'work'), '--dry-run']
    assert not P.part_setup(P.parse_args([*base, '--wheelhouse', str(tmp_path / 'wh')]))
    result = json.loads((tmp_path / 'out' / 'result.json').read_text())
    assert result['detail'].startswith(f'the wheelhouse {tmp_path / "wh"} lacks lmdb==2.0.0')
    assert 'gpu_check_no_such_module (ModuleNotFoundError' in result['detail']
    assert not P.part_setup(P.parse_args(base))  # no wheelhouse: nothing installed, the module named
    result = json.loads((tmp_path / 'out' / 'result.json').read_text())
    assert result['facts']['installed'].startswith('nothing') and 'gpu_check_no_such_module' in result['detail']


def test_driver_passes_the_wheelhouse_and_venv_to_setup(tmp_path):
    ctx = G.Context(sys.executable, tmp_path, tmp_path, False, tmp_path / 'wh', tmp_path / 'venv', {})
    cmd = G.cmd_setup(ctx, 45)
    assert cmd[cmd.index('--venv') + 1] == str(tmp_path / 'venv')
    assert cmd[cmd.index('--wheelhouse') + 1] == str(tmp_path / 'wh')
    assert '--wheelhouse' not in G.cmd_setup(G.Context(sys.executable, tmp_path, tmp_path, False, None,
                                                       tmp_path / 'venv', {}), 45)


def test_setup_env_sh_hands_the_wheelhouse_to_the_installer(tmp_path):
    (tmp_path / 'bin').mkdir()
    fake = tmp_path / 'bin' / 'python3'
    fake.write_text(f'#!/bin/sh\necho "$PWD $*" > {tmp_path / "called"}\n')
    fake.chmod(0o755)
    env = {**os.environ, 'PATH': f'{tmp_path / "bin"}:{os.environ["PATH"]}'}
    env.pop('WHEELHOUSE', None)
    subprocess.run(['bash', str(G.REPO_ROOT / 'tools' / 'setup_env.sh'), '--wheelhouse', str(tmp_path / 'wh')],
                   cwd=tmp_path, env=env, check=True)
    assert (tmp_path / 'called').read_text().split() == [str(G.REPO_ROOT), '-m', 'tools.install_wheelhouse',
                                                         str(tmp_path / 'wh'), '--venv', '.venv']
