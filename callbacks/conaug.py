"""ConAug: context augmentation of a training batch (spec conclr.md section 1) and its fastai callback."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from fastai.callback import Callback

from inference.pictures import denormalize

SIDES = ('fixed', 'batch', 'sample')


def side_by_side(images: torch.Tensor, left_idx: torch.Tensor, right_idx: torch.Tensor) -> torch.Tensor:
    """[images[left_idx] | images[right_idx]] (M x 3 x H x 2W) resized back to M x 3 x H x W, bilinear.

    Resizing 2W columns to W with align_corners=False samples source column 2x + 0.5 (and keeps every row), so
    output column x is exactly the mean of pair columns 2x and 2x + 1, bit for bit what F.interpolate returns.
    It is computed as that mean because a batched F.interpolate on the CPU was slower than a per-sample loop:
    for an even W each word's half-width image is the mean of its own column pairs, computed once and gathered
    into place by one index_select over image rows.
    """
    n, c, h, w = images.shape
    if w % 2:  # the middle output column straddles the two images: average the pair itself
        pair = torch.cat([images[left_idx], images[right_idx]], dim=3)
        return ((pair[..., 0::2] + pair[..., 1::2]) * 0.5).contiguous()
    half = (images[..., 0::2] + images[..., 1::2]) * 0.5  # N x C x H x W/2
    rows = half.reshape(n * c * h, w // 2)
    m = left_idx.shape[0]
    src = torch.stack([left_idx, right_idx], dim=1).view(m, 1, 2) * (c * h)  # first row of each source image
    row_idx = (src + torch.arange(c * h, device=images.device).view(1, c * h, 1)).reshape(-1)  # (m, c*h, side)
    return rows.index_select(0, row_idx).view(m, c, h, w)


def _pair_up(images: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, left_idx: torch.Tensor,
             right_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows k = [images[left_idx[k]] | images[right_idx[k]]] with their targets; see `conaug`."""
    t_slots = labels.shape[1]
    device = images.device
    aug_images = side_by_side(images, left_idx, right_idx)

    chars = lengths.long() - 1
    chars_left = chars[left_idx]
    chars_right = chars[right_idx]
    t = torch.arange(t_slots, device=device).unsqueeze(0)  # 1 x T
    from_left = t < chars_left.unsqueeze(1)  # M x T
    src_sample = torch.where(from_left, left_idx.unsqueeze(1), right_idx.unsqueeze(1))
    src_slot = torch.where(from_left, t, t - chars_left.unsqueeze(1))  # always in [0, T)
    aug_labels = labels.to(device)[src_sample, src_slot].contiguous()

    total = chars_left + chars_right
    valid = total <= t_slots - 1
    aug_lengths = torch.clamp(total + 1, max=t_slots).to(lengths.dtype).contiguous()
    return aug_images, aug_labels, aug_lengths, valid.contiguous()


