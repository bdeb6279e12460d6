"""experiments/oov_study/data.py and the pure pieces of runs.py / report.py against hand-computed values."""

import math
from collections import Counter

import numpy as np
import pytest

from experiments.oov_study import data, report, runs
from experiments.oov_study.preset import ExperimentError


def test_length_counts_are_proportional_with_largest_remainder():
    lengths = [3, 3, 4, 5]
    assert data.length_counts(lengths, 8) == {3: 4, 4: 2, 5: 2}
    assert data.length_counts(lengths, 6) == {3: 3, 4: 2, 5: 1}  # 3, 1.5, 1.5: the tie goes to the shorter
    assert data.length_counts(lengths, 1) == {3: 1, 4: 0, 5: 0}


def test_nested_vocabularies_grow_by_adding_words():
    pool = [f'w{i:03d}' for i in range(50)]
    small, large = (data.nested_vocabulary(pool, n, np.random.default_rng(7)) for n in (5, 20))
    assert len(set(small)) == 5 and len(set(large)) == 20 and set(small) < set(large)
    with pytest.raises(ExperimentError, match='asked for 51'):
        data.nested_vocabulary(pool, 51, np.random.default_rng(0))


def test_oov_words_are_unseen_with_the_vocabularys_length_histogram():
    pool = ['cat', 'dog', 'owl', 'ant', 'bee', 'lion', 'bear', 'wolf', 'deer', 'horse', 'zebra', 'tiger']
    vocab = ['cat', 'dog', 'lion', 'horse']
    words = data.oov_words(pool, vocab, 4, np.random.default_rng(0))
    assert len(set(words)) == 4 and not set(words) & set(vocab) and set(words) <= set(pool)
    assert Counter(map(len, words)) == {3: 2, 4: 1, 5: 1}
    with pytest.raises(ExperimentError, match='3 letters'):
        data.oov_words(pool, vocab, 8, np.random.default_rng(0))  # needs 4 unseen 3-letter words, has 3


def test_random_strings_are_distinct_avoid_the_excluded_and_can_require_a_character():
    assert data.random_strings({2: 3}, np.random.default_rng(0), 'ab', exclude=['aa']) == ['ab', 'ba', 'bb']
    with pytest.raises(ExperimentError):
        data.random_strings({2: 5}, np.random.default_rng(0), 'ab')  # only 4 exist
    # over 'abc' with a 'c' in each: the 9 - 4 = 5 strings of length 2 that hold a 'c'
    assert data.random_strings({2: 5}, np.random.default_rng(3), 'abc', must_hold='c') == \
        ['ac', 'bc', 'ca', 'cb', 'cc']
    with pytest.raises(ExperimentError):
        data.random_strings({2: 6}, np.random.default_rng(0), 'abc', must_hold='c')
    out = data.random_strings({3: 5, 4: 2}, np.random.default_rng(1), 'xyz')
    assert Counter(map(len, out)) == {3: 5, 4: 2} and len(set(out)) == 7 and set(''.join(out)) <= set('xyz')


def test_lexicon_split_counts_words_in_and_out_of_the_lexicon(tmp_path):
    path = tmp_path / 'set.tsv'
    path.write_text('index\tground_truth\tprediction\tconfidence\tcorrect\n'
                    '0\tThe\tthe\t0.9\t1\n1\tcat\tcot\t0.5\t0\n2\tZebra\tzebra\t0.8\t1\n3\tdog"s\tdogs\t0.1\t0\n')
    split = data.lexicon_split(path, frozenset({'the', 'cat'}))
    assert split == {'in': {'cwr': 0.5, 'samples': 2}, 'out': {'cwr': 0.5, 'samples': 2}}
    assert math.isnan(data.lexicon_split(path, frozenset())['in']['cwr'])


def test_find_benchmarks_lists_lmdbs_in_the_usual_order(tmp_path):
    for name in ('SVT', 'extra', 'IIIT5k_3000', 'empty'):
        (tmp_path / name).mkdir()
        if name != 'empty':
            (tmp_path / name / 'data.mdb').write_bytes(b'')
    assert [p.name for p in data.find_benchmarks(tmp_path)] == ['IIIT5k_3000', 'SVT', 'extra']
    assert data.find_benchmarks(tmp_path / 'absent') == []


