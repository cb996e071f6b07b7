"""Many binary attributes of scikit-learn's 8×8 digits: a CelebA-like multi-label task that runs on a CPU.

The data are the 1,797 images bundled with scikit-learn (``sklearn.datasets.load_digits``, the UCI
optical-recognition test set; no download). Each image gets one binary attribute per digit
(one-vs-rest) and attributes derived from its label (:data:`ATTRIBUTES`), so the tasks are correlated
and partly conflicting, as CelebA's 40 face attributes are (Liu et al. 2015; the multi-task protocol of
Sener & Koltun 2018 and FAMO, Liu et al. 2023).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from functools import cache, cached_property
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from benchmark.registry import TASKS, unknown_name_message
from benchmark.task import Batch, LinearHead, Metric, MultiTaskModel, Task
from tasks._checks import check_int

ATTRIBUTES: Mapping[str, frozenset[int]] = MappingProxyType(
    {
        **{f"digit{d}": frozenset({d}) for d in range(10)},  # one-vs-rest
        "even": frozenset({0, 2, 4, 6, 8}),
        "ge5": frozenset({5, 6, 7, 8, 9}),
        "prime": frozenset({2, 3, 5, 7}),
        "loop": frozenset({0, 6, 8, 9}),  # a closed loop as usually handwritten (4 written open)
        "straight": frozenset({1, 4, 7}),  # drawn with straight strokes only
        "square": frozenset({0, 1, 4, 9}),
        "mult3": frozenset({0, 3, 6, 9}),
    }
)
"""Attribute name -> the digits for which it is true."""

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
PIXEL_MAX = 16.0
"""The digits' pixels are counts 0..16; inputs are divided by this to lie in [0, 1]."""


@cache
def split_indices(split_seed: int) -> Mapping[str, np.ndarray]:
    """``split -> row indices`` into ``load_digits()``: stratified 60/20/20 by label, seeded."""
    labels = load_digits().target
    _, val_fraction, test_fraction = SPLIT_FRACTIONS
    rest, test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=split_seed
    )
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest], random_state=split_seed
    )
    return MappingProxyType(dict(zip(SPLITS, (train, val, test), strict=True)))


@cache
def load_splits(split_seed: int) -> Mapping[str, tuple[Tensor, Tensor]]:
    """``split -> (images [N, 64] in [0, 1], labels [N])``, cached: runs sharing a split share one copy."""
    data = load_digits()
    images = torch.tensor(data.data / PIXEL_MAX, dtype=torch.float32)
    labels = torch.tensor(data.target, dtype=torch.long)
    rows = split_indices(split_seed)
    return MappingProxyType({name: (images[i], labels[i]) for name, i in rows.items()})


def attribute_targets(labels: Tensor, names: Sequence[str]) -> Tensor:
    """Digit labels ``[N]`` -> 0/1 float targets ``[N, len(names)]``."""
    table = torch.tensor([[d in ATTRIBUTES[n] for n in names] for d in range(10)], dtype=torch.float32)
    return table[labels]


def _check_attributes(attributes: Sequence[str] | None) -> tuple[str, ...]:
    if attributes is None:
        return tuple(ATTRIBUTES)
    if isinstance(attributes, str) or not isinstance(attributes, Sequence) or not attributes:
        raise ValueError(f"digits: attributes={attributes!r} must be a non-empty list of names")
    for name in attributes:
        if name not in ATTRIBUTES:
            raise ValueError(f"digits: attributes: {unknown_name_message('attribute', name, ATTRIBUTES)}")
    if len(set(attributes)) != len(attributes):
        raise ValueError(f"digits: attributes={list(attributes)!r} lists a name twice")
    return tuple(attributes)


