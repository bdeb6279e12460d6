"""inference/pictures.py, TensorBoard images: the grid's layout and pixels, and an image TensorBoard's reader finds."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboardX import SummaryWriter

from configuration import Config
from inference.pictures import _spread, attention_grid, log_eval_images
from modules.model_vision import BaseVision
from utils import CharsetMapper

REPO = Path(__file__).resolve().parents[2]
CHARSET = REPO / 'data' / 'charset_36.txt'
VISION = {'resnet_widths': [4, 8, 8, 16, 16], 'resnet_layers': [1, 1, 1, 1, 1], 'd_model': 16, 'nhead': 2,
          'd_inner': 32, 'backbone_ln': 1, 'attention_channels': 8}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
BAND, SCALE, GAP = 18, 2, 4  # caption band height, picture magnification, columns between pictures


def constant_image(rgb: tuple[int, int, int], h: int = 32, w: int = 128) -> torch.Tensor:
    """A normalised 3 x h x w image of one colour."""
    return (torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand(3, h, w) / 255 - MEAN) / STD


def picture_height(text: str, slots: int) -> int:
    """gt band + prediction band + input, then one band and overlay per character and the end slot."""
    return BAND + (1 + min(len(text) + 1, slots)) * (BAND + 32 * SCALE)


def test_attention_grid_layout_and_pixels():
    colours = [(200, 100, 50), (10, 20, 30), (0, 255, 0)]
    images = torch.stack([constant_image(c) for c in colours])
    attn = torch.rand(3, 6, 8, 32, generator=torch.Generator().manual_seed(0))
    texts, gts = ['ab', '', 'xyz'], ['ab', 'q', 'xy']
    grid = attention_grid(images, attn, texts, gts, max_images=2)
    heights = [picture_height(t, 6) for t in texts[:2]]
    assert grid.dtype == np.uint8 and grid.shape == (max(heights), 2 * 128 * SCALE + GAP, 3)
    for k, colour in enumerate(colours[:2]):
        left = k * (128 * SCALE + GAP)
        inputs = grid[2 * BAND:2 * BAND + 32 * SCALE, left:left + 128 * SCALE]
        assert (np.abs(inputs.astype(int) - colour) <= 1).all()  # the input, magnified, under two caption bands
    assert (grid[:, 128 * SCALE:128 * SCALE + GAP] == 255).all()  # white gap
    assert (grid[heights[1]:, 128 * SCALE + GAP:] == 255).all()  # the shorter picture is padded white below

    all_three = attention_grid(images, attn, texts, None, max_images=8)
    assert all_three.shape == (max(picture_height(t, 6) for t in texts) - BAND, 3 * 128 * SCALE + 2 * GAP, 3)
    with pytest.raises(ValueError):
        attention_grid(images[:0], attn[:0], [], None)


class CopyCounter(torch.Tensor):
    """A tensor that counts the copies to the host made of it (and of the tensors derived from it)."""

    copies = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.cpu:
            cls.copies += 1
        return super().__torch_function__(func, types, args, kwargs or {})


def test_attention_maps_are_copied_to_the_host_once_per_batch():
    images = torch.stack([constant_image(c) for c in [(1, 2, 3), (4, 5, 6), (7, 8, 9)]])
    attn = torch.rand(3, 6, 8, 32, generator=torch.Generator().manual_seed(0))
    want = attention_grid(images, attn, ['abcd', 'xy', 'q'], None, max_images=3)
    CopyCounter.copies = 0
    got = attention_grid(images, attn.as_subclass(CopyCounter), ['abcd', 'xy', 'q'], None, max_images=3)
    assert CopyCounter.copies == 1  # not one per image and character slot
    assert np.array_equal(got, want)


def test_spread_picks_evenly_spaced_indices():
    assert _spread(10, 4) == [0, 3, 6, 9]
    assert _spread(3, 4) == [0, 1, 2]
    assert _spread(5, 1) == [0]


def test_log_eval_images_reaches_tensorboard(tmp_path):
    config_path = tmp_path / 'tiny.yaml'
    config_path.write_text(yaml.safe_dump({'dataset': {'max_length': 5, 'charset_path': str(CHARSET)},
                                           'model': {'vision': VISION}}))
    charset = CharsetMapper(CHARSET, 5)
    model = BaseVision(Config(config_path)).train()
    words = ['ab', 'cde', 'f', 'gh', 'ijk', 'lm']
    dataset = [(constant_image((20 * k, 100, 200 - 20 * k)), (charset.onehot(w)[0], torch.tensor(len(w) + 1)))
               for k, w in enumerate(words)]

    writer = SummaryWriter(str(tmp_path / 'tb'))
    grid = log_eval_images(writer, model, dataset, charset, step=7, max_images=3)
    writer.close()
    assert model.training  # mode restored

    events = EventAccumulator(str(tmp_path / 'tb'), size_guidance={'images': 0})
    events.Reload()
    assert 'eval/attention' in events.Tags()['images']
    (image,) = events.Images('eval/attention')
    assert image.step == 7 and (image.height, image.width) == grid.shape[:2]
    decoded = cv2.imdecode(np.frombuffer(image.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(decoded, grid)
    assert grid.shape[1] == 3 * 128 * SCALE + 2 * GAP

    # samples 0, 2 and 5 of the dataset (evenly spread), given as a batch, give the same grid
    picked = [dataset[i] for i in (0, 2, 5)]
    batch = (torch.stack([x for x, _ in picked]), (torch.stack([y[0] for _, y in picked]),
                                                  torch.stack([y[1] for _, y in picked])))

    class Recorder:
        def add_image(self, tag, img, step, dataformats):
            self.seen = (tag, img, step, dataformats)

    recorder = Recorder()
    log_eval_images(recorder, model.eval(), batch, charset, step=8, max_images=3)
    assert recorder.seen[0] == 'eval/attention' and recorder.seen[2:] == (8, 'HWC')
    np.testing.assert_array_equal(recorder.seen[1], grid)
    assert not model.training
