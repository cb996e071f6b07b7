"""MultiDigits: two overlapping digits in one image, one 10-way classification task per digit.

The MultiMNIST protocol of Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization",
NeurIPS (after Sabour et al. 2017's MultiMNIST), scaled to scikit-learn's 8×8 digits so that it
runs on a CPU: one digit shifted to the top-left and another to the bottom-right of a small canvas
(12×12 by default; the original places 28×28 MNIST digits), overlapping in the middle;
task ``left`` classifies the top-left digit and ``right`` the bottom-right one. Overlapping pixels take
the maximum of the two digits. Pairs are drawn with a generator seeded by the split seed and the
split, within each split of the seeded train/val/test split of :mod:`tasks.digits`, so a digit never
crosses splits. The trunk is a small CNN (two conv blocks) standing in for the paper's LeNet.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.registry import TASKS
from benchmark.task import Batch, LinearHead, Metric, MultiTaskModel
from tasks._canvas import DIGIT_SIZE, CanvasTask, conv_trunk
from tasks._checks import check_int

CLASSES = 10


def draw_pairs(count: int, per_image: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(left, right)`` of ``count * per_image`` pairs of ``count`` images: every image is the
    left digit ``per_image`` times, in random order, its partner drawn uniformly from the other images."""
    left = rng.permutation(np.repeat(np.arange(count), per_image))
    right = (left + rng.integers(1, count, size=len(left))) % count
    return left, right


def overlay(left: Tensor, right: Tensor, canvas: int) -> Tensor:
    """Digits ``[N, 8, 8]`` -> images ``[N, 1, canvas, canvas]``: ``left`` in the top-left corner,
    ``right`` in the bottom-right one, the pixel-wise maximum where they overlap."""
    shift = canvas - DIGIT_SIZE
    top_left = F.pad(left, (0, shift, 0, shift))
    bottom_right = F.pad(right, (shift, 0, shift, 0))
    return torch.maximum(top_left, bottom_right).unsqueeze(1)


@TASKS.register("multi_digits")
class MultiDigits(CanvasTask):
    """Two overlapping 8×8 digits per image; cross-entropy for each digit's class; a CNN trunk.

    Args:
        canvas: side of the image; the two digits overlap on ``16 - canvas`` rows and columns.
        pairs_per_image: pairs in each split per digit image of that split (each image is the left
            digit this many times).
        channels: channels of the first conv block (doubled in the second).
        hidden: width of the shared representation.
        split_seed: seed of the digits' 60/20/20 split and of the pairs, fixed across run seeds.
    """

    description = "Two overlapping 8x8 digits on a 12x12 canvas, one 10-way task each (MultiMNIST-style)"
    train_defaults = MappingProxyType(
        {"optimizer": "adam", "lr": 1e-3, "batch_size": 128, "steps": 1000, "eval_every": 100}
    )
    selection_metric = "accuracy"
    linear_heads = True

    def __init__(
        self,
        canvas: int = 12,
        pairs_per_image: int = 3,
        channels: int = 8,
        hidden: int = 64,
        split_seed: int = 0,
    ) -> None:
        super().__init__(("left", "right"), split_seed)
        self.canvas = check_int(self.name, "canvas", canvas, DIGIT_SIZE + 1)
        self.pairs_per_image = check_int(self.name, "pairs_per_image", pairs_per_image, 1)
        self.channels = check_int(self.name, "channels", channels, 1)
        self.hidden = check_int(self.name, "hidden", hidden, 1)

    def build_split(self, images: Tensor, labels: Tensor, rng: np.random.Generator) -> dict[str, Tensor]:
        left, right = (torch.from_numpy(i) for i in draw_pairs(len(images), self.pairs_per_image, rng))
        inputs = overlay(images[left], images[right], self.canvas)
        return {"inputs": inputs, "targets": torch.stack([labels[left], labels[right]], dim=1)}

    def build_model(self) -> MultiTaskModel:
        trunk = conv_trunk(self.canvas, 2, self.channels, self.hidden)
        return MultiTaskModel(trunk, [LinearHead(self.hidden, CLASSES) for _ in self.task_names])

    def losses(self, outputs: list[Tensor], batch: Batch) -> Tensor:
        targets = batch.targets
        return torch.stack([F.cross_entropy(out, targets[:, i]) for i, out in enumerate(outputs)])

    def metrics(self) -> list[Metric]:
        return [
            Metric("acc/left", True, "accuracy on the top-left digit"),
            Metric("acc/right", True, "accuracy on the bottom-right digit"),
            Metric("accuracy", True, "mean of the two accuracies"),
        ]

    @torch.no_grad()
    def evaluate(self, model: MultiTaskModel, split: str) -> dict[str, float]:
        """The metrics of :meth:`metrics` and each task's cross-entropy ``ce/<task>``, in one forward."""
        outputs, data = self.predict(model, split)
        values: dict[str, float] = {}
        for i, (name, logits) in enumerate(zip(self.task_names, outputs, strict=True)):
            values[f"acc/{name}"] = float((logits.argmax(1) == data["targets"][:, i]).float().mean())
            values[f"ce/{name}"] = float(F.cross_entropy(logits, data["targets"][:, i]))
        values["accuracy"] = (values["acc/left"] + values["acc/right"]) / 2
        return values
