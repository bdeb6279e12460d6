"""tools/gpu_check.py: the CPU dry run goes through every part and leaves each part's outputs and summary.md; an
injected failure or hang is reported as such while the later parts still run; the pieces (time limits, process
group killing, log parsing, batch fallbacks) against hand-computed values. No timing is asserted beyond a kill."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from argparse import Namespace

import pytest
import torch
import yaml

from tools import benchmark as B
from tools import gpu_check as G
from tools import gpu_check_parts as P


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
    assert 'tests/test_user_commands.py' in G.cmd_cuda_tests(G.Context(sys.executable, out, out, False, out, False,
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
            row = rows[f'loss.{model}.vs_fp32{precision}']
            assert row['target'] == '< 0.02' and row['status'] in ('PASS', 'FAIL')
    assert rows['share.conaug_clr']['status'] in ('PASS', 'FAIL')
    assert doc['meta']['channels_last'] and doc['meta']['fit_batch'] and doc['meta']['infer_batches'] == [1, 4]
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


def test_part_limits_follow_the_budget():
    args = Namespace(dry_run=False)
    assert G.part_limit('benchmark', args, {}, 1000) == G.LIMITS['benchmark']
    assert G.part_limit('benchmark', args, {}, 100) == 100  # a required part gets what is left
    assert G.part_limit('study', args, {}, G.MIN_START['study'] - 1) is None  # an optional one is skipped
    assert G.part_limit('study', args, {}, 100) == 100
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
    ctx = G.Context(sys.executable, tmp_path, tmp_path, False, tmp_path, False, {})
    assert G.train_steps(ctx, 120) == G.FALLBACK_STEPS == 40  # no benchmark result: a few dozen steps
    (tmp_path / 'benchmark').mkdir()
    (tmp_path / 'benchmark' / 'benchmark.json').write_text(json.dumps({'metrics': {'train.abinet.step_s@bf16': 0.2}}))
    assert G.train_steps(ctx, 120) == 233  # (120 s - 50 s start-up) / (1.5 x 0.2 s)
    assert G.train_steps(ctx, 1000) == G.TRAIN_STEPS


def test_train_log_parsing_on_hand_made_lines():
    text = ('[x INFO] epoch 0 iter 10: loss = 3.2100, vision_loss = 3.2100, lr = 1.00e-04, 412.3 img/s, '
            'data 0.4 s / compute 11.8 s\n'
            '[x INFO] epoch 0 iter 20: eval loss = 3.0, cwr = 0.1250, ccr = 0.5\n'
            '[x INFO] epoch 1 iter 20: loss = nan, lr = 1.00e-04, 99.0 img/s, data 1.0 s / compute 2.0 s\n')
    log = P.read_train_log(text)
    assert log['points'][0] == (10, 3.21) and log['points'][1][0] == 20 and log['points'][1][1] != log['points'][1][1]
    assert log['speeds'] == [(412.3, 0.4, 11.8), (99.0, 1.0, 2.0)] and log['cwr'] == [(20, 0.125)]


def test_study_iters_and_fallback_batches():
    assert P.study_iters(160) == 200 and P.study_iters(50) == 20 and P.study_iters(1000) == 450
    assert B.fallback_batches(384) == [384, 256, 192, 128, 96, 64, 48]
    assert B.fallback_batches(2) == [2, 1]


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


def test_setup_installs_a_missing_package_from_the_wheels_folder(tmp_path, monkeypatch):
    make_wheel(tmp_path / 'wheels')
    monkeypatch.setattr(P, 'REQUIRED_MODULES', ('yaml', 'gpu_check_demo_pkg'))
    args = P.parse_args(['setup', '--dir', str(tmp_path / 'out'), '--work', str(tmp_path / 'work'), '--dry-run',
                         '--wheels', str(tmp_path / 'wheels'), '--site', str(tmp_path / 'site')])
    assert P.part_setup(args)
    result = json.loads((tmp_path / 'out' / 'result.json').read_text())
    assert result['facts']['missing_before'] == 'gpu_check_demo_pkg'
    assert result['facts']['site'] == str((tmp_path / 'site').resolve())
    assert (tmp_path / 'site' / 'gpu_check_demo_pkg' / '__init__.py').read_text() == 'INSTALLED = True\n'
    assert 'installed 1 wheel(s)' in result['detail']


def test_setup_reports_what_stays_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(P, 'REQUIRED_MODULES', ('yaml', 'gpu_check_no_such_module'))
    args = P.parse_args(['setup', '--dir', str(tmp_path / 'out'), '--work', str(tmp_path / 'work'), '--dry-run',
                         '--wheels', str(tmp_path / 'none'), '--site', str(tmp_path / 'site')])
    assert not P.part_setup(args)
    result = json.loads((tmp_path / 'out' / 'result.json').read_text())
    assert not result['ok'] and "gpu_check_no_such_module (ModuleNotFoundError" in result['detail']
    assert result['facts']['installed'].startswith('nothing')
