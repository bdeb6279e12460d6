"""The study's data: a vocabulary V, its out-of-vocabulary sets, their renders, and the real benchmarks' lexicon split.

Synthetic test sets, each rendered like the training set:
  iv          new renders of V
  oov_words   English words not in V
  oov_random  random strings over V's own alphabet (context, not unseen characters, differs from V)
  oov_chars   random strings that each hold at least one character V never shows (digits, for English words)
All OOV vocabularies have V's length histogram.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import string
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from dataset import close_lmdb, open_lmdb
from experiments.oov_study.preset import ExperimentError
from runtime.atomic_file import write_json_atomically
from tools.lmdb_writer import write_lmdb
from tools.synth.fonts import find_fonts
from tools.synth.splits import render_split

SYNTHETIC_SETS = ('iv', 'oov_words', 'oov_random', 'oov_chars')
SET_LABELS = {'iv': 'IV', 'oov_words': 'OOV-words', 'oov_random': "OOV-random (V's alphabet)",
              'oov_chars': 'OOV-unseen-characters'}
FULL_ALPHABET = string.ascii_lowercase + string.digits  # what the 36-class charset reads
BENCHMARK_ORDER = ('IIIT5k_3000', 'SVT', 'IC13_857', 'IC15_2077', 'SVTP', 'CUTE80')
DATA_KEYS = ('min_len', 'max_len', 'train_images', 'test_images', 'oov_vocab_size', 'curve_images', 'data_seed',
             'image_height')


@lru_cache(maxsize=1)
def dictionary_words() -> tuple[str, ...]:
    """Lower-case alphabetic English words (the `english_words` package's web2 list), sorted."""
    from english_words import get_english_words_set

    return tuple(sorted(w for w in get_english_words_set(['web2'], lower=True, alpha=True) if w.isascii()))


def length_counts(lengths: Sequence[int], n: int) -> dict[int, int]:
    """How many of `n` items get each length so their histogram is proportional to `lengths`' (largest
    remainder; ties go to the shorter length)."""
    hist = Counter(lengths)
    total = sum(hist.values())
    if not total:
        raise ValueError('no lengths to match')
    quotas = {k: n * c / total for k, c in sorted(hist.items())}
    counts = {k: math.floor(q) for k, q in quotas.items()}
    left = n - sum(counts.values())
    for k in sorted(quotas, key=lambda k: (-(quotas[k] - counts[k]), k))[:left]:
        counts[k] += 1
    return counts


def nested_vocabulary(pool: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    """The first `n` words of one random order of `pool`: with the same rng seed a smaller V is part of a larger."""
    if n > len(pool):
        raise ExperimentError(f'only {len(pool)} dictionary words fit the length range, asked for {n}')
    order = rng.permutation(len(pool))
    return sorted(pool[i] for i in order[:n])


def oov_words(pool: Sequence[str], vocab: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    """`n` distinct words of `pool` not in `vocab`, with vocab's length histogram (length_counts)."""
    seen = set(vocab)
    words = []
    for length, count in length_counts([len(w) for w in vocab], n).items():
        candidates = sorted({w for w in pool if len(w) == length and w not in seen})
        if count > len(candidates):
            raise ExperimentError(f'only {len(candidates)} unseen words of {length} letters, asked for {count}')
        words += [candidates[i] for i in rng.choice(len(candidates), size=count, replace=False)]
    return sorted(words)


def random_strings(counts: dict[int, int], rng: np.random.Generator, alphabet: str, exclude: Sequence[str] = (),
                   must_hold: str = '') -> list[str]:
    """Distinct random strings over `alphabet`, counts[L] of each length L, none in `exclude`; with `must_hold`,
    each string holds at least one of its characters (drawn by rejection)."""
    taken = set(exclude)
    out: list[str] = []
    for length, count in sorted(counts.items()):
        possible = len(alphabet) ** length - (len(set(alphabet) - set(must_hold)) ** length if must_hold else 0)
        if count > possible - sum(len(w) == length for w in taken):
            raise ExperimentError(f'cannot draw {count} distinct strings of {length} characters over {alphabet!r}')
        made = 0
        while made < count:
            word = ''.join(alphabet[i] for i in rng.integers(len(alphabet), size=length))
            if word not in taken and (not must_hold or set(word) & set(must_hold)):
                taken.add(word)
                out.append(word)
                made += 1
    return sorted(out)


def vocabularies(e: dict[str, Any], vocab_size: int) -> dict[str, list[str]]:
    """V and the three OOV vocabularies of one |V| (deterministic in data_seed)."""
    seed = e['data_seed']
    pool = [w for w in dictionary_words() if e['min_len'] <= len(w) <= e['max_len']]
    vocab = nested_vocabulary(pool, vocab_size, np.random.default_rng([seed, 10]))
    unseen = oov_words(pool, vocab, e['oov_vocab_size'], np.random.default_rng([seed, 11]))
    counts = length_counts([len(w) for w in vocab], e['oov_vocab_size'])
    alphabet = ''.join(sorted(set(''.join(vocab))))
    randoms = random_strings(counts, np.random.default_rng([seed, 12]), alphabet, exclude=set(vocab) | set(unseen))
    missing = ''.join(c for c in FULL_ALPHABET if c not in alphabet)
    if not missing:
        raise ExperimentError(f'V ({vocab_size} words) uses every character of {FULL_ALPHABET!r}: no unseen ones')
    chars = random_strings(counts, np.random.default_rng([seed, 13]), FULL_ALPHABET, must_hold=missing)
    return {'train': vocab, 'oov_words': unseen, 'oov_random': randoms, 'oov_chars': chars}


def copy_prefix(src: Path, dst: Path, count: int) -> int:
    """Write the first `count` samples of LMDB `src` into a new LMDB `dst` (bytes as they are)."""
    env = open_lmdb(src)
    samples = []
    with env.begin() as txn:
        for index in range(1, count + 1):
            image, label = txn.get(f'image-{index:09d}'.encode()), txn.get(f'label-{index:09d}'.encode())
            samples.append((bytes(image), bytes(label).decode('utf-8')))
    close_lmdb(src)
    return write_lmdb(dst, samples, check_images=False)


def lmdb_digest(root: Path) -> str:
    """sha256 over an ABINet-layout LMDB's samples (label and image bytes, in index order): equal digests mean
    equal data, whichever machine rendered it."""
    digest = hashlib.sha256()
    env = open_lmdb(root)
    with env.begin() as txn:
        count = int(txn.get(b'num-samples'))
        for index in range(1, count + 1):
            for kind in (b'label', b'image'):
                value = bytes(txn.get(b'%s-%09d' % (kind, index)))
                digest.update(len(value).to_bytes(8, 'little'))
                digest.update(value)
    close_lmdb(root)
    return digest.hexdigest()


def build_data(e: dict[str, Any], vocab_size: int, folder: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Vocabularies and LMDBs of one |V| under `folder` (reused when its manifest has the same settings):
    train, the SYNTHETIC_SETS and their `<set>_curve` prefixes. Returns the manifest (paths relative to `folder`);
    its `digest` (of the training LMDB) tells runs rendered on different machines apart, and `test_digests` (of
    each of the SYNTHETIC_SETS) the sets they were evaluated on."""
    manifest_path = folder / 'manifest.json'
    wanted = {'vocab_size': vocab_size, **{k: e[k] for k in DATA_KEYS}}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get('settings') == wanted:
            if 'digest' not in manifest or 'test_digests' not in manifest:  # rendered before digests were kept
                manifest['digest'] = lmdb_digest(folder / 'train')
                manifest['test_digests'] = {name: lmdb_digest(folder / name) for name in SYNTHETIC_SETS}
                write_json_atomically(manifest_path, manifest)
            return manifest
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    vocabs = vocabularies(e, vocab_size)
    for name, words in vocabs.items():
        (folder / f'vocab_{name}.txt').write_text(''.join(w + '\n' for w in words), encoding='utf-8')
    fonts = find_fonts()
    if not fonts:
        raise ExperimentError('no usable TTF/OTF font found (looked in matplotlib and /usr/share/fonts)')
    plan = [('train', e['train_images'], vocabs['train'])] + [
        (name, e['test_images'], vocabs['train' if name == 'iv' else name]) for name in SYNTHETIC_SETS]
    sets = {}
    for split_id, (name, num, words) in enumerate(plan):
        render_split(folder / name, num, e['data_seed'], split_id, words, fonts, e['image_height'],
                     e['render_workers'])
        sets[name] = {'path': name, 'images': num, 'vocabulary': len(words)}
    for name in SYNTHETIC_SETS:
        copy_prefix(folder / name, folder / f'{name}_curve', e['curve_images'])
        sets[f'{name}_curve'] = {'path': f'{name}_curve', 'images': e['curve_images'],
                                 'vocabulary': sets[name]['vocabulary']}
    manifest = {'settings': wanted, 'sets': sets, 'fonts': len(fonts), 'digest': lmdb_digest(folder / 'train'),
                'test_digests': {name: lmdb_digest(folder / name) for name in SYNTHETIC_SETS},
                'seconds': time.perf_counter() - start,
                'alphabet': ''.join(sorted(set(''.join(vocabs['train'])))),
                'length_histogram': {name: dict(sorted(Counter(map(len, words)).items()))
                                     for name, words in vocabs.items()}}
    write_json_atomically(manifest_path, manifest)
    say(f'rendered the data of |V| = {vocab_size} into {folder} in {manifest["seconds"]:.0f} s')
    return manifest


def read_vocabulary(folder: Path, name: str = 'train') -> list[str]:
    """A vocabulary build_data wrote."""
    return (folder / f'vocab_{name}.txt').read_text(encoding='utf-8').split()


def find_benchmarks(folder: Path) -> list[Path]:
    """LMDB folders (holding data.mdb) under `folder`, the usual six in their usual order first."""
    if not folder.is_dir():
        return []
    found = {p.name: p for p in folder.iterdir() if (p / 'data.mdb').is_file()}
    order = [n for n in BENCHMARK_ORDER if n in found] + sorted(set(found) - set(BENCHMARK_ORDER))
    return [found[n] for n in order]


def lexicon_split(predictions: Path, lexicon: set[str]) -> dict[str, dict[str, float | int]]:
    """Word accuracy of the samples whose (lower-case) label is in `lexicon` and of the others, from a per-sample
    predictions file of main.test (Wan et al., CVPR 2020: vocabulary reliance on real words)."""
    parts: dict[str, list[int]] = {'in': [], 'out': []}
    with open(predictions, encoding='utf-8', newline='') as f:
        for row in csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE):
            parts['in' if row['ground_truth'].lower() in lexicon else 'out'].append(int(row['correct']))
    return {part: {'cwr': sum(v) / len(v) if v else math.nan, 'samples': len(v)} for part, v in parts.items()}
