"""tools/memory_table: one row per recipe and GPU set-up from the estimator's smallest fitting accumulation."""

from __future__ import annotations

from tools.memory_table import Setup, recipe_row
from training.memory_estimate import GIB, MemoryEstimate


def test_rows_take_the_cards_amp_and_the_smallest_accumulation_that_fits():
    estimates = {None: MemoryEstimate(10**6, 0.2 * GIB, 0.0, 1, None),
                 'bf16': MemoryEstimate(10**6, 0.1 * GIB, 0.0, 1, 'bf16')}
    # 24 GB, bf16: 384 x 0.1 x 1.25 = 48 GiB does not fit in 23; 192 (24 GiB) neither; 128 (16 GiB) does
    row = recipe_row('r', Setup(1, 24, True, 'card'), estimates, 384)
    assert row.startswith('| r | 1 x 24 GB (card) | 1 | 128 | 3 | bf16 (auto) | ')
    # 4 x 11 GB without bf16: 96 per process x 0.2 x 1.25 = 24 GiB; 48 (12 GiB) does not fit in 10, 32 (8) does
    assert '| 4 | 32 | 3 | off (auto: no bf16) |' in recipe_row('r', Setup(4, 11, False, 'old'), estimates, 384)
    huge = {amp: MemoryEstimate(10**6, 50 * GIB, 0.0, 1, amp) for amp in (None, 'bf16')}
    assert 'does not fit' in recipe_row('r', Setup(1, 24, True, 'card'), huge, 384)
