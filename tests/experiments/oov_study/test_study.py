"""The OOV study: the tiny preset runs the whole study in-process (sweep, arms, equal wall-clock, report); a second
invocation trains nothing and writes the same report; an interrupted study resumes without redoing finished runs;
a folder of another preset is refused; results.json holds paths relative to the output folder."""

import json
import math
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import matplotlib.figure
import matplotlib.image
import pytest
import torch
import yaml
from fastai.callback import Callback

from experiments.oov_study import cli, data, figures, report, runs, wall_clock
from experiments.oov_study.data import FULL_ALPHABET, SET_LABELS, SYNTHETIC_SETS, lmdb_digest
from experiments.oov_study.preset import load_preset
from experiments.oov_study.study import Study
from runtime.checkpoint import PERIODIC, load_checkpoint, periodic_checkpoints, save_checkpoint
from runtime.run_lock import LOCK_NAME, RunLock
from runtime.stop_signal import StopSignal
from training import train

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / 'experiments' / 'oov_study' / 'configs' / 'tiny.yaml'
CUTE80 = REPO / '..' / 'shared' / 'benchmarks' / 'CUTE80'  # 288 real images: the smallest benchmark
HAS_CUTE80 = (CUTE80 / 'data.mdb').is_file()


DRAWN = {}  # figure file name -> the matplotlib Figure the study saved under it


def _records(output: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (output / 'runs').glob('*/run.json')}


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    """The tiny preset, with CUTE80 as the one real set when the benchmarks are on this machine."""
    root = tmp_path_factory.mktemp('oov')
    bench = root / 'benchmarks'
    bench.mkdir()
    if HAS_CUTE80:
        (bench / 'CUTE80').symlink_to(CUTE80.resolve())
    preset = yaml.safe_load(TINY.read_text())
    preset['experiment'].update(benchmarks=True, benchmark_dir=str(bench))
    (root / 'preset.yaml').write_text(yaml.safe_dump(preset))
    output = root / 'out'
    save = matplotlib.figure.Figure.savefig

    def keep(fig, path, *args, **kwargs):  # the last figure saved under each name, to read its content back
        DRAWN[Path(path).name] = fig
        return save(fig, path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matplotlib.figure.Figure, 'savefig', keep)
        assert cli.main(['--preset', str(root / 'preset.yaml'), '--output', str(output)]) == 0
    return root, output, json.loads((output / 'results.json').read_text())


def test_every_arm_and_set_has_numbers_that_match_its_runs(study):
    _, output, result = study
    records = _records(output)
    size = result['vocab_size']
    assert size in (12, 20) and set(records) == {'v12-abinet-s0', 'v20-abinet-s0', f'v{size}-conaug-s0',
                                                 f'v{size}-conclr-s0', f'v{size}-abinet-wall-s0'}
    real = ['CUTE80', 'CUTE80:in', 'CUTE80:out'] if HAS_CUTE80 else []
    assert result['test_sets'] == list(SYNTHETIC_SETS) + real
    table = result['tables']['same_steps']
    assert list(table) == ['abinet', 'conaug', 'conclr']
    for arm, entry in table.items():
        run = records[f'v{size}-{arm}-s0']['final']
        for name in SYNTHETIC_SETS:
            for metric in ('cwr', 'ccr'):
                assert entry['sets'][name][metric]['mean'] == run[name][metric]
            assert run[name]['samples'] == 24
        for oov in SYNTHETIC_SETS[1:]:
            assert entry['gaps'][oov]['cwr']['mean'] == pytest.approx(run['iv']['cwr'] - run[oov]['cwr'])
    base = records[f'v{size}-abinet-s0']['final']
    assert table['conclr']['minus_baseline']['iv']['mean'] == pytest.approx(
        records[f'v{size}-conclr-s0']['final']['iv']['cwr'] - base['iv']['cwr'])
    conaug = records[f'v{size}-conaug-s0']['final']
    between = table['conclr']['minus_arms']['conaug']  # what the contrastive term adds to the augmentation
    assert between['oov_words']['values'] == {'0': pytest.approx(
        records[f'v{size}-conclr-s0']['final']['oov_words']['cwr'] - conaug['oov_words']['cwr'])}
    assert table['conaug']['minus_arms'] == {} and table['abinet']['minus_arms'] == {}
    assert list(result['tables']['same_wall_clock']) == ['abinet_wall', 'conaug', 'conclr']
    text = (output / 'results.md').read_text()
    for heading in ('## Vocabulary-size sweep', '## Same number of optimiser steps', '## Same wall-clock',
                    '### Ablation', '### Between arms'):
        assert text.count(heading) == 1, heading
    assert 'Partial report' not in text and 'nan' not in text.lower()


def test_the_sweep_chooses_the_vocabulary_by_its_rule(study):
    _, output, result = study
    records = _records(output)
    rows = {n: records[f'v{n}-abinet-s0']['final'] for n in (12, 20)}
    gaps = {n: r['iv']['cwr'] - r['oov_words']['cwr'] for n, r in rows.items()}
    good = [n for n in rows if gaps[n] >= 0.10 and rows[n]['iv']['cwr'] >= 0.30]
    expected = max(good) if good else max(rows, key=lambda n: gaps[n])
    assert result['vocab_size'] == expected
    for n in (12, 20):
        assert result['sweep']['sizes'][str(n)]['gap']['mean'] == pytest.approx(gaps[n])


