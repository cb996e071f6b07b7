"""Column blocks for element-wise passes over a ``[T, P]`` gradient matrix.

On the CPU a temporary the size of the whole matrix costs more to allocate than to compute (page
faults); processing the columns in blocks keeps each block's temporaries in cache. Elsewhere one block.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

CPU_BLOCK = 8192  # columns per block on the CPU (the fastest of 4096-32768 for GradDrop at T = 40)


def column_blocks(columns: int, device: torch.device) -> Iterator[slice]:
    """Slices covering ``range(columns)`` (at least one, possibly empty)."""
    block = CPU_BLOCK if device.type == "cpu" else max(columns, 1)
    for start in range(0, max(columns, 1), block):
        yield slice(start, start + block)
