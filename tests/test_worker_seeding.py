"""DataLoader workers: every random source seeded distinctly per worker and per rank, one OpenCV thread each."""

from __future__ import annotations

import random

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from configuration import resolve_path
from dataset import ImageDataset
from tests.helpers import render_lmdb
from training.loaders import limit_opencv_threads, seed_worker
from transforms import TrainAugment
from utils import CharsetMapper


class _Probe(Dataset):
    """Returns one draw of every global random source and OpenCV's thread count, from whichever worker."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[float, float, float, int]:
        return random.random(), float(np.random.random()), float(torch.rand(())), cv2.getNumThreads()


def _load(dataset: Dataset, monkeypatch, rank: int, **kwargs) -> list:
    monkeypatch.setenv('RANK', str(rank))  # what torchrun sets; the forked workers inherit it
    torch.manual_seed(0)  # every rank of a run shares the seed, hence the loader's base seed
    limit_opencv_threads()  # as main.py does before its loaders fork workers
    loader = DataLoader(dataset, batch_size=None, num_workers=2, worker_init_fn=seed_worker, **kwargs)
    return list(loader)


def test_every_worker_and_rank_draws_different_numbers(monkeypatch):
    draws = [d for rank in (0, 1) for d in _load(_Probe(), monkeypatch, rank)]  # 2 ranks x 2 workers x 2 items
    for source in range(3):
        values = [d[source] for d in draws]
        assert len(set(values)) == len(values), (source, values)
    assert all(d[3] == 1 for d in draws)


def test_workers_never_return_the_same_augmented_image(tmp_path, monkeypatch):
    path = render_lmdb(tmp_path / 'one', 1, seed=0)
    charset = CharsetMapper(resolve_path('data/charset_36.txt'))
    dataset = ImageDataset(path, charset, is_training=True, data_aug=True, img_h=16, img_w=48, seed=0)
    dataset.augment = TrainAugment(geometry_p=1.0, deterioration_p=1.0, color_p=1.0)  # never the plain image
    same_index = [0] * 12  # 12 draws of the same sample spread over 2 workers, on each of 2 ranks
    images = [image for rank in (0, 1) for image, _ in _load(dataset, monkeypatch, rank, sampler=same_index)]
    assert len(images) == 24
    assert len({image.numpy().tobytes() for image in images}) == 24
