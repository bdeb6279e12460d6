"""Test-wide settings: one torch thread (tiny ops on 2 shared cores run faster without thread contention), and
tests marked `cuda` skipped unless their device (CONCLR_TEST_DEVICE, default cuda) is there."""

import os

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the `cuda` tests without a GPU; tools/gpu_check.py --dry-run points them at the CPU instead."""
    device = os.environ.get('CONCLR_TEST_DEVICE', 'cuda')
    if not device.startswith('cuda') or torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU (tools/gpu_check.sh runs these; its --dry-run runs '
                                   'test_cuda_path.py on the CPU)')
    for item in items:
        if item.get_closest_marker('cuda') is not None:
            item.add_marker(skip)