def _pair_indices(n: int, perm: torch.Tensor, partner_left: torch.Tensor, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(left_idx, right_idx) of one view: sample i sits right of perm[i] where partner_left[i], else left."""
    perm = perm.to(device=device, dtype=torch.long)
    partner_left = partner_left.to(device=device, dtype=torch.bool)
    own = torch.arange(n, device=device)
    return torch.where(partner_left, perm, own), torch.where(partner_left, own, perm)


def conaug(images: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, perm: torch.Tensor,
           partner_left: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ConAug view: pair sample i with perm[i] side by side; return (images, labels, lengths, valid).

    images N x 3 x H x W, labels N x T x C (one-hot or smoothed), lengths N (characters + 1), perm N partner
    indices, partner_left N bool (True: [partner | original], False: [original | partner]).
    The target holds the left word's characters, the right word's characters, then the right word's own end
    and padding slots, so length = chars(left) + chars(right) + 1. A pair with more than T - 1 characters is
    overlong: valid is False, its target holds the first T characters of the pair with no end slot (truncated)
    and its length is clamped to T; callers must leave it out of every loss.
    """
    left_idx, right_idx = _pair_indices(images.shape[0], perm, partner_left, images.device)
    return _pair_up(images, labels, lengths.to(images.device), left_idx, right_idx)


def conaug_views(images: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, perm1: torch.Tensor,
                 left1: torch.Tensor, perm2: torch.Tensor, left2: torch.Tensor
                 ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Both ConAug views of a batch, each equal to `conaug(images, labels, lengths, perm_k, left_k)`.

    Computed as one 2N-row pairing, so the half-width images are computed and gathered once for both views
    (ConAug is memory-bound on the CPU). Each returned tensor is a contiguous half of a 2N tensor.
    """
    n, device = images.shape[0], images.device
    l1, r1 = _pair_indices(n, perm1, left1, device)
    l2, r2 = _pair_indices(n, perm2, left2, device)
    both = _pair_up(images, labels, lengths.to(device), torch.cat([l1, l2]), torch.cat([r1, r2]))
    return tuple(t[:n] for t in both), tuple(t[n:] for t in both)


def _coins(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Fair boolean coin flips of `shape` drawn on `device` (the generator's device when one is given)."""
    return torch.randint(0, 2, shape, generator=generator, device=device).bool()


def draw_conaug_params(n: int, side: str = 'fixed', generator: torch.Generator | None = None,
                       device: torch.device | str | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw (perm1, left1, perm2, left2) for the two views of a batch of n; `side` is fixed | batch | sample.

    Without a generator they are drawn by `device`'s default generator right where the batch is (CPU when None):
    no copy, and no stream synchronisation, per step on a GPU. With a generator they are drawn on its device
    and moved to `device` (when given).
    """
    if side not in SIDES:
        raise ValueError(f'unknown conaug side {side!r}; expected one of {", ".join(SIDES)}')
    target = torch.device(device) if device is not None else None
    gen_device = generator.device if generator is not None else (target or torch.device('cpu'))
    perm1 = torch.randperm(n, generator=generator, device=gen_device)
    perm2 = torch.randperm(n, generator=generator, device=gen_device)
    if side == 'fixed':
        left1 = torch.zeros(n, dtype=torch.bool, device=gen_device)
        left2 = torch.ones(n, dtype=torch.bool, device=gen_device)
    elif side == 'batch':
        coins = _coins((2,), generator, gen_device)
        left1, left2 = coins[0].expand(n), coins[1].expand(n)
    else:
        left1, left2 = _coins((n,), generator, gen_device), _coins((n,), generator, gen_device)
    # .to copies only the draws of a generator on another device
    return tuple(p.to(target or gen_device).contiguous() for p in (perm1, left1, perm2, left2))


def make_conaug_grid(images: torch.Tensor, view1: torch.Tensor, view2: torch.Tensor, texts0: Sequence[str],
                     texts1: Sequence[str], texts2: Sequence[str], max_rows: int = 8) -> np.ndarray:
    """H x W x 3 uint8 picture: one row per sample with original, view 1, view 2 and their target texts."""
    rows = min(max_rows, images.shape[0])
    h, w = images.shape[2:]
    scale = max(1, 64 // h)
    text_h, gap, min_w = 22, 4, 160
    panel_w = max(w * scale, min_w)
    panels = [np.stack([denormalize(image.float()) for image in v[:rows]]) for v in (images, view1, view2)]
    texts = [texts0, texts1, texts2]
    cell_h = h * scale + text_h
    grid = np.full((rows * (cell_h + gap) + gap, 3 * (panel_w + gap) + gap, 3), 255, dtype=np.uint8)
    for r in range(rows):
        top = gap + r * (cell_h + gap)
        for c in range(3):
            left = gap + c * (panel_w + gap)
            img = cv2.resize(panels[c][r], (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
            grid[top:top + h * scale, left:left + w * scale] = img
            cv2.putText(grid, str(texts[c][r]), (left, top + h * scale + text_h - 6), cv2.FONT_HERSHEY_SIMPLEX,
                        0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return grid


class ConAugPretransform(Callback):
    """Turns each training batch (x, (y, l)) into three views; evaluation batches pass through untouched.

    fastai then calls model(x, x1, x2) and loss_func(output, y, l, y1, l1, v1, y2, l2, v2).
    """

    def __init__(self, side: str = 'fixed', charset: Any = None, test_conaug: bool = False,
                 workdir: str | Path | None = None, writer: Any = None, grid_batches: int = 1):
        if side not in SIDES:
            raise ValueError(f'unknown conaug side {side!r}; expected one of {", ".join(SIDES)}')
        if test_conaug and (charset is None or workdir is None):
            raise ValueError('test_conaug needs a charset and a workdir to write the ConAug grid')
        self.side = side
        self.charset = charset
        self.test_conaug = test_conaug
        self.workdir = Path(workdir) if workdir is not None else None
        self.writer = writer
        self.grid_batches = grid_batches
        self.grids_written = 0
        self._invalid = None  # 0-dim tensor; read through `invalid_rate` so no device sync per batch

    @property
    def invalid_rate(self) -> float:
        """Fraction of invalid (overlong) pairs over both views of the last training batch."""
        return float(self._invalid) if self._invalid is not None else 0.0

    def on_batch_begin(self, last_input: Any, last_target: Any, train: bool, **kwargs: Any) -> dict | None:
        """Replace a training batch by its three views; return None for evaluation batches."""
        if not train:
            return None
        x = last_input
        if isinstance(x, (list, tuple)):
            if len(x) != 1:
                raise ValueError(f'ConAug expects one input tensor, got {len(x)}')
            x = x[0]
        y, l = last_target[0], last_target[1]
        perm1, left1, perm2, left2 = draw_conaug_params(x.shape[0], self.side, device=x.device)
        (x1, y1, l1, v1), (x2, y2, l2, v2) = conaug_views(x, y, l, perm1, left1, perm2, left2)
        self._invalid = (torch.cat([~v1, ~v2]).float().mean()).detach()
        if self.test_conaug and self.grids_written < self.grid_batches:
            self._write_grid(x, x1, x2, y, y1, y2, v1, v2)
        return {'last_input': [x, x1, x2], 'last_target': (y, l, y1, l1, v1, y2, l2, v2)}

    def _texts(self, labels: torch.Tensor, valid: torch.Tensor | None = None) -> list[str]:
        """Decoded target texts of N x T x C labels, marking overlong pairs."""
        indices = labels.detach().argmax(-1).cpu()
        texts = [self.charset.decode(row.tolist()) for row in indices]
        if valid is not None:
            texts = [t if v else f'{t} [overlong]' for t, v in zip(texts, valid.cpu().tolist())]
        return texts

    def _write_grid(self, x, x1, x2, y, y1, y2, v1, v2) -> None:
        k = self.grids_written
        grid = make_conaug_grid(x, x1, x2, self._texts(y), self._texts(y1, v1), self._texts(y2, v2))
        self.workdir.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(self.workdir / f'conaug_grid_{k}.png'), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        if self.writer is not None:
            self.writer.add_image('conaug/grid', grid, k, dataformats='HWC')
        self.grids_written += 1
