"""t-SNE of a vision model's character glimpses (the attention-weighted features of each character slot) and
the side-by-side panels that plot them; tools/tsne.py is its command line."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dataset import ImageDataset
from modules.decoding import decode_logits
from utils import CharsetMapper

MIN_POINTS = 5  # fewer glimpses than this cannot make a t-SNE


def select_slots(features: torch.Tensor, gts: Sequence[str], preds: Sequence[str] | None = None,
                 only_correct: bool = False, case_sensitive: bool = False) -> tuple[np.ndarray, list[str]]:
    """Glimpses of the ground-truth characters: rows features[n, t] for t < len(gts[n]), with gts[n][t] as label.

    features: N x T x E. With `only_correct`, only samples whose prediction equals the ground truth count.
    """
    if only_correct and preds is None:
        raise ValueError('only_correct needs the predictions')
    rows, labels = [], []
    for n, gt in enumerate(gts):
        if only_correct:
            pred = preds[n]
            if (pred if case_sensitive else pred.lower()) != (gt if case_sensitive else gt.lower()):
                continue
        length = min(len(gt), features.shape[1])
        rows.append(features[n, :length])
        labels.extend(gt[:length])
    if not rows:
        return np.zeros((0, features.shape[-1]), dtype=np.float32), []
    return torch.cat(rows).detach().float().cpu().numpy(), labels


@torch.no_grad()
def collect_glimpses(model: torch.nn.Module, dataset: ImageDataset, charset: CharsetMapper, max_samples: int = 500,
                     only_correct: bool = False, case_sensitive: bool = False, batch_size: int = 64,
                     device: torch.device | str = 'cpu') -> tuple[np.ndarray, list[str]]:
    """Glimpse vectors (M x E) and their ground-truth characters over the first `max_samples` of a test-mode set."""
    model.eval()
    count = min(max_samples, len(dataset))
    vectors, labels = [], []
    for start in range(0, count, batch_size):
        indices = range(start, min(start + batch_size, count))
        images = torch.stack([dataset[i][0] for i in indices]).contiguous().to(device)
        out = model(images)
        preds, _, _ = decode_logits(out['logits'], charset)
        rows, chars = select_slots(out['feature'], [dataset.label(i) for i in indices], preds, only_correct,
                                   case_sensitive)
        vectors.append(rows)
        labels.extend(chars)
    return np.concatenate(vectors) if vectors else np.zeros((0, 0), dtype=np.float32), labels


def embed_2d(vectors: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """t-SNE of M x E vectors to M x 2 (perplexity lowered to (M - 1) / 3 for small M)."""
    from sklearn.manifold import TSNE

    m = len(vectors)
    if m < MIN_POINTS:
        raise ValueError(f'{m} character glimpse(s): too few for a t-SNE (at least {MIN_POINTS})')
    perplexity = min(perplexity, (m - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init='pca', learning_rate='auto', random_state=seed)
    return tsne.fit_transform(vectors.astype(np.float32))


def tsne_points(model: torch.nn.Module, dataset: ImageDataset, charset: CharsetMapper, max_samples: int = 500,
                only_correct: bool = False, case_sensitive: bool = False, perplexity: float = 30.0, seed: int = 0,
                batch_size: int = 64, device: torch.device | str = 'cpu') -> tuple[np.ndarray, list[str]]:
    """2-D t-SNE points (M x 2) of a model's character glimpses over a dataset, and their characters."""
    vectors, labels = collect_glimpses(model, dataset, charset, max_samples, only_correct, case_sensitive,
                                       batch_size, device)
    return embed_2d(vectors, perplexity, seed), labels


def char_colours(chars: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """One distinct RGBA colour per character of the charset (tab20 + tab20b + tab20c, rainbow beyond 60)."""
    from matplotlib import colormaps

    if len(chars) <= 60:
        palette = [colormaps[name](i) for name in ('tab20', 'tab20b', 'tab20c') for i in range(20)]
    else:
        palette = [colormaps['gist_rainbow'](i / max(len(chars) - 1, 1)) for i in range(len(chars))]
    return {c: palette[i] for i, c in enumerate(chars)}


def plot_panels(panels: Sequence[tuple[str, np.ndarray, Sequence[str]]], output: str | Path,
                chars: Sequence[str]) -> Path:
    """One scatter panel per (title, points, labels), coloured by character, each character written at the
    median of its points; saved as PNG."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.patheffects as patheffects
    import matplotlib.pyplot as plt

    colours = char_colours(chars)
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 7), squeeze=False)
    outline = [patheffects.withStroke(linewidth=3, foreground='white')]
    for ax, (title, points, labels) in zip(axes[0], panels):
        labels = np.asarray(labels)
        for c in chars:
            mine = points[labels == c]
            if not len(mine):
                continue
            ax.scatter(mine[:, 0], mine[:, 1], s=6, color=colours[c], alpha=0.7, linewidths=0)
            cx, cy = np.median(mine, axis=0)
            ax.text(cx, cy, c, fontsize=11, fontweight='bold', ha='center', va='center', color=colours[c],
                    path_effects=outline)
        ax.set_title(f'{title}\n{len(points)} character glimpses')
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output
