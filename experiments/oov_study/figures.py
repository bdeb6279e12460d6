"""The study's figures: learning curves per synthetic set and the t-SNE pair of character glimpses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from configuration import Config
from dataset import ImageDataset, dataset_kwargs
from experiments.oov_study.data import SET_LABELS, SYNTHETIC_SETS
from training.builders import build_model
from utils import CharsetMapper


def plot_curves(columns: dict[str, dict[int, dict[str, Any]]], labels: dict[str, str], path: Path,
                wall_clock: bool = False) -> Path:
    """cwr on the curve subsets against steps (or training seconds): a panel per set, a line per arm and seed."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SYNTHETIC_SETS), figsize=(5.0 * len(SYNTHETIC_SETS), 4.2), squeeze=False)
    colours = {arm: plt.get_cmap('tab10')(i % 10) for i, arm in enumerate(columns)}
    for ax, name in zip(axes[0], SYNTHETIC_SETS):
        top = 5.0
        for arm, records in columns.items():
            for k, record in enumerate(records.values()):
                scale = record['seconds_per_step'] if wall_clock else 1
                xs = [p['iteration'] * scale for p in record['curve']]
                ys = [100 * p[f'{name}_curve']['cwr'] for p in record['curve']]
                ax.plot(xs, ys, marker='o', ms=3, color=colours[arm], alpha=0.8, label=labels[arm] if k == 0 else None)
                top = max(top, *ys)
        ax.set_ylim(-0.02 * top, min(100.0, 1.1 * top))  # lines at 0 stay visible above the axis
        ax.set_title(f'{SET_LABELS[name]} (curve subset)')
        ax.set_xlabel('training seconds (evaluation excluded)' if wall_clock else 'optimiser steps')
        ax.set_ylabel('word accuracy (cwr) %')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def tsne_pair(pair: list[tuple[str, dict[str, Any]]], output: Path, data: Path, count: int,
              device: torch.device) -> list[str]:
    """t-SNE of the character glimpses of two runs' final models on each OOV set, side by side (tools/tsne.py);
    `pair` holds (title, run record); returns the PNG names written into `output`."""
    from threadpoolctl import threadpool_limits

    from tools.glimpse_tsne import plot_panels, tsne_points

    written = []
    for name in SYNTHETIC_SETS[1:]:
        panels, chars = [], None
        for title, record in pair:
            config = Config(output / record['config'])
            config.model_checkpoint = str(output / record['checkpoint'])
            charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
            chars = chars or charset.chars[1:]
            dataset = ImageDataset(data / name, charset, False, **dataset_kwargs(config, False))
            model = build_model(config).to(device).eval()
            # sklearn's OpenMP threads beyond torch's share of the cores made t-SNE 10x slower on a loaded machine
            with threadpool_limits(limits=torch.get_num_threads(), user_api='openmp'):
                points, labels = tsne_points(model, dataset, charset, count,
                                             case_sensitive=config.dataset_eval_case_sensitive, device=device)
            panels.append((f'{title}, {record["steps"]} steps', points, labels))
        path = plot_panels(panels, output / f'tsne_{name}.png', chars)
        written.append(path.name)
    return written
