"""t-SNE of per-character glimpse embeddings, one colour per character; two models side by side.

    python -m tools.tsne --config configs/pretrain_vision_model.yaml --checkpoint abinet.pth \
        --config2 configs/conclr_pretrain_vision_model.yaml --checkpoint2 conclr.pth \
        --lmdb data/evaluation/IIIT5k_3000 --output tsne.png --max_samples 500

A glimpse is the attention-weighted feature vector `feature[n, t]` (attn_vecs) the classifier reads for slot t;
the slots of the ground-truth characters (t < len(gt)) are embedded, labelled by their ground-truth character.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from configuration import Config, ConfigError
from dataset import DatasetError, ImageDataset, dataset_kwargs
from inference.loading import InferenceError, load_inference_model, select_device
from runtime.checkpoint import CheckpointError
from tools.glimpse_tsne import plot_panels, tsne_points
from utils import CharsetMapper


def model_title(config: Config, checkpoint: str) -> str:
    """`ConCLR-Vision` or `ABINet-Vision` after the config's model class, with the checkpoint file name."""
    kind = 'ConCLR-Vision' if 'conclr' in config.model_name.lower() else 'ABINet-Vision'
    return f'{kind}: {Path(checkpoint).name}'


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', required=True, help='config of the first model')
    parser.add_argument('--checkpoint', required=True, help='checkpoint of the first model')
    parser.add_argument('--config2', default=None, help='config of the second model (default: --config)')
    parser.add_argument('--checkpoint2', default=None, help='checkpoint of the second model, drawn on the right')
    parser.add_argument('--lmdb', required=True, help='LMDB of labelled word images (read as a test set)')
    parser.add_argument('--output', required=True, help='PNG to write')
    parser.add_argument('--max_samples', type=int, default=500, help='first this many samples of the LMDB')
    parser.add_argument('--only_correct', action='store_true', help='only samples the model reads right')
    parser.add_argument('--perplexity', type=float, default=30.0, help='t-SNE perplexity')
    parser.add_argument('--seed', type=int, default=0, help='t-SNE random state')
    parser.add_argument('--batch_size', type=int, default=64, help='images per forward pass')
    parser.add_argument('--cuda', type=int, default=-1, help='GPU index; -1 runs on the CPU')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends with one `error:` line on stderr and exit status 2."""
    args = parse_args(argv)
    try:
        if args.config2 and not args.checkpoint2:
            raise InferenceError('--config2 needs --checkpoint2')
        device = select_device(args.cuda)
        runs = [(Config(args.config), args.checkpoint)]
        if args.checkpoint2:
            runs.append((Config(args.config2 or args.config), args.checkpoint2))
        panels, chars = [], None
        for config, checkpoint in runs:
            charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
            chars = chars or charset.chars[1:]
            dataset = ImageDataset(args.lmdb, charset, False, **dataset_kwargs(config, False))
            model = load_inference_model(config, checkpoint, device)
            points, labels = tsne_points(model, dataset, charset, args.max_samples, args.only_correct,
                                         config.dataset_eval_case_sensitive, args.perplexity, args.seed,
                                         args.batch_size, device)
            panels.append((model_title(config, checkpoint), points, labels))
            print(f'{model_title(config, checkpoint)}: {len(points)} character glimpses', file=sys.stderr)
        path = plot_panels(panels, args.output, chars)
        print(f'wrote {path}', file=sys.stderr)
    except (InferenceError, ConfigError, CheckpointError, DatasetError, OSError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
