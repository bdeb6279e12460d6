"""Draw a picture grid of labelled word images from LMDBs, one column per LMDB, to compare data sets by eye.

    python -m tools.sample_grid --lmdb data/scene300k/train ../shared/training/IC15_train --rows 12 \
        --titles 'scene renders' 'IC15_train (real)' --output docs/images/renders_vs_real.png
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import cv2
import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dataset import DatasetError, decode_image, open_lmdb

CELL_W, CELL_H, LABEL_H = 160, 40, 14
LABEL_FONT = os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'fonts', 'ttf', 'DejaVuSans.ttf')


def lmdb_samples(path: str, count: int, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """`count` (image, label) pairs drawn at random (without replacement) from an ABINet-layout LMDB."""
    env = open_lmdb(path)
    with env.begin() as txn:
        total = int(txn.get(b'num-samples'))
        picks = np.random.default_rng(seed).choice(total, size=min(count, total), replace=False) + 1
        samples = []
        for i in sorted(int(k) for k in picks):
            img = decode_image(txn.get(f'image-{i:09d}'.encode()))
            if img is not None:
                samples.append((img, txn.get(f'label-{i:09d}'.encode()).decode('utf-8', 'replace')))
    return samples


def grid(columns: Sequence[Sequence[tuple[np.ndarray, str]]], titles: Sequence[str]) -> Image.Image:
    """Columns of images, each fitted into CELL_W x CELL_H (aspect kept) with its label under it."""
    font = ImageFont.truetype(LABEL_FONT, 11)
    rows = max(len(c) for c in columns)
    out = Image.new('RGB', (len(columns) * (CELL_W + 8), LABEL_H + rows * (CELL_H + LABEL_H)), 'white')
    draw = ImageDraw.Draw(out)
    for x, (column, title) in enumerate(zip(columns, titles)):
        left = x * (CELL_W + 8)
        draw.text((left, 0), title[:30], fill='black', font=font)
        for y, (img, label) in enumerate(column):
            scale = min(CELL_W / img.shape[1], CELL_H / img.shape[0])
            size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
            cell = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            top = LABEL_H + y * (CELL_H + LABEL_H)
            out.paste(Image.fromarray(cell), (left, top))
            draw.text((left, top + CELL_H), label[:26], fill='black', font=font)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--lmdb', nargs='+', required=True, help='LMDBs to sample, one column each')
    parser.add_argument('--rows', type=int, default=12)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--titles', nargs='*', default=None, help='column titles (default: the LMDB paths)')
    parser.add_argument('--output', required=True, help='PNG to write')
    args = parser.parse_args(argv)
    try:
        columns = [lmdb_samples(path, args.rows, args.seed) for path in args.lmdb]
    except DatasetError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if args.titles is not None and len(args.titles) != len(args.lmdb):
        print(f'error: {len(args.titles)} --titles for {len(args.lmdb)} --lmdb columns', file=sys.stderr)
        return 2
    titles = args.titles or [os.path.normpath(p).replace('../shared/', '') for p in args.lmdb]
    os.makedirs(os.path.dirname(args.output) or '.', exist_ok=True)
    grid(columns, titles).save(args.output)
    print(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
