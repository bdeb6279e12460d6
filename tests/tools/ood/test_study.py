"""tools/ood_experiment.py: the tiny preset runs the whole study in-process and reports every model x set in both
tables; the pure pieces (OOV vocabularies, mean/spread, step matching, speed-log parsing, presets) against
hand-computed values."""

import json
import math
from collections import Counter
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from tools import ood_experiment as ox
from utils import Config

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / 'configs' / 'experiment_tiny.yaml'
CUTE80 = REPO / '..' / 'shared' / 'benchmarks' / 'CUTE80'  # 288 real images: the smallest benchmark


# ---------------------------------------------------------------- the whole study


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    """The tiny preset, with CUTE80 as the one real set when the benchmarks are on this machine."""
    root = tmp_path_factory.mktemp('ood')
    bench = root / 'benchmarks'
    bench.mkdir()
    if (CUTE80 / 'data.mdb').is_file():
        (bench / 'CUTE80').symlink_to(CUTE80.resolve())
    preset = yaml.safe_load(TINY.read_text())
    preset['experiment'].update(benchmarks=True, benchmark_dir=str(bench))
    (root / 'preset.yaml').write_text(yaml.safe_dump(preset))
    output = root / 'out'
    assert ox.main(['--preset', str(root / 'preset.yaml'), '--output', str(output)]) == 0
    return output, json.loads((output / 'results.json').read_text())


def test_every_model_and_set_has_finite_numbers_in_both_tables(study):
    output, result = study
    real = ['CUTE80'] if (CUTE80 / 'data.mdb').is_file() else []
    assert result['test_sets'] == ['iv', 'oov_words', 'oov_random'] + real
    for table, pair in (('same_steps', ('abinet', 'conclr')), ('same_wall_clock', ('abinet_wall', 'conclr'))):
        for run in pair:
            entry = result['tables'][table][run]
            for name in result['test_sets']:
                for metric in ('cwr', 'ccr'):
                    value = entry['sets'][name][metric]['mean']
                    assert math.isfinite(value) and 0.0 <= value <= 1.0, (table, run, name, metric)
                if name in ox.SYNTHETIC_SETS:
                    assert entry['sets'][name]['samples'] == 24
            for gap in ('iv-oov_words', 'iv-oov_random'):
                stat = entry['gaps'][gap]['cwr']
                iv, oov = entry['sets']['iv']['cwr']['mean'], entry['sets'][gap[3:]]['cwr']['mean']
                assert stat['mean'] == pytest.approx(iv - oov)
    for run in result['runs']['0'].values():
        if real:  # CUTE80 has 288 images; a label the 36-class charset cannot read is left out, not dropped
            assert run['final']['CUTE80']['samples'] + run['final']['CUTE80']['left_out'] == 288
    text = (output / 'results.md').read_text()
    assert '## Same number of optimiser steps' in text and '## Same wall-clock training time' in text
    for label in ('| IV |', '| OOV-words |', '| OOV-random |', 'gap IV − OOV-words', 'gap IV − OOV-random',
                  *(f'| {r} |' for r in real)):
        assert text.count(label) == 2, label  # once per table
    assert 'nan' not in text.lower() and 'n/a' not in text


def test_runs_take_their_steps_and_the_wall_clock_run_fits_conclrs_time(study):
    _, result = study
    runs = result['runs']['0']
    assert runs['abinet']['steps'] == runs['conclr']['steps'] == 30
    # ABINet-Vision gets floor(ConCLR's training seconds / its own seconds per step)
    seconds_per_step = runs['abinet']['train_seconds'] / 30
    assert runs['abinet_wall']['steps'] == math.floor(runs['conclr']['train_seconds'] / seconds_per_step + 1e-9)
    for run in runs.values():
        assert run['train_seconds'] > 0 and run['train_seconds'] <= run['wall_seconds']
        # 3 curve points, period a multiple of show_iters (10): 10, 20, 30 for 30 steps
        iterations = [p['iteration'] for p in run['curve']]
        period = max(10, math.ceil(math.ceil(run['steps'] / 3) / 10) * 10)
        expected = sorted({*range(period, run['steps'] + 1, period), run['steps']})
        assert iterations == expected