def test_runs_take_their_steps_and_time_comes_from_the_callback(study):
    _, output, result = study
    records = _records(output)
    size = result['vocab_size']
    for record in records.values():
        timings = record['timings']
        assert sum(t['steps'] for t in timings) == record['steps']
        assert record['train_seconds'] == pytest.approx(sum(t['seconds'] for t in timings))
        assert 0 < record['train_seconds'] <= record['wall_seconds'] and record['resumed_from'] is None
        period = max(10, math.ceil(math.ceil(record['steps'] / 3) / 10) * 10)  # 3 curve points, show_iters 10
        assert [p['iteration'] for p in record['curve']] == sorted({*range(period, record['steps'] + 1, period),
                                                                   record['steps']})
    # the equal-wall-clock steps follow the two models' step times measured side by side (saved, and reported)
    measured = json.loads((output / 'wall_clock.json').read_text())[f'v{size}-s0']
    assert measured['reference'] > 0 and measured['baseline'] > 0 and result['wall_clock'][f'v{size}-s0'] == measured
    assert records[f'v{size}-abinet-wall-s0']['steps'] == max(1, math.floor(30 * measured['reference']
                                                                           / measured['baseline'] + 1e-9))


def test_per_set_curves_pool_to_the_training_time_evaluation(study):
    # Training evaluates the four curve subsets concatenated; main.test of the same checkpoint per set, pooled,
    # must give that number (up to a word flipped by a different batching).
    _, output, _ = study
    for record in _records(output).values():
        history = {h['iteration']: h['cwr'] for h in record['history']}
        for point in record['curve']:
            words = sum(point[f'{n}_curve']['samples'] for n in SYNTHETIC_SETS)
            assert words == 48
            pooled = sum(point[f'{n}_curve']['cwr'] * point[f'{n}_curve']['samples'] for n in SYNTHETIC_SETS)
            assert pooled / words == pytest.approx(history[point['iteration']], abs=1.01 / words)


def test_vocabularies_test_context_apart_from_unseen_characters(study):
    _, output, _ = study
    small, large = (set((output / 'data' / f'v{n}' / 'vocab_train.txt').read_text().split()) for n in (12, 20))
    assert small < large  # the sweep's vocabularies are nested
    data = output / 'data' / 'v20'
    vocab, unseen, randoms, chars = ((data / f'vocab_{n}.txt').read_text().split()
                                     for n in ('train', 'oov_words', 'oov_random', 'oov_chars'))
    alphabet = set(''.join(vocab))
    assert len(vocab) == 20 and len(unseen) == len(randoms) == len(chars) == 20
    assert not set(vocab) & (set(unseen) | set(randoms) | set(chars))
    assert Counter(map(len, vocab)) == Counter(map(len, unseen)) == Counter(map(len, randoms)) \
        == Counter(map(len, chars))
    assert all(set(w) <= alphabet for w in randoms)
    assert all(set(w) - alphabet and set(w) <= set(FULL_ALPHABET) for w in chars)


def test_figures_and_kept_files(study):
    _, output, result = study
    for name in ('curves_steps.png', 'curves_wallclock.png', 'tsne_oov_words.png', 'tsne_oov_random.png'):
        image = matplotlib.image.imread(output / name)
        assert image.ndim == 3 and image.shape[0] > 100, name
        assert name in result['figures'] and name in DRAWN
    for workdir in (output / 'runs').iterdir():
        assert (workdir / 'train.txt').is_file() and list(workdir.glob('events.out.tfevents.*'))
        assert len(list(workdir.glob('*.pth'))) == 1  # only the final checkpoint is kept


def _series(ax) -> dict[str, set]:
    """{legend label: set of (xs, ys)} of the lines of one panel (unlabelled lines join the label before them)."""
    series, label = {}, None
    for line in ax.get_lines():
        label = line.get_label() if not line.get_label().startswith('_') else label
        series.setdefault(label, set()).add((tuple(line.get_xdata()), tuple(line.get_ydata())))
    return series


@pytest.mark.parametrize('name, wall_clock', [('curves_steps.png', False), ('curves_wallclock.png', True)])
def test_curve_figures_plot_every_runs_curve_from_results_json(study, name, wall_clock):
    """One panel per synthetic set; each arm's line is its run's cwr (%) on that set's curve subset against its
    steps (or training seconds: steps x seconds_per_step), as results.json records them."""
    _, _, result = study
    size, baseline = result['vocab_size'], result['experiment']['baseline']
    columns = {arm: f'v{size}-{arm}-s0' for arm in result['arms']}
    labels = {arm: entry['label'] for arm, entry in result['arms'].items()}
    if wall_clock:
        columns['wall'] = f'v{size}-{baseline}-wall-s0'
        labels['wall'] = labels[baseline] + ' (equal wall-clock)'
    fig = DRAWN[name]
    assert len(fig.axes) == len(SYNTHETIC_SETS)
    for ax, set_name in zip(fig.axes, SYNTHETIC_SETS):
        assert ax.get_title() == f'{SET_LABELS[set_name]} (curve subset)'
        assert ax.get_xlabel() == ('training seconds (evaluation excluded)' if wall_clock else 'optimiser steps')
        expected = {}
        for arm, run_id in columns.items():
            record = result['runs'][run_id]
            scale = record['seconds_per_step'] if wall_clock else 1
            points = [(p['iteration'] * scale, 100 * p[f'{set_name}_curve']['cwr']) for p in record['curve']]
            assert len(points) == result['experiment']['curve_points']
            expected[labels[arm]] = {tuple(map(tuple, zip(*points)))}
        got = {label: {(tuple(map(float, xs)), tuple(map(float, ys))) for xs, ys in lines}
               for label, lines in _series(ax).items()}
        assert got.keys() == expected.keys()
        for label in expected:
            ((xs, ys),), ((gx, gy),) = expected[label], got[label]
            assert gx == pytest.approx(xs) and gy == pytest.approx(ys), (set_name, label)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == list(expected)


