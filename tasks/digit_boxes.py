"""Proxy: a one-object detector on scikit-learn's digits, its losses split as the GradDrop paper splits
a 3D detector's.

It stands in for the Waymo Open Dataset 3D detection table of Chen et al. 2020, "Just Pick a Sign:
Optimizing Deep Multitask Models with Gradient Sign Dropout", NeurIPS, where the losses of one
point-cloud detector (classification, box localisation, heading) are the tasks GradDrop combines.
That setting is not reproducible on a CPU. This analogue keeps its structure (one shared trunk, a
classification loss and box-regression losses of different kinds and scales) and differs in:

- the scene: one 8×8 digit, resized (bilinear) by a factor drawn from 0.75–2 per axis and pasted at a
  random position of an empty 32×32 canvas, instead of many objects in a point cloud; hence no anchors,
  matching or non-maximum suppression;
- the losses: class cross-entropy, box centre and box size (smooth L1, Girshick 2015, "Fast R-CNN",
  ICCV, with β of one pixel), instead of classification, localisation and heading (a 2-D box has no
  heading);
- the metrics: accuracy and the mean IoU of the predicted with the true box, instead of AP and APH.

Its numbers are not comparable with the paper's. Placements are drawn with a generator seeded by the
split seed and the split, within each split of the seeded train/val/test split of :mod:`tasks.digits`.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.registry import TASKS
from benchmark.task import Batch, Metric, MultiTaskModel
from tasks._canvas import DIGIT_SIZE, CanvasTask, conv_trunk
from tasks._checks import check_int

CLASSES = 10


def draw_boxes(count: int, canvas: int, scales: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """``count`` boxes ``[x0, y0, width, height]`` in whole pixels, ``[count, 4]``: each side is the
    digit's 8 pixels times a factor drawn uniformly from ``scales`` (per axis, rounded, at least 1 and at
    most ``canvas``), the top-left corner uniform over the positions where the box fits."""
    sides = np.rint(DIGIT_SIZE * rng.uniform(*scales, size=(2, count)))
    width, height = np.clip(sides, 1, canvas).astype(np.int64)
    x0 = rng.integers(0, canvas - width + 1)
    y0 = rng.integers(0, canvas - height + 1)
    return np.stack([x0, y0, width, height], axis=1)


def paste(images: Tensor, boxes: np.ndarray, canvas: int) -> Tensor:
    """Digits ``[N, 8, 8]`` resized (bilinear) into their pixel ``boxes`` ``[N, 4]`` on empty canvases
    ``[N, 1, canvas, canvas]``."""
    out = images.new_zeros(len(images), 1, canvas, canvas)
    for i, (x0, y0, width, height) in enumerate(boxes.tolist()):
        digit = images[i][None, None]
        resized = F.interpolate(digit, size=(height, width), mode="bilinear", align_corners=False)
        out[i, :, y0 : y0 + height, x0 : x0 + width] = resized[0]
    return out


def box_targets(boxes: np.ndarray, canvas: int) -> tuple[Tensor, Tensor]:
    """Pixel boxes ``[N, 4]`` -> centres ``(x, y)`` and sizes ``(width, height)``, each ``[N, 2]``, as
    fractions of the canvas side."""
    box = torch.from_numpy(boxes).float() / canvas
    corner, size = box[:, :2], box[:, 2:]
    return corner + size / 2, size


def box_iou(centre_a: Tensor, size_a: Tensor, centre_b: Tensor, size_b: Tensor) -> Tensor:
    """Intersection over union of box a and box b, row by row: boxes by centre and ``(width, height)``
    ``[N, 2]`` (a negative size counts as 0) -> ``[N]``; 0 where both boxes are empty."""
    size_a, size_b = size_a.clamp(min=0), size_b.clamp(min=0)
    low = torch.maximum(centre_a - size_a / 2, centre_b - size_b / 2)
    high = torch.minimum(centre_a + size_a / 2, centre_b + size_b / 2)
    inter = (high - low).clamp(min=0).prod(-1)
    union = size_a.prod(-1) + size_b.prod(-1) - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(union))


def _check_scales(task: str, low: object, high: object) -> tuple[float, float]:
    for key, value in (("min_scale", low), ("max_scale", high)):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and value > 0):
            raise ValueError(f"{task}: {key}={value!r} must be a positive number")
    if low > high:
        raise ValueError(f"{task}: min_scale={low!r} must be at most max_scale={high!r}")
    return float(low), float(high)


@TASKS.register("detection_proxy")
class DigitBoxes(CanvasTask):
    """Proxy for the GradDrop paper's Waymo 3D detection: classify and box one digit on a canvas.

    Three losses on one CNN trunk: ``class`` (cross-entropy over the 10 digits), ``centre`` and ``size``
    (smooth L1 on the box centre and size, as fractions of the canvas, β = one pixel). The batch carries
    ``labels``, ``centre`` and ``size`` (``batch["centre"]``).

    Args:
        canvas: side of the image, in pixels; at least the largest digit, ``round(8 * max_scale)``.
        min_scale, max_scale: range of the per-axis resizing factor of the digit.
        copies: placements per digit image in each split.
        channels: channels of the first of three conv blocks (doubled in each next one).
        hidden: width of the shared representation.
        split_seed: seed of the digits' 60/20/20 split and of the placements, fixed across run seeds.
    """

    description = "Proxy: one 8x8 digit boxed on a 32x32 canvas; class, box-centre and box-size losses"
    train_defaults = MappingProxyType(
        {"optimizer": "adam", "lr": 3e-3, "batch_size": 128, "steps": 1000, "eval_every": 100}
    )

    def __init__(
        self,
        canvas: int = 32,
        min_scale: float = 0.75,
        max_scale: float = 2.0,
        copies: int = 2,
        channels: int = 8,
        hidden: int = 64,
        split_seed: int = 0,
    ) -> None:
        super().__init__(("class", "centre", "size"), split_seed)
        self.scales = _check_scales(self.name, min_scale, max_scale)
        largest = round(DIGIT_SIZE * self.scales[1])
        self.canvas = check_int(self.name, "canvas", canvas, max(largest, 8))
        self.copies = check_int(self.name, "copies", copies, 1)
        self.channels = check_int(self.name, "channels", channels, 1)
        self.hidden = check_int(self.name, "hidden", hidden, 1)

    def build_split(self, images: Tensor, labels: Tensor, rng: np.random.Generator) -> dict[str, Tensor]:
        digits = torch.arange(len(images)).repeat(self.copies)
        boxes = draw_boxes(len(digits), self.canvas, self.scales, rng)
        centre, size = box_targets(boxes, self.canvas)
        inputs = paste(images[digits], boxes, self.canvas)
        return {"inputs": inputs, "labels": labels[digits], "centre": centre, "size": size}

    def build_model(self) -> MultiTaskModel:
        trunk = conv_trunk(self.canvas, 3, self.channels, self.hidden)
        heads = [nn.Linear(self.hidden, CLASSES), nn.Linear(self.hidden, 2), nn.Linear(self.hidden, 2)]
        return MultiTaskModel(trunk, heads)

    def losses(self, outputs: list[Tensor], batch: Batch) -> Tensor:
        logits, centre, size = outputs
        beta = 1 / self.canvas
        return torch.stack(
            [
                F.cross_entropy(logits, batch["labels"]),
                F.smooth_l1_loss(centre, batch["centre"], beta=beta),
                F.smooth_l1_loss(size, batch["size"], beta=beta),
            ]
        )

    def metrics(self) -> list[Metric]:
        return [
            Metric("accuracy", True, "share of digits classified correctly"),
            Metric("iou", True, "mean IoU of the predicted box with the true box"),
        ]

    @torch.no_grad()
    def evaluate(self, model: MultiTaskModel, split: str) -> dict[str, float]:
        """The metrics of :meth:`metrics`, the share of boxes with IoU >= 0.5 (``iou50``) and each loss
        (``loss/<task>``), in one forward."""
        outputs, data = self.predict(model, split)
        iou = box_iou(outputs[1], outputs[2], data["centre"], data["size"])
        values = {
            "accuracy": float((outputs[0].argmax(1) == data["labels"]).float().mean()),
            "iou": float(iou.mean()),
            "iou50": float((iou >= 0.5).float().mean()),
        }
        losses = self.losses(outputs, Batch(**data))
        values.update({f"loss/{n}": float(v) for n, v in zip(self.task_names, losses, strict=True)})
        return values
