"""The shared base of the tasks that draw scikit-learn's 8×8 digits onto a larger canvas.

MultiDigits (:mod:`tasks.multi_digits`) and the detection proxy (:mod:`tasks.digit_boxes`) build a fixed,
seeded set of examples per split from the seeded train/val/test split of :mod:`tasks.digits`, so a
digit never crosses splits; this module holds what they share: the per-split data, the training
batches and a small convolutional trunk.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from types import MappingProxyType

import numpy as np
import torch
from torch import Tensor, nn

from benchmark.task import Batch, MultiTaskModel, Task
from tasks._checks import check_int
from tasks.digits import SPLITS, load_splits, shuffled_rows

DIGIT_SIZE = 8
"""Side of scikit-learn's digit images, in pixels."""


def conv_trunk(canvas: int, blocks: int, channels: int, hidden: int) -> nn.Sequential:
    """``[B, 1, canvas, canvas] -> [B, hidden]``: ``blocks`` × (3×3 conv, ReLU, 2×2 max-pool), the
    channels doubling from ``channels``, then a linear layer and ReLU."""
    layers: list[nn.Module] = []
    width, side = 1, canvas
    for block in range(blocks):
        out = channels * 2**block
        layers += [nn.Conv2d(width, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        width, side = out, side // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * side * side, hidden), nn.ReLU())


class CanvasTask(Task):
    """A task over fixed examples per split, built once from the digits split ``split_seed``.

    Subclasses implement :meth:`build_split`, which returns the split's named tensors (``inputs`` and
    the targets), each ``[N, ...]``; a training batch carries the same names (``batch["name"]``).
    """

    eval_splits = ("val", "test")

    def __init__(self, task_names: Sequence[str], split_seed: int) -> None:
        super().__init__(task_names)
        self.split_seed = check_int(self.name, "split_seed", split_seed, 0)

    def build_split(self, images: Tensor, labels: Tensor, rng: np.random.Generator) -> dict[str, Tensor]:
        """A split's examples from its digits ``images`` ``[N, 8, 8]`` in [0, 1] and ``labels`` ``[N]``;
        every random draw comes from ``rng``."""
        raise NotImplementedError

    @cached_property
    def data(self) -> Mapping[str, Mapping[str, Tensor]]:
        """``split -> {name: tensor}``, built on first use; the draws are seeded by (split_seed, split)."""
        built = {}
        for split, (images, labels) in load_splits(self.split_seed).items():
            rng = np.random.default_rng([self.split_seed, SPLITS.index(split)])
            side = (len(images), DIGIT_SIZE, DIGIT_SIZE)
            built[split] = MappingProxyType(self.build_split(images.view(side), labels, rng))
        return MappingProxyType(built)

    def split(self, name: str) -> Mapping[str, Tensor]:
        """The named tensors of split ``name``; an unknown split raises, naming it."""
        if name not in self.data:
            raise ValueError(f"{self.name}: unknown split {name!r}; one of {SPLITS}")
        return self.data[name]

    def steps_per_epoch(self, batch_size: int | None) -> int:
        return math.ceil(len(self.data["train"]["inputs"]) / self._batch_size(batch_size))

    def train_batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        """Shuffled epochs over the training examples, without end; ``None`` means the whole split."""
        train = self.data["train"]
        for rows in shuffled_rows(len(train["inputs"]), self._batch_size(batch_size), generator):
            yield Batch(**{name: values[rows] for name, values in train.items()})

    def _batch_size(self, batch_size: int | None) -> int:
        if batch_size is None:
            return len(self.data["train"]["inputs"])
        return check_int(self.name, "batch_size", batch_size, 1)

    def predict(self, model: MultiTaskModel, split: str) -> tuple[list[Tensor], Mapping[str, Tensor]]:
        """The heads' outputs on ``split`` (one forward on the model's device, returned on the CPU) and
        the split's tensors."""
        data = self.split(split)
        device = next(model.parameters()).device
        return [out.float().cpu() for out in model(data["inputs"].to(device))], data