def test_per_set_curves_pool_to_the_training_time_evaluation(study):
    # Training evaluates the three curve subsets concatenated; main.test of the same checkpoint per set,
    # pooled, must give that number (up to a word flipped by a different batching).
    _, result = study
    for run in result['runs']['0'].values():
        history = {h['iteration']: h['cwr'] for h in run['history']}
        for point in run['curve']:
            words = sum(point[f'{n}_curve']['samples'] for n in ox.SYNTHETIC_SETS)
            assert words == 36
            pooled = sum(point[f'{n}_curve']['cwr'] * point[f'{n}_curve']['samples'] for n in ox.SYNTHETIC_SETS)
            assert pooled / words == pytest.approx(history[point['iteration']], abs=1.01 / words)


def test_data_vocabularies_and_leftovers(study):
    output, result = study
    data = output / 'data'
    vocab = (data / 'vocab_train.txt').read_text().split()
    unseen = (data / 'vocab_oov_words.txt').read_text().split()
    randoms = (data / 'vocab_oov_random.txt').read_text().split()
    assert len(vocab) == len(unseen) == len(randoms) == 20
    assert not set(vocab) & set(unseen) and not set(vocab) & set(randoms)
    assert Counter(map(len, vocab)) == Counter(map(len, unseen)) == Counter(map(len, randoms))
    assert all(c in ox.RANDOM_ALPHABET for w in randoms for c in w)
    for name in ('curves_steps.png', 'curves_wallclock.png', 'tsne_oov_words.png', 'tsne_oov_random.png'):
        image = matplotlib.image.imread(output / name)
        assert image.ndim == 3 and image.shape[0] > 100, name
    for run in ('abinet', 'conclr', 'abinet_wall'):
        workdir = output / 'runs' / 'seed0' / run
        assert (workdir / 'train.txt').is_file() and list(workdir.glob('events.out.tfevents.*'))
        assert (workdir / 'eval' / 'final' / 'test.txt').is_file()
        assert len(list(workdir.glob('*.pth'))) == 1  # only the final checkpoint is kept
    assert result['environment']['torch'] and result['wall_seconds'] > 0


def test_a_second_run_into_the_same_folder_needs_overwrite(study, capsys):
    output, _ = study
    assert ox.main(['--preset', str(TINY), '--output', str(output)]) == 2
    assert 'not empty' in capsys.readouterr().err


# ---------------------------------------------------------------- pure pieces


def test_length_counts_are_proportional_with_largest_remainder():
    lengths = [3, 3, 4, 5]
    assert ox.length_counts(lengths, 8) == {3: 4, 4: 2, 5: 2}
    assert ox.length_counts(lengths, 6) == {3: 3, 4: 2, 5: 1}  # 3, 1.5, 1.5: the tie goes to the shorter
    assert ox.length_counts(lengths, 1) == {3: 1, 4: 0, 5: 0}


def test_oov_words_are_unseen_with_the_vocabularys_length_histogram():
    pool = ['cat', 'dog', 'owl', 'ant', 'bee', 'lion', 'bear', 'wolf', 'deer', 'horse', 'zebra', 'tiger']
    vocab = ['cat', 'dog', 'lion', 'horse']
    words = ox.oov_words(pool, vocab, 4, ox.np.random.default_rng(0))
    assert len(set(words)) == 4 and not set(words) & set(vocab)
    assert Counter(map(len, words)) == {3: 2, 4: 1, 5: 1}
    assert set(words) <= set(pool)
    with pytest.raises(ox.ExperimentError, match='3 letters'):
        ox.oov_words(pool, vocab, 8, ox.np.random.default_rng(0))  # needs 4 unseen 3-letter words, has 3


def test_random_strings_are_distinct_and_avoid_the_excluded():
    assert ox.random_strings({2: 3}, ox.np.random.default_rng(0), exclude=['aa'], alphabet='ab') == ['ab', 'ba', 'bb']
    with pytest.raises(ox.ExperimentError):
        ox.random_strings({2: 5}, ox.np.random.default_rng(0), alphabet='ab')  # only 4 exist
    out = ox.random_strings({3: 5, 4: 2}, ox.np.random.default_rng(1))
    assert Counter(map(len, out)) == {3: 5, 4: 2} and len(set(out)) == 7


