"""Test-wide settings: one torch thread (tiny ops on 2 shared cores run faster without thread contention)."""

import torch

torch.set_num_threads(1)