def test_mean_and_spread_over_seeds():
    mean, sd = report.mean_spread([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7) and sd == pytest.approx(0.2)
    assert report.mean_spread([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert report.mean_spread([0.4]) == (0.4, None)
    assert report.fmt(0.7, 0.2) == '70.00 ± 20.00' and report.fmt(-0.05, None, signed=True) == '-5.00'
    diff = report.paired({0: 1.0, 1: 2.0, 2: 5.0}, {1: 4.0, 2: 6.0, 3: 0.0}, lambda r: r)
    assert diff['values'] == {1: 2.0, 2: 1.0} and diff['mean'] == pytest.approx(1.5)


def test_equal_wall_clock_steps_and_save_period():
    assert runs.equal_wall_steps(100, 300.0, 100.0) == 300  # reference 3 s/step, baseline 1 s/step
    assert runs.equal_wall_steps(100, 250.0, 30.0) == 833  # 250 / 0.3 = 833.3
    with pytest.raises(ValueError):
        runs.equal_wall_steps(10, 0.0, 1.0)
    assert runs.save_period(30, 3, 10) == 10
    assert runs.save_period(83, 3, 10) == 30  # checkpoints at 30, 60 and the final 83
    assert runs.save_period(1100, 5, 50) == 250  # 250, 500, 750, 1000, 1100
    assert runs.training_seconds([{'seconds': 1.5, 'steps': 10}, {'seconds': 0.5, 'steps': 3}]) == (2.0, 13)


def _spec(arm, steps=100, model='m.A', seed=0, size=12):
    return runs.RunSpec(arm, seed, steps, size, {'model': {'name': model}})


def _finished(arm, steps, train, test, model='m.A', size=12):
    # main.train's wall time of a run resumed late covers only its last part: estimates must not use it
    return {'spec': _spec(arm, steps, model, size=size).as_dict(), 'steps': steps, 'train_seconds': train,
            'wall_seconds': train / 3, 'resumed_from': steps // 2, 'test_seconds': test}


def test_a_run_is_estimated_from_the_median_training_time_of_its_arm_else_of_its_model():
    finished = [_finished('a', 100, 50.0, 7.0), _finished('a', 200, 60.0, 9.0), _finished('b', 100, 400.0, 30.0),
                _finished('c', 100, 900.0, 80.0, model='m.C')]
    # arm a: 0.5 and 0.3 s per step, median 0.4; evaluation 7 and 9 s, median 8
    assert runs.estimate_seconds(_spec('a', 300), finished) == pytest.approx(0.4 * 300 + 8.0)
    assert runs.estimate_seconds(_spec('a', 300), finished, done=100) == pytest.approx(0.4 * 200 + 8.0)
    # a new arm of model m.A: runs a, a, b give 0.5, 0.3, 4.0 s per step (median 0.5) and 7, 9, 30 s (median 9)
    assert runs.estimate_seconds(_spec('new', 10), finished) == pytest.approx(0.5 * 10 + 9.0)
    assert runs.estimate_seconds(_spec('new', 10, model='m.Z'), finished) is None
    # runs of arm a at another |V| count only when none of the same |V| has finished
    slow = finished + [_finished('a', 100, 200.0, 20.0, size=50), _finished('a', 100, 300.0, 20.0, size=50)]
    assert runs.estimate_seconds(_spec('a', 300), slow) == pytest.approx(0.4 * 300 + 8.0)
    assert runs.estimate_seconds(_spec('a', 300, size=99), slow) == pytest.approx(1.25 * 300 + 14.5)


def test_cores_busy_is_cpu_seconds_per_second_over_the_windows_that_recorded_them():
    timings = [{'seconds': 10.0, 'steps': 5}, {'seconds': 4.0, 'cpu_seconds': 7.0, 'steps': 2},
               {'seconds': 6.0, 'cpu_seconds': 6.0, 'steps': 3}]
    assert runs.cores_busy(timings) == pytest.approx(13.0 / 10.0)
    assert runs.cores_busy(timings[:1]) is None


def test_runs_of_one_vocabulary_on_different_renders_are_flagged():
    def run(size, digest):
        return {'spec': {'vocab_size': size}, 'data_digest': digest}

    same = {'a': run(100, 'x'), 'b': run(100, 'x'), 'c': run(300, 'y'), 'd': run(300, None), 'e': run(1000, 'z')}
    assert report.mixed_data(same) == []
    assert report.mixed_data({**same, 'f': run(300, 'w'), 'g': run(1000, 'v')}) == [300, 1000]


def test_an_lmdb_digest_follows_the_samples_not_the_file(tmp_path):
    from tools.lmdb_writer import write_lmdb

    samples = [(b'image-one', 'cat'), (b'image-two', 'dog')]
    write_lmdb(tmp_path / 'a', samples, check_images=False)
    write_lmdb(tmp_path / 'b', samples, check_images=False)
    write_lmdb(tmp_path / 'c', [(b'image-one', 'cat'), (b'image-twO', 'dog')], check_images=False)
    # the same bytes in sequence ('ca' + 'timage-one' = 'cat' + 'image-one'): each value's length counts
    write_lmdb(tmp_path / 'd', [(b'timage-one', 'ca'), (b'image-two', 'dog')], check_images=False)
    digests = [data.lmdb_digest(tmp_path / n) for n in 'abcd']
    assert digests[0] == digests[1] and len(set(digests)) == 3
