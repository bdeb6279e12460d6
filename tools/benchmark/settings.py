"""What one benchmark invocation measures (Settings) and the data it reads."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from configuration import REPO_ROOT

OFFICIAL_BATCH = 384  # the official training batch (dataset.train.batch_size in configs/template.yaml)
REAL_LMDB = REPO_ROOT / '..' / 'shared' / 'benchmarks' / 'IIIT5k_3000'
DEMO_SAMPLES = REPO_ROOT / '..' / 'shared' / 'samples' / 'abinet_demo'


@dataclass
class Settings:
    """Everything the sections need, from the command line."""

    device: torch.device
    size: str
    config_path: str | None
    batch: int
    steps: int
    warmup: int
    precisions: list[str]
    conaug_batch: int
    clr_n: int
    clr_loop_n: int
    lmdb: str | None
    loader_samples: int
    official_size: str
    official_probe_batch: int
    official_steps: int
    infer_batches: tuple[int, int]
    infer_repeats: int
    demo_copies: int
    quick: bool
    fit_batch: bool = False
    fit_memory: bool = False
    channels_last: bool = False
    loss_steps: int = 10
    loss_batch: int = 64
    learner_rounds: int = 3
    onnx_sizes: tuple[str, ...] = ('quarter', 'official')
    onnx_batches: tuple[int, ...] = (1, 32)
    official_root: str | None = None
    onnx_profile: bool = False


class BenchmarkError(ValueError):
    """A command-line value the benchmark cannot use (reported as one `error:` line, exit status 2)."""


def resolve_device(name: str) -> torch.device:
    """--device as a torch.device: `auto` takes CUDA when available; `cuda:N` must name a visible GPU."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchmarkError(f'--device {name!r}: expected cpu, cuda, cuda:N or auto') from None
    if device.type not in ('cpu', 'cuda'):
        raise BenchmarkError(f'--device {name!r}: expected cpu, cuda, cuda:N or auto')
    if device.type == 'cuda':
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BenchmarkError(f'--device {name}: no CUDA device is available (use --device cpu)')
        if (device.index or 0) >= count:
            raise BenchmarkError(f'--device {name}: only {count} CUDA device(s) visible, cuda:0 to cuda:{count - 1}')
    return device
