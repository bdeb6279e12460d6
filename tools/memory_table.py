"""The recipe table of docs/distributed.md: processes, batch per process, accumulation and amp for each shipped GPU
recipe on common GPU set-ups, from the memory estimate training itself checks (training/memory_estimate.py).

    python -m tools.memory_table [--device cpu]

Activations are measured on `--device` (the CPU by default: the saved tensors of a step, not its speed, so the
numbers hold for a GPU to within what cuDNN keeps beside them); each GPU's usable memory is its size less 1 GiB
(the CUDA context and other processes' share).
"""

from __future__ import annotations

import runtime.fastai_compat  # noqa: F401  (before fastai, which training.builders imports)

import argparse
from dataclasses import dataclass

import torch

from configuration import REPO_ROOT, Config
from training.builders import build_model, is_conclr
from training.memory_estimate import GIB, MemoryEstimate, fitting_accumulation, measure

RECIPES = ('pretrain_vision_model.yaml', 'conclr_pretrain_vision_model.yaml')
CONTEXT_GIB = 1.0


@dataclass(frozen=True)
class Setup:
    """A GPU set-up: how many cards, their memory, whether they compute in bf16 (Ampere or later)."""

    gpus: int
    gib: float
    bf16: bool
    example: str


SETUPS = (Setup(1, 24, True, 'RTX 3090 / 4090, A10'), Setup(1, 80, True, 'A100 / H100 80 GB'),
          Setup(4, 11, False, 'GTX 1080 Ti / RTX 2080 Ti'), Setup(8, 80, True, 'A100 / H100 80 GB'))


def recipe_row(name: str, setup: Setup, estimates: dict[str | None, MemoryEstimate], global_batch: int) -> str:
    """One table row: the smallest accumulation that fits with the card's amp (bf16 when it has it)."""
    amp = 'bf16' if setup.bf16 else None
    estimate = estimates[amp]
    free = (setup.gib - CONTEXT_GIB) * GIB
    k = fitting_accumulation(estimate, global_batch, setup.gpus, free)
    if k is None:
        return f'| {name} | {setup.gpus} x {setup.gib:g} GB ({setup.example}) | - | - | - | does not fit | |'
    micro = global_batch // (setup.gpus * k)
    need = estimate.with_batch(micro).total / GIB
    return (f'| {name} | {setup.gpus} x {setup.gib:g} GB ({setup.example}) | {setup.gpus} | {micro} | {k} | '
            f'{"bf16 (auto)" if amp else "off (auto: no bf16)"} | {need:.1f} GiB |')


def table(device: torch.device) -> str:
    """The markdown table for every recipe and set-up."""
    lines = ['| recipe | GPUs | training.processes | images per process (micro-batch) | training.accumulate | '
             'training.amp | estimated per GPU |', '|---|---|---|---|---|---|---|']
    notes = []
    for recipe in RECIPES:
        config = Config(REPO_ROOT / 'configs' / recipe)
        model = build_model(config)
        views = 3 if is_conclr(model) else 1
        shape = (3, config.dataset_image_height, config.dataset_image_width)
        estimates = {amp: measure(model, shape, views, device, dtype, 1, amp)
                     for amp, dtype in ((None, None), ('bf16', torch.bfloat16))}
        for amp, e in estimates.items():
            notes.append(f'{recipe}: {e.parameters:,} parameters, {e.per_image / 2**20:.1f} MiB of saved activations '
                         f'per image (amp {amp or "off"}, {views} view(s))')
        for setup in SETUPS:
            lines.append(recipe_row(recipe.removesuffix('.yaml'), setup, estimates, config.dataset_train_batch_size))
    return '\n'.join(lines) + '\n\n' + '\n'.join(notes)


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu', help='where to measure the activations (default cpu)')
    args = parser.parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    print(table(torch.device(args.device)))


if __name__ == '__main__':
    main()