def test_mean_and_spread_over_seeds():
    mean, sd = ox.mean_spread([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7) and sd == pytest.approx(0.2)
    assert ox.mean_spread([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert ox.mean_spread([0.4]) == (0.4, None)
    assert ox.fmt(0.7, 0.2) == '70.00 ± 20.00' and ox.fmt(-0.05, None, signed=True) == '-5.00'


def test_equal_wall_clock_steps():
    assert ox.equal_wall_steps(100, 300.0, 100.0) == 300  # ConCLR 3 s/step, ABINet 1 s/step
    assert ox.equal_wall_steps(100, 250.0, 30.0) == 833  # 250 / 0.3 = 833.3
    assert ox.equal_wall_steps(30, 3.0, 1.0) == 90
    with pytest.raises(ValueError):
        ox.equal_wall_steps(10, 0.0, 1.0)


def test_save_period_keeps_at_most_the_curve_points_and_aligns_with_logging():
    assert ox.save_period(30, 3, 10) == 10
    assert ox.save_period(83, 3, 10) == 30  # checkpoints at 30, 60 and the final 83
    assert ox.save_period(1100, 5, 50) == 250  # 250, 500, 750, 1000, 1100


def test_training_and_evaluation_seconds_from_a_log():
    log = '\n'.join([
        '[2026-01-01 00:00:01 INFO] epoch 0 iter 10: loss = 3.0, lr = 1.00e-03, 80.0 img/s',
        '[2026-01-01 00:00:02 INFO] epoch 0 iter 10: eval loss = 2.0, cwr = 0.1 (1.5 s)',
        '[2026-01-01 00:00:04 INFO] epoch 0 iter 20: loss = 2.5, rec_loss = 2.0, lr = 1.00e-03, 40.0 img/s, '
        'data 0.1 s / compute 1.9 s',
        '[2026-01-01 00:00:06 INFO] epoch 1 iter 25: loss = 2.4, lr = 1.00e-04, 20.0 img/s',
        '[2026-01-01 00:00:07 INFO] epoch 1 iter 25: eval loss = 1.9, cwr = 0.2 (0.5 s)',
    ])
    # batch 8: 10 x 8 / 80 + 10 x 8 / 40 + 5 x 8 / 20 = 1 + 2 + 2 seconds
    assert ox.window_seconds(log, 8) == pytest.approx(5.0)
    assert ox.eval_seconds(log) == pytest.approx(2.0)
    assert ox.window_seconds('no speed here', 8) is None


# ---------------------------------------------------------------- presets


def _preset(tmp_path, **changes):
    data = yaml.safe_load(TINY.read_text())
    for dotted, value in changes.items():
        ox.set_nested(data, dotted.replace('__', '.'), value)
    path = tmp_path / 'preset.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize('changes, message', [
    ({'experiment__vocab_sise': 5}, "did you mean 'vocab_size'"),
    ({'experiment__curve_points': 6}, 'curve_points'),
    ({'experiment__seeds': 'zero'}, 'expects list'),
    ({'config__dataset__test__roots': ['x']}, 'the tool sets itself'),
    ({'config__optimizer__scheduler__periods': [1, 1]}, 'decay_at replaces'),
    ({'models__other': {}}, 'exactly'),
    ({'extra': 1}, 'unknown part'),
])
def test_bad_presets_are_refused_with_a_clear_error(tmp_path, changes, message):
    with pytest.raises(ox.ExperimentError, match=message):
        ox.load_preset(_preset(tmp_path, **changes))


def test_an_unknown_project_key_fails_before_any_data_is_made(tmp_path, capsys):
    path = _preset(tmp_path, config__training__max_iter=5)
    assert ox.main(['--preset', str(path), '--output', str(tmp_path / 'out')]) == 2
    assert "unknown key 'training_max_iter'" in capsys.readouterr().err
    assert not (tmp_path / 'out' / 'data').exists()


@pytest.mark.parametrize('name', ['experiment_tiny.yaml', 'experiment_cpu.yaml', 'experiment_gpu.yaml'])
def test_presets_make_valid_project_configs(tmp_path, name):
    experiment, shared, models = ox.load_preset(REPO / 'configs' / name)
    steps = shared['training']['max_iters']
    for run in ox.MODELS:
        path = ox.run_config(shared, models[run], tmp_path, 0, run, steps, 100, 'train', ['a', 'b', 'c'],
                             experiment['decay_at'], experiment['curve_points'])
        config = Config(path)
        assert config.training_max_iters == steps
        assert sum(config.optimizer_scheduler_periods) * 100 >= steps  # the lr schedule does not end the run early
        assert ('ConCLR' in config.model_name) == (run == 'conclr')
