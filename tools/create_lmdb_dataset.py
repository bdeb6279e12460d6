"""Write word images and their labels into an ABINet/clovaai-layout LMDB.

Layout: `num-samples` -> decimal count; `image-%09d` -> encoded image bytes; `label-%09d` -> UTF-8
label; indices start at 1.

    python -m tools.create_lmdb_dataset --input_dir DIR --gt_file FILE --output DIR

where every line of FILE is `relative/path<TAB>label`.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Iterator

import lmdb

from tools.lmdb_writer import image_decodes, write_lmdb


def read_gt_file(gt_file: str | os.PathLike) -> list[tuple[str, str]]:
    """Parse `relative/path<TAB>label` lines (blank lines skipped) into (path, label) pairs."""
    pairs = []
    with open(gt_file, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip('\r\n')
            if not line.strip():
                continue
            if '\t' not in line:
                raise ValueError(f'{gt_file}:{lineno}: expected "relative/path<TAB>label", got {line!r}')
            path, label = line.split('\t', 1)
            pairs.append((path, label))
    return pairs


def _read_samples(input_dir: Path, pairs: list[tuple[str, str]], check_images: bool = True
                  ) -> Iterator[tuple[bytes, str]]:
    """(image bytes, label) of every readable file of `pairs`; a warning naming the file for each one skipped."""
    for rel_path, label in pairs:
        path = input_dir / rel_path
        if not path.is_file():
            warnings.warn(f'{path} does not exist; skipped', stacklevel=2)
            continue
        try:
            data = path.read_bytes()
        except OSError as e:
            warnings.warn(f'{path} cannot be read ({e.strerror}); skipped', stacklevel=2)
            continue
        if check_images and not image_decodes(data):
            warnings.warn(f'{path} (label {label!r}) is not a decodable image; skipped', stacklevel=2)
            continue
        yield data, label


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    return f'warning: {message}\n'


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--input_dir', required=True, help='folder the image paths of the gt file are relative to')
    parser.add_argument('--gt_file', required=True, help='text file of "relative/path<TAB>label" lines')
    parser.add_argument('--output', required=True, help='LMDB folder to create')
    parser.add_argument('--no_check', action='store_true', help='do not check that every image decodes')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output folder')
    args = parser.parse_args(argv)

    input_dir, gt_file = Path(args.input_dir), Path(args.gt_file)
    if not input_dir.is_dir():
        print(f'error: input folder not found: {input_dir}', file=sys.stderr)
        return 1
    if not gt_file.is_file():
        print(f'error: ground-truth file not found: {gt_file}', file=sys.stderr)
        return 1
    try:
        pairs = read_gt_file(gt_file)
        # images are checked while read, where the file name is known
        count = write_lmdb(args.output, _read_samples(input_dir, pairs, check_images=not args.no_check),
                           check_images=False, overwrite=args.overwrite)
    except (ValueError, OSError, lmdb.Error) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'wrote {count} of {len(pairs)} samples to {args.output}')
    return 0


if __name__ == '__main__':
    warnings.formatwarning = _one_line_warning  # the command line shows each skipped file on one line
    sys.exit(main())