def shuffled_rows(count: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Row indices of consecutive batches over shuffled epochs of ``count`` rows, without end."""
    while True:
        yield from torch.randperm(count, generator=generator).split(batch_size)


def scores(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-attribute accuracy, F1 of the positive class and BCE, each ``[T]``, from ``[N, T]`` inputs.

    F1 is 0 for an attribute with no positive example and no positive prediction (scikit-learn's
    ``zero_division=0``).
    """
    predicted, actual = logits > 0, targets > 0.5
    accuracy = (predicted == actual).float().mean(0)
    true_pos = (predicted & actual).sum(0)
    errors = (predicted != actual).sum(0)
    f1 = 2 * true_pos / (2 * true_pos + errors).clamp_min(1)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(0)
    return accuracy, f1, bce


@TASKS.register("digits")
class Digits(Task):
    """Binary attributes of 8×8 digits, one BCE loss per attribute; an MLP trunk, one linear head each.

    Args:
        attributes: names from :data:`ATTRIBUTES` (``None``: all 17).
        hidden: width of the two hidden layers of the trunk 64 -> hidden -> hidden (ReLU).
        split_seed: seed of the stratified 60/20/20 train/val/test split, fixed across run seeds.
    """

    description = "scikit-learn 8x8 digits, 17 binary attributes (a CPU-sized CelebA analogue)"
    train_defaults = MappingProxyType(
        {"optimizer": "adam", "lr": 1e-3, "batch_size": 128, "steps": 300, "eval_every": 50}
    )
    eval_splits = ("val", "test")
    selection_metric = "f1"
    linear_heads = True

    def __init__(
        self, attributes: Sequence[str] | None = None, hidden: int = 128, split_seed: int = 0
    ) -> None:
        super().__init__(_check_attributes(attributes))
        self.hidden = check_int("digits", "hidden", hidden, 1)
        self.split_seed = check_int("digits", "split_seed", split_seed, 0)

    @cached_property
    def data(self) -> Mapping[str, tuple[Tensor, Tensor]]:
        """``split -> (images [N, 64], targets [N, T])``, built on first use."""
        return MappingProxyType(
            {
                split: (images, attribute_targets(labels, self.task_names))
                for split, (images, labels) in load_splits(self.split_seed).items()
            }
        )

    def build_model(self) -> MultiTaskModel:
        trunk = nn.Sequential(
            nn.Linear(64, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.hidden), nn.ReLU()
        )
        heads = [LinearHead(self.hidden, 1, squeeze=True) for _ in self.task_names]
        return MultiTaskModel(trunk, heads)

    def steps_per_epoch(self, batch_size: int | None) -> int:
        return math.ceil(len(self.data["train"][0]) / self._batch_size(batch_size))

    def train_batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        """Shuffled epochs over the training split, without end; ``None`` means the whole split."""
        images, targets = self.data["train"]
        size = self._batch_size(batch_size)
        for rows in shuffled_rows(len(images), size, generator):
            yield Batch(images[rows], targets[rows])

    def _batch_size(self, batch_size: int | None) -> int:
        if batch_size is None:
            return len(self.data["train"][0])
        return check_int("digits", "batch_size", batch_size, 1)

    def losses(self, outputs: list[Tensor], batch: Batch) -> Tensor:
        logits = torch.stack(outputs, dim=1)
        return F.binary_cross_entropy_with_logits(logits, batch.targets, reduction="none").mean(0)

    def metrics(self) -> list[Metric]:
        return [
            Metric("accuracy", True, "mean accuracy over attributes"),
            Metric("f1", True, "mean F1 of the positive class over attributes"),
            Metric("bce", False, "mean binary cross-entropy over attributes"),
        ]

    @torch.no_grad()
    def evaluate(self, model: MultiTaskModel, split: str) -> dict[str, float]:
        """The metrics of :meth:`metrics` and ``acc/<attribute>`` for each attribute, in one forward."""
        if split not in self.data:
            raise ValueError(f"digits: unknown split {split!r}; one of {SPLITS}")
        images, targets = self.data[split]
        device = next(model.parameters()).device
        logits = torch.stack(model(images.to(device)), dim=1).float().cpu()
        accuracy, f1, bce = scores(logits, targets)
        values = {"accuracy": float(accuracy.mean()), "f1": float(f1.mean()), "bce": float(bce.mean())}
        values.update({f"acc/{n}": float(a) for n, a in zip(self.task_names, accuracy, strict=True)})
        return values
