"""Render synthetic word images offline (fonts already on the machine, no downloads) into train/test LMDBs.

    python -m tools.render_synthetic --output data/synth --num_train 20000 --num_test 1000 --seed 0
    python -m tools.render_synthetic --output data/scene --style scene --real_crops ../shared/training/IIIT5k_train

writes `<output>/train` and `<output>/test` (the test split is new renders of the same text source). The plain
style draws a font on a plain, gradient or noise background; the scene style (tools/synth) composes text effects
over photographs and real crops, seen through perspective, blur, low resolution and JPEG.
"""

from __future__ import annotations

import argparse
import os
import string
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from dataset import DatasetError
from tools.synth.corpus import Corpus, common_words
from tools.synth.fonts import coverage_line, find_fonts, text_alphabet
from tools.synth.scene import SceneRenderer, SceneStyle
from tools.synth.splits import render_split
from tools.synth.textures import TEXTURE_DIRS, colour_pairs, lmdb_images, load_textures, texture_files
from tools.synth.vocabulary import make_vocabulary, read_vocab


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--output', required=True, help='folder that gets train/ and test/ LMDBs')
    parser.add_argument('--num_train', type=int, default=20000)
    parser.add_argument('--num_test', type=int, default=1000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--vocab', help='word list to render (one per line); default: sample English words')
    parser.add_argument('--vocab_size', type=int, default=5000, help='words sampled when --vocab is not given')
    parser.add_argument('--vocab_kind', choices=('words', 'random'), default='words',
                        help='English words, or random letter-digit strings of the same length distribution')
    parser.add_argument('--vocab_out', help='write the vocabulary used here (one word per line)')
    parser.add_argument('--min_len', type=int, default=3)
    parser.add_argument('--max_len', type=int, default=12)
    parser.add_argument('--height', type=int, default=32, help='image height in pixels')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--overwrite', action='store_true', help='replace existing train/test LMDBs')
    parser.add_argument('--style', choices=('plain', 'scene'), default='plain',
                        help='plain: a font on a plain, gradient or noise background; scene: tools/synth')
    parser.add_argument('--feature', action='append', default=[], metavar='NAME=P',
                        help='scene style: probability of one feature (repeatable; names in tools/synth/scene.py)')
    parser.add_argument('--font_dirs', nargs='*', default=[], help='more folders to take fonts from')
    parser.add_argument('--texture_dirs', nargs='*', default=list(TEXTURE_DIRS),
                        help='scene style: folders of photographs and textures to cut surfaces from')
    parser.add_argument('--real_crops', nargs='*', default=[],
                        help='scene style: LMDBs of real training crops, used as surfaces and for colour pairs '
                             '(never a test set)')
    return parser.parse_args(argv)


def scene_setup(args: argparse.Namespace) -> tuple[SceneRenderer, Corpus | None]:
    """The scene renderer and, unless a vocabulary was given, the common-word corpus."""
    style = SceneStyle.parse(args.feature)
    textures = load_textures(texture_files(args.texture_dirs))
    crops = [img for path in args.real_crops for img in lmdb_images(path)]
    renderer = SceneRenderer(style, textures, crops, colour_pairs(crops))
    print(f'scene style: {len(textures)} textures, {len(crops)} real crops; {style}')
    return renderer, None if args.vocab else Corpus(common_words())


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the process exit status."""
    args = parse_args(argv)

    try:
        output = Path(args.output)
        for split in ('train', 'test'):
            if (output / split).exists() and not args.overwrite:
                raise ValueError(f'{output / split} already exists (pass --overwrite to replace it)')
        scene, corpus = scene_setup(args) if args.style == 'scene' else (None, None)
        if args.vocab:
            if not os.path.isfile(args.vocab):
                raise ValueError(f'vocabulary file not found: {args.vocab}')
            vocab = read_vocab(args.vocab)
            if not vocab:
                raise ValueError(f'vocabulary file is empty: {args.vocab}')
        elif corpus is not None:
            vocab = corpus.words  # the scene corpus's words (written by --vocab_out); labels come from the corpus
        else:
            vocab_rng = np.random.default_rng([args.seed, 2])
            vocab = make_vocabulary(args.vocab_size, args.min_len, args.max_len, vocab_rng, args.vocab_kind)
        fonts = find_fonts(args.font_dirs)
        if not fonts:
            raise ValueError('no usable TTF/OTF font found (looked in matplotlib and /usr/share/fonts)')
        if args.vocab_out:
            Path(args.vocab_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.vocab_out).write_text(''.join(w + '\n' for w in vocab), encoding='utf-8')
        if corpus is not None:
            print(coverage_line(fonts, text_alphabet([*corpus.words, string.ascii_letters + string.digits]),
                                'corpus alphabet'))
        else:
            print(coverage_line(fonts, text_alphabet(vocab), 'vocabulary'))
        used: Counter = Counter()
        for split_id, (split, num) in enumerate((('train', args.num_train), ('test', args.num_test))):
            used += render_split(output / split, num, args.seed, split_id, vocab, fonts, args.height, args.workers,
                                 args.overwrite, scene, corpus)
            print(f'wrote {num} images to {output / split}')
    except (ValueError, FileExistsError, DatasetError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    if corpus is not None:
        print(f'text: {len(corpus.words)} common English words, random strings and numbers')
    else:
        print(f'vocabulary: {len(vocab)} words' + (f' (written to {args.vocab_out})' if args.vocab_out else ''))
    print(f'fonts used ({len(fonts)}):')
    for i, path in enumerate(fonts):
        print(f'  {used[i]:7d}  {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