@pytest.mark.parametrize('name', ['tsne_oov_words.png', 'tsne_oov_random.png'])
def test_tsne_figures_show_the_baseline_beside_the_reference_of_the_recorded_seed(study, name):
    _, _, result = study
    size, e = result['vocab_size'], result['experiment']
    seed = 0
    assert f'(seed {seed}, {e["tsne_images"]} images)' in result['figures'][name]
    fig = DRAWN[name]
    assert len(fig.axes) == 2
    for ax, arm in zip(fig.axes, (e['baseline'], e['reference'])):
        record = result['runs'][f'v{size}-{arm}-s{seed}']
        head, count = ax.get_title().split('\n')
        assert head == f"{result['arms'][arm]['label']}, {record['steps']} steps"
        points = sum(len(c.get_offsets()) for c in ax.collections)
        assert count == f'{points} character glimpses' and points >= e['tsne_images']  # a glimpse per character


def _strings(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _strings(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _strings(value)
    elif isinstance(tree, str):
        yield tree


def test_results_json_holds_paths_relative_to_the_output_folder(study):
    root, output, result = study
    assert not [s for s in _strings(result['runs']) if str(root) in s or s.startswith('/')]
    for record in result['runs'].values():
        for key in ('config', 'workdir', 'checkpoint'):
            assert (output / record[key]).exists(), record[key]


@pytest.mark.skipif(not HAS_CUTE80, reason='needs ../shared/benchmarks/CUTE80')
def test_benchmark_words_are_split_by_the_training_lexicon(study):
    _, output, result = study
    vocab = set((output / 'data' / f'v{result["vocab_size"]}' / 'vocab_train.txt').read_text().split())
    for record in _records(output).values():
        predictions = (output / record['workdir'] / 'eval' / 'final' / 'predictions' / 'CUTE80.tsv')
        rows = [line.split('\t') for line in predictions.read_text().splitlines()[1:]]
        inside = [int(r[4]) for r in rows if r[1].lower() in vocab]
        split = record['lexicon']['CUTE80']
        assert split['in']['samples'] == len(inside) and split['out']['samples'] == len(rows) - len(inside)
        assert split['in']['samples'] + split['out']['samples'] == record['final']['CUTE80']['samples']


def test_a_second_invocation_trains_nothing_and_writes_the_same_report(study, monkeypatch):
    root, output, _ = study
    before = (output / 'results.md').read_text()

    def refuse(*args, **kwargs):
        raise AssertionError('a finished run was trained again')

    monkeypatch.setattr(train, 'train', refuse)
    monkeypatch.setattr(wall_clock, 'measure_step_seconds', refuse)  # the saved step times are reused
    assert cli.main(['--preset', str(root / 'preset.yaml'), '--output', str(output)]) == 0
    assert (output / 'results.md').read_text() == before


def test_a_real_run_resumed_from_a_periodic_checkpoint_keeps_the_whole_runs_records(study):
    # The same run trained whole and resumed from its checkpoint of step 20: the resumed record counts all 30
    # steps' timings (the first two windows as the checkpoint saved them), all three curve points, and says where
    # it resumed; estimates of later runs use those complete training seconds, not main.train's last wall time.
    root, output, result = study
    preset = load_preset(root / 'preset.yaml')
    e = {**preset.experiment, 'keep_checkpoints': True}
    spec = runs.RunSpec('abinet', 7, 30, 12, preset.arm_tree('abinet'))
    batch = preset.tree['config']['dataset']['train']['batch_size']
    place = Study(preset, output, torch.device('cpu'), lambda text: None, [], batch).place(12)
    whole = runs.train_and_evaluate(spec, place, e, torch.device('cpu'))
    saved = periodic_checkpoints(output / 'runs' / spec.run_id, spec.run_id)
    assert [PERIODIC.match(p.name)['iteration'] for p in saved] == ['10', '20', '30']
    resumed = runs.train_and_evaluate(spec, place, e, torch.device('cpu'), resume=saved[1])
    assert whole['resumed_from'] is None and resumed['resumed_from'] == 20
    assert sum(t['steps'] for t in resumed['timings']) == 30
    assert resumed['timings'][:2] == whole['timings'][:2]
    assert [p['iteration'] for p in resumed['curve']] == [10, 20, 30]
    assert resumed['curve'][:2] == whole['curve'][:2]  # the same checkpoints, evaluated again
    assert resumed['train_seconds'] == pytest.approx(sum(t['seconds'] for t in resumed['timings']))
    shutil.rmtree(output / 'runs' / spec.run_id)
    (output / 'configs' / f'{spec.run_id}.yaml').unlink()


def test_every_run_records_the_digests_of_its_data_and_test_sets_and_results_json_carries_them(study):
    _, output, result = study
    records = _records(output)
    assert records and result['test_digests'] == {i: r['test_digests'] for i, r in result['runs'].items()}
    for run_id, record in records.items():
        folder = output / 'data' / f'v{record["spec"]["vocab_size"]}'
        assert record['data_digest'] == lmdb_digest(folder / 'train')
        assert record['test_digests'] == {n: lmdb_digest(folder / n) for n in SYNTHETIC_SETS}
        assert result['runs'][run_id]['test_digests'] == record['test_digests']
        build = result['data'][f'v{record["spec"]["vocab_size"]}']
        assert build == {'digest': record['data_digest'], 'test_digests': record['test_digests']}
    assert not result['superseded']


def test_a_run_without_test_digests_shows_those_of_its_data_build_as_inferred(study):
    _, output, result = study
    run_id, record = next(iter(result['runs'].items()))
    build = result['data'][f'v{record["spec"]["vocab_size"]}']['test_digests']
    older = json.loads(json.dumps(result))
    older['runs'][run_id]['test_digests'] = None  # as a run finished before runs recorded them
    row = next(line for line in report.markdown(older).splitlines() if line.startswith(f'| {run_id} |'))
    assert row.endswith(' | not recorded (build: ' + ' '.join(build[n][:8] for n in SYNTHETIC_SETS) + ') |')
    older['runs'][run_id]['data_digest'] = '0' * 64  # another build: nothing to infer
    row = next(line for line in report.markdown(older).splitlines() if line.startswith(f'| {run_id} |'))
    assert row.endswith(' | not recorded |')


def test_a_folder_of_another_preset_is_refused(study, tmp_path, capsys):
    root, output, _ = study
    preset = yaml.safe_load((root / 'preset.yaml').read_text())
    preset['config']['training']['max_iters'] = 31
    (tmp_path / 'other.yaml').write_text(yaml.safe_dump(preset))
    listing = sorted(p.name for p in output.iterdir())
    assert cli.main(['--preset', str(tmp_path / 'other.yaml'), '--output', str(output)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and 'another preset' in err and '\n' not in err
    assert sorted(p.name for p in output.iterdir()) == listing
    (tmp_path / 'stranger').mkdir()
    (tmp_path / 'stranger' / 'notes.txt').write_text('mine')
    assert cli.main(['--preset', str(TINY), '--output', str(tmp_path / 'stranger')]) == 2
    assert 'holds no study.json' in capsys.readouterr().err
    assert (tmp_path / 'stranger' / 'notes.txt').read_text() == 'mine'


# ---------------------------------------------------------------- interrupted and resumed, with a fake training


def _fake_record(spec, place, experiment, device):
    """Numbers that depend only on the run (its id), as a real run's record holds them."""
    h = sum(map(ord, spec.run_id))
    final = {n: {'cwr': (h * (i + 3)) % 97 / 100, 'ccr': (h * (i + 5)) % 89 / 100, 'samples': 24, 'left_out': 0}
             for i, n in enumerate(SYNTHETIC_SETS)}
    seconds = (1 + h % 7 + 2 * ('conclr' in spec.arm or 'conaug' in spec.arm)) * spec.steps / 10
    return {'spec': spec.as_dict(), 'run_id': spec.run_id, 'steps': spec.steps, 'parameters': 1000 + h,
            'data_digest': place.data_digest, 'test_digests': place.test_digests,
            'config': f'configs/{spec.run_id}.yaml', 'workdir': f'runs/{spec.run_id}',
            'checkpoint': f'runs/{spec.run_id}/{spec.run_id}.pth',  # never written: a fake run saves no model
            'train_seconds': seconds, 'seconds_per_step': seconds / spec.steps, 'wall_seconds': seconds + 1,
            'images_per_second': 8.0, 'test_seconds': 1.0, 'final': final, 'lexicon': {},
            'curve': [{'iteration': spec.steps, **{f'{n}_curve': final[n] for n in SYNTHETIC_SETS}}],
            'history': [], 'timings': [{'iteration': spec.steps, 'steps': spec.steps, 'seconds': seconds}]}


@pytest.fixture
def fake_preset(tmp_path, monkeypatch):
    """The tiny preset with two seeds per arm; the equal-wall-clock step times are fixed (a ConCLR step 2.5 times
    an ABINet-Vision step), as the fake runs write no configs to build models from."""
    monkeypatch.setattr(wall_clock, 'measure_step_seconds',
                        lambda configs, device: {'reference': 2.5, 'baseline': 1.0})
    preset = yaml.safe_load(TINY.read_text())
    preset['experiment'].update(sweep_vocab_sizes=[12], tsne_images=0)
    for arm in preset['arms'].values():
        arm['seeds'] = [0, 1]
    path = tmp_path / 'fake.yaml'
    path.write_text(yaml.safe_dump(preset))
    return path


def _record_training(monkeypatch):
    """Replace training by _fake_record; returns the list of trained run ids and the fake."""
    trained = []

    def fake(spec, *args, **kwargs):
        trained.append(spec.run_id)
        return _fake_record(spec, *args)

    monkeypatch.setattr(runs, 'train_and_evaluate', fake)
    return trained, fake


def _finished_study(fake_preset, tmp_path, monkeypatch):
    """A finished study with fake training: (the list training appends run ids to, output folder, its argv)."""
    trained, _ = _record_training(monkeypatch)
    output = tmp_path / 'study'
    argv = ['--preset', str(fake_preset), '--output', str(output)]
    assert cli.main(argv) == 0
    return trained, output, argv


def test_an_interrupted_study_resumes_without_redoing_finished_runs(fake_preset, tmp_path, monkeypatch):
    trained, fake = _record_training(monkeypatch)
    assert cli.main(['--preset', str(fake_preset), '--output', str(tmp_path / 'whole')]) == 0
    whole = list(trained)
    assert len(whole) == 6 + 2  # 3 arms x 2 seeds, and 2 equal-wall-clock runs

    trained.clear()
    calls = {'n': 0}

    def stopped_after_three(spec, *args, **kwargs):
        if calls['n'] == 3:
            raise KeyboardInterrupt
        calls['n'] += 1
        return fake(spec, *args)

    monkeypatch.setattr(runs, 'train_and_evaluate', stopped_after_three)
    output = tmp_path / 'resumed'
    with pytest.raises(KeyboardInterrupt):
        cli.main(['--preset', str(fake_preset), '--output', str(output)])
    first = list(trained)
    assert first == whole[:3]
    assert 'Partial report: 5 run(s) still to train' in (output / 'results.md').read_text()
    monkeypatch.setattr(runs, 'train_and_evaluate', fake)
    assert cli.main(['--preset', str(fake_preset), '--output', str(output)]) == 0
    assert trained[3:] == whole[3:]  # the rest, each once, in the same order; nothing of the first part again
    assert (output / 'results.md').read_text() == (tmp_path / 'whole' / 'results.md').read_text()
    shutil.rmtree(output / 'runs' / whole[-1])  # a run lost (or cut off before its run.json) is trained again
    trained.clear()
    assert cli.main(['--preset', str(fake_preset), '--output', str(output)]) == 0
    assert trained == [whole[-1]]


def test_a_run_cut_off_midway_continues_from_its_newest_checkpoint_with_records(fake_preset, tmp_path, monkeypatch):
    output = tmp_path / 'out'
    order = []

    def interrupted(spec, *args, **kwargs):
        order.append(spec.run_id)
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, 'train_and_evaluate', interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli.main(['--preset', str(fake_preset), '--output', str(output)])
    first = order[0]
    workdir = output / 'runs' / first
    model = torch.nn.Linear(2, 2)
    save_checkpoint(workdir / f'{first}_0_4.pth', model, iteration=4, records={'timings': [], 'history': []})
    save_checkpoint(workdir / f'{first}_0_8.pth', model, iteration=8, records={'timings': [], 'history': []})
    calls = []

    def recording(spec, *args, resume=None, stop=None):
        calls.append((spec.run_id, resume))
        return _fake_record(spec, *args)

    monkeypatch.setattr(runs, 'train_and_evaluate', recording)
    assert cli.main(['--preset', str(fake_preset), '--output', str(output)]) == 0
    assert calls[0] == (first, workdir / f'{first}_0_8.pth')  # the newest checkpoint
    assert all(resume is None for _, resume in calls[1:])

    # A checkpoint without records (written before they existed) cannot give the whole run's timings: start over.
    shutil.rmtree(workdir)
    save_checkpoint(workdir / f'{first}_0_4.pth', model, iteration=4)
    calls.clear()
    assert cli.main(['--preset', str(fake_preset), '--output', str(output)]) == 0
    assert calls == [(first, None)] and not (workdir / f'{first}_0_4.pth').exists()


def test_ctrl_c_mid_step_ends_the_study_after_that_step_with_a_checkpoint_and_one_line(fake_preset, tmp_path,
                                                                                       monkeypatch, capsys):
    # SIGINT lands inside the third step's backward pass of the first (real) run: the step completes, the run saves
    # a resumable checkpoint of step 3, and the command ends with one line and 130; the next invocation resumes it.
    output = tmp_path / 'out'
    real_fit = train.fit

    class SignalInThirdStep(Callback):
        steps = 0

        def on_backward_end(self, **kwargs):
            SignalInThirdStep.steps += 1
            if SignalInThirdStep.steps == 3:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler runs here, mid-step

    monkeypatch.setattr(train, 'fit', lambda config, learn, loaders, callbacks, *args: real_fit(
        config, learn, loaders, [*callbacks, SignalInThirdStep()], *args))
    assert cli.main(['--preset', str(fake_preset), '--output', str(output)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('SIGINT stopped the study at iteration 3; saved '), err
    assert 'run the same command again to continue' in err[0]
    saved = list((output / 'runs').glob('*/*.pth'))  # the run it cut short: one checkpoint, no record
    assert len(saved) == 1 and str(saved[0]) in err[0] and load_checkpoint(saved[0])['iteration'] == 3
    assert not list((output / 'runs').glob('*/run.json'))

    calls = []

    def recording(spec, *args, resume=None, stop=None):
        calls.append((spec.run_id, resume, stop))
        return _fake_record(spec, *args)

    monkeypatch.setattr(runs, 'train_and_evaluate', recording)
    assert cli.main(['--preset', str(fake_preset), '--output', str(output)]) == 0
    assert calls[0][:2] == (saved[0].parent.name, saved[0])
    assert all(isinstance(stop, StopSignal) for *_, stop in calls)  # every run can be stopped the same way


# ---------------------------------------------------------------- a time limit per invocation


def test_a_time_limit_leaves_the_runs_that_would_not_end_in_time_for_the_next_invocation(fake_preset, tmp_path,
                                                                                           monkeypatch, capsys):
    trained, _ = _record_training(monkeypatch)
    assert cli.main(['--preset', str(fake_preset), '--output', str(tmp_path / 'whole')]) == 0
    whole = list(trained)

    trained.clear()
    output = tmp_path / 'limited'
    # 0.36 s, and a fake run records more than 1 s: only the first run starts, having no estimate; the next ConCLR
    # runs have no estimate either, and an unknown run is never started after another one.
    assert cli.main(['--preset', str(fake_preset), '--output', str(output), '--hours', '0.0001']) == 0
    assert trained == ['v12-abinet-s0']
    out = capsys.readouterr().out
    assert 'v12-conaug-s0 waits for the next invocation: no finished run of its arm or model' in out
    assert 'v12-abinet-s1 waits for the next invocation: it needs about' in out
    assert out.count('v12-conclr-s0 waits') == 1  # an arm's run and the equal-wall-clock pair's reference
    assert '7 run(s) left for the next invocation' in out
    assert 'Partial report: 7 run(s) still to train' in (output / 'results.md').read_text()
    trained.clear()
    assert cli.main(['--preset', str(fake_preset), '--output', str(output), '--hours', '0.0001']) == 0
    assert trained == ['v12-conaug-s0']  # the first of this invocation: started without an estimate
    trained.clear()
    assert cli.main(['--preset', str(fake_preset), '--output', str(output), '--hours', '1000']) == 0
    assert trained == whole[2:]  # the rest in the usual order, nothing twice
    assert (output / 'results.md').read_text() == (tmp_path / 'whole' / 'results.md').read_text()
    assert cli.main(['--preset', str(fake_preset), '--output', str(output), '--hours', '0']) == 2
    assert capsys.readouterr().err.strip() == 'error: --hours must be positive, got 0.0'


def test_a_sweep_cut_short_by_the_time_limit_chooses_no_vocabulary(fake_preset, tmp_path, monkeypatch):
    preset = yaml.safe_load(fake_preset.read_text())
    preset['experiment']['sweep_vocab_sizes'] = [12, 16]
    path = tmp_path / 'two_sizes.yaml'
    path.write_text(yaml.safe_dump(preset))
    trained, _ = _record_training(monkeypatch)
    output = tmp_path / 'out'
    assert cli.main(['--preset', str(path), '--output', str(output), '--hours', '0.0001']) == 0
    assert trained == ['v12-abinet-s0']
    result = json.loads((output / 'results.json').read_text())
    assert sorted(result['runs']) == ['v12-abinet-s0'] and result['vocab_size'] is None
    assert result['sweep']['why'] == 'not chosen yet: the sweep is not finished'
    assert 'v?-abinet-s0' in result['missing'] and 'v16-abinet-s0' in result['missing']


def test_the_report_written_after_each_run_counts_the_runs_finished_before(fake_preset, tmp_path, monkeypatch):
    _record_training(monkeypatch)
    output = tmp_path / 'out'
    assert cli.main(['--preset', str(fake_preset), '--output', str(output)]) == 0
    finished = set(_records(output))
    for run_id in ('v12-conclr-s0', 'v12-abinet-wall-s0'):  # two runs of seed 0, trained before those of seed 1
        shutil.rmtree(output / 'runs' / run_id)
    trained = []

    def stopped_at_the_second(spec, *args, **kwargs):
        trained.append(spec.run_id)
        if len(trained) == 2:
            raise KeyboardInterrupt
        return _fake_record(spec, *args)

    monkeypatch.setattr(runs, 'train_and_evaluate', stopped_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        cli.main(['--preset', str(fake_preset), '--output', str(output)])
    assert trained == ['v12-conclr-s0', 'v12-abinet-wall-s0']
    result = json.loads((output / 'results.json').read_text())  # written after v12-conclr-s0
    assert result['missing'] == ['v12-abinet-wall-s0']
    assert set(result['runs']) == finished - {'v12-abinet-wall-s0'}
    assert sorted(result['tables']['same_steps']['abinet']['seeds']) == [0, 1]


def test_the_tsne_pair_waits_for_a_seed_with_both_checkpoints_here_and_is_drawn_once(fake_preset, tmp_path,
                                                                                       monkeypatch, capsys):
    preset = yaml.safe_load(fake_preset.read_text())
    preset['experiment']['tsne_images'] = 5
    path = tmp_path / 'tsne.yaml'
    path.write_text(yaml.safe_dump(preset))
    _record_training(monkeypatch)
    drawn = []

    def fake_tsne(pair, output, data, count, device):
        drawn.append(([record['run_id'] for _, record in pair], count))
        return ['tsne_oov_words.png']

    monkeypatch.setattr(figures, 'tsne_pair', fake_tsne)
    output = tmp_path / 'out'
    argv = ['--preset', str(path), '--output', str(output)]
    # The fake runs save no checkpoints, as when the runs were trained on another machine: the study still ends.
    assert cli.main(argv) == 0
    assert drawn == []
    out = capsys.readouterr().out
    assert 'the t-SNE pair waits' in out and 'runs/v12-conclr-s1/v12-conclr-s1.pth' in out
    result = json.loads((output / 'results.json').read_text())
    assert result['complete'] and not [name for name in result['figures'] if name.startswith('tsne')]

    for run_id in ('v12-abinet-s0', 'v12-abinet-s1', 'v12-conclr-s1'):  # seed 0 lacks ConCLR's checkpoint
        (output / 'runs' / run_id / f'{run_id}.pth').touch()
    assert cli.main(argv) == 0
    assert drawn == [(['v12-abinet-s1', 'v12-conclr-s1'], 5)]
    figures_drawn = json.loads((output / 'results.json').read_text())['figures']
    assert '(seed 1, 5 images)' in figures_drawn['tsne_oov_words.png']

    (output / 'runs' / 'v12-conclr-s0' / 'v12-conclr-s0.pth').touch()  # seed 0 could be drawn now: the pair stays
    assert cli.main(argv) == 0
    assert len(drawn) == 1
    assert json.loads((output / 'results.json').read_text())['figures'] == figures_drawn


# ---------------------------------------------------------------- superseded runs, more seeds


def _run_bytes(output: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in (output / 'runs').glob('*/run.json')}


def test_a_run_without_a_data_digest_is_listed_superseded_never_counted_and_retrained_apart(
        fake_preset, tmp_path, monkeypatch):
    trained, _ = _record_training(monkeypatch)
    output = tmp_path / 'study'
    assert cli.main(['--preset', str(fake_preset), '--output', str(output)]) == 0
    old = output / 'runs' / 'v12-abinet-s0' / 'run.json'
    record = json.loads(old.read_text())
    del record['data_digest'], record['test_digests']  # as trained in an earlier design
    old.write_text(json.dumps(record))
    before = _run_bytes(output)

    trained.clear()
    assert cli.main(['--preset', str(fake_preset), '--output', str(output), '--report_only']) == 0
    assert trained == [] and _run_bytes(output) == before
    result = json.loads((output / 'results.json').read_text())
    assert result['superseded'] == {'v12-abinet-s0': 'v12-abinet-s0-r1'}
    assert 'v12-abinet-s0' in result['runs'] and result['missing'] == ['v12-abinet-s0-r1']
    table = result['tables']['same_steps']
    assert table['abinet']['seeds'] == [1]
    assert list(table['conaug']['minus_baseline']['iv']['values']) == ['1']  # json keys
    text = (output / 'results.md').read_text()
    assert 'v12-abinet-s0 (superseded by v12-abinet-s0-r1)' in text and '**Superseded: v12-abinet-s0**' in text

    assert cli.main(['--preset', str(fake_preset), '--output', str(output)]) == 0
    assert trained == ['v12-abinet-s0-r1']
    assert old.read_bytes() == before['v12-abinet-s0']  # the old folder is kept as it was
    result = json.loads((output / 'results.json').read_text())
    assert result['complete'] and result['tables']['same_steps']['abinet']['seeds'] == [0, 1]
    assert result['runs']['v12-abinet-s0-r1']['data_digest']


def test_a_run_asked_to_retrain_is_kept_counted_nowhere_and_trained_again_once(fake_preset, tmp_path, monkeypatch,
                                                                                capsys):
    trained, output, argv = _finished_study(fake_preset, tmp_path, monkeypatch)
    old = output / 'runs' / 'v12-conaug-s1' / 'run.json'
    record = json.loads(old.read_text())
    del record['test_digests']  # as trained before runs recorded them
    old.write_text(json.dumps(record))
    before = _run_bytes(output)

    capsys.readouterr()
    assert cli.main(argv + ['--retrain', 'v12-conaug-s1', 'v12-conaug-s7']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'v12-conaug-s7' in err and 'no finished run' in err
    assert not (output / runs.RETRAIN_FILE).exists()  # nothing asked when one id is wrong

    trained.clear()
    assert cli.main(argv + ['--report_only', '--retrain', 'v12-conaug-s1']) == 0
    assert trained == [] and _run_bytes(output) == before
    result = json.loads((output / 'results.json').read_text())
    assert result['superseded'] == {'v12-conaug-s1': 'v12-conaug-s1-r1'}
    assert 'no test-set digests' in result['superseded_why']['v12-conaug-s1']
    assert result['tables']['same_steps']['conaug']['seeds'] == [0] and result['missing'] == ['v12-conaug-s1-r1']
    assert 'Retrain v12-conaug-s1-r1: not finished yet' in (output / 'results.md').read_text()

    assert cli.main(argv) == 0  # the request is remembered by the folder
    assert trained == ['v12-conaug-s1-r1'] and old.read_bytes() == before['v12-conaug-s1']
    result = json.loads((output / 'results.json').read_text())
    first, again = (result['runs'][i]['final'] for i in ('v12-conaug-s1', 'v12-conaug-s1-r1'))
    iv = result['tables']['same_steps']['conaug']['sets']['iv']['cwr']['values']
    assert result['complete'] and iv == {'0': result['runs']['v12-conaug-s0']['final']['iv']['cwr'],
                                         '1': again['iv']['cwr']}
    assert (f'IV {100 * first["iv"]["cwr"]:.1f} -> {100 * again["iv"]["cwr"]:.1f} %, OOV-words '
            f'{100 * first["oov_words"]["cwr"]:.1f} -> {100 * again["oov_words"]["cwr"]:.1f} %.') in \
        (output / 'results.md').read_text()

    assert cli.main(argv + ['--retrain', 'v12-conaug-s1-r1']) == 2
    assert 'a retrain is not trained again' in capsys.readouterr().err
    assert cli.main(argv) == 0 and trained == ['v12-conaug-s1-r1']  # nothing trained twice


def test_a_second_invocation_on_a_folder_in_use_is_refused_in_one_line_and_changes_nothing(
        fake_preset, tmp_path, monkeypatch, capsys):
    trained, output, argv = _finished_study(fake_preset, tmp_path, monkeypatch)
    assert not (output / LOCK_NAME).exists()  # released at the end
    before = {p: p.read_bytes() for p in output.rglob('*') if p.is_file()}

    trained.clear()
    capsys.readouterr()
    preset = yaml.safe_load(fake_preset.read_text())
    preset['arms']['abinet']['seeds'] = [0, 1, 2]  # would rewrite study.json
    more = tmp_path / 'more.yaml'
    more.write_text(yaml.safe_dump(preset))
    with RunLock.acquire(output):  # a first invocation still running
        assert cli.main(['--preset', str(more), '--output', str(output), '--retrain', 'v12-conaug-s1']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'in use by another invocation of the study' in err and f'pid {os.getpid()}' in err
    assert trained == [] and {p: p.read_bytes() for p in output.rglob('*') if p.is_file()} == before
    assert cli.main(argv) == 0 and trained == []  # free again


def test_renders_other_than_the_finished_runs_trained_on_are_refused_before_any_training(
        fake_preset, tmp_path, monkeypatch, capsys):
    trained, output, argv = _finished_study(fake_preset, tmp_path, monkeypatch)
    digest = json.loads((output / 'data' / 'v12' / 'manifest.json').read_text())['digest']
    shutil.rmtree(output / 'runs' / 'v12-conaug-s1')  # one run still to train
    shutil.rmtree(output / 'data')  # a fresh machine renders the data again
    fonts = data.find_fonts()
    monkeypatch.setattr(data, 'find_fonts', lambda: fonts[:1])  # a machine with fewer fonts
    before = _run_bytes(output)

    trained.clear()
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'differ from those the finished runs' in err and digest[:12] in err
    assert 'install_render_assets' in err and '1 fonts' in err
    assert trained == [] and _run_bytes(output) == before and not (output / 'data' / 'v12').exists()

    monkeypatch.setattr(data, 'find_fonts', lambda: fonts)  # the fonts installed: the same renders again
    assert cli.main(argv) == 0 and trained == ['v12-conaug-s1']
    assert json.loads((output / 'runs' / 'v12-conaug-s1' / 'run.json').read_text())['data_digest'] == digest


def test_a_preset_that_only_adds_seeds_reuses_the_finished_folder_and_plans_the_new_runs(
        fake_preset, tmp_path, monkeypatch, capsys):
    trained, _ = _record_training(monkeypatch)
    output = tmp_path / 'study'
    assert cli.main(['--preset', str(fake_preset), '--output', str(output)]) == 0
    before = _run_bytes(output)
    preset = yaml.safe_load(fake_preset.read_text())
    preset['arms']['abinet']['seeds'] = [0, 1, 2, 3]
    preset['arms']['conaug']['seeds'] = [0, 1, 2, 3]
    more = tmp_path / 'more.yaml'
    more.write_text(yaml.safe_dump(preset))

    trained.clear()
    assert cli.main(['--preset', str(more), '--output', str(output), '--report_only']) == 0
    assert trained == []
    result = json.loads((output / 'results.json').read_text())
    assert sorted(result['missing']) == ['v12-abinet-s2', 'v12-abinet-s3', 'v12-conaug-s2', 'v12-conaug-s3']
    assert cli.main(['--preset', str(more), '--output', str(output)]) == 0
    assert trained == ['v12-abinet-s2', 'v12-conaug-s2', 'v12-abinet-s3', 'v12-conaug-s3']
    after = _run_bytes(output)
    assert {k: after[k] for k in before} == before  # every finished run untouched
    assert json.loads((output / 'results.json').read_text())['tables']['same_steps']['abinet']['seeds'] == [0, 1, 2, 3]

    preset['config']['optimizer']['lr'] = 0.001  # a change of what defines a run is still refused
    (tmp_path / 'other.yaml').write_text(yaml.safe_dump(preset))
    capsys.readouterr()
    assert cli.main(['--preset', str(tmp_path / 'other.yaml'), '--output', str(output)]) == 2
    assert 'another preset' in capsys.readouterr().err
    assert runs.RunSpec('a', 0, 1, 1, {}).as_dict() == {'arm': 'a', 'seed': 0, 'steps': 1, 'vocab_size': 1,
                                                        'kind': 'steps', 'tree': {}}
