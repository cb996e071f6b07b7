"""Proxy: the transfer setting on scikit-learn's 8×8 digits, CPU-fast, no download.

A proxy of the GradDrop paper's ImageNet -> CIFAR-100 transfer experiment (Chen et al. 2020,
NeurIPS; :mod:`tasks.transfer`), not a reproduction: the source task is classifying the digits 0–4
with all their training images, the target task classifying 5–9 from a few labelled images per class.
Both share an MLP trunk in one mixed batch, each loss on its own rows (:mod:`tasks._transfer`).

Splits come from :func:`tasks.digits.split_indices` (stratified 60/20/20, seeded): source rows are
the training split's 0–4; target training rows are ``labels_per_class`` images of each of 5–9 drawn
from the training split with ``split_seed``; validation and test are the val and test splits' images
of each side's classes. Target labels are renumbered 0–4.
"""

from __future__ import annotations

from functools import cached_property
from types import MappingProxyType

import torch
from torch import Tensor, nn

from benchmark.registry import TASKS
from benchmark.task import MultiTaskModel
from tasks._checks import check_int
from tasks._transfer import Labelled, TransferData, TransferTask
from tasks.digits import load_splits

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)


def _select(images: Tensor, labels: Tensor, classes: tuple[int, ...]) -> Labelled:
    """The rows whose label is in ``classes``, relabelled ``0..len(classes) - 1`` in that order."""
    keep = torch.isin(labels, torch.tensor(classes))
    return Labelled(images[keep], labels[keep] - classes[0])


def few_labels(examples: Labelled, per_class: int, seed: int) -> Labelled:
    """``per_class`` rows of each label, drawn with ``seed`` (the same rows for every run seed)."""
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))
    rank = torch.zeros(len(examples), dtype=torch.long)  # position of each row among its class, shuffled
    for label in examples.labels.unique():
        members = order[examples.labels[order] == label]
        rank[members] = torch.arange(len(members))
    keep = torch.nonzero(rank < per_class).flatten()
    return Labelled(examples.inputs[keep], examples.labels[keep])


@TASKS.register("transfer_digits")
class TransferDigits(TransferTask):
    """Proxy of the GradDrop transfer setting: digits 0–4 (source) -> 5–9 with few labels (target).

    Args:
        labels_per_class: labelled target training images per target digit.
        source_fraction: share of each batch's rows that are source rows, in [0, 1).
        hidden: width of the trunk's two hidden layers, 64 -> hidden -> hidden (ReLU), as ``digits``.
        split_seed: seed of the train/val/test split and of the labelled target images.
    """

    description = "Proxy: digits 0-4 -> 5-9 with few labels, batch-separated source/target losses"
    train_defaults = MappingProxyType(
        {"optimizer": "adam", "lr": 1e-3, "batch_size": 64, "steps": 300, "eval_every": 50}
    )

    def __init__(
        self, labels_per_class: int = 10, source_fraction: float = 0.5, hidden: int = 128, split_seed: int = 0
    ) -> None:
        super().__init__(source_fraction)
        self.hidden = check_int(self.name, "hidden", hidden, 1)
        self.split_seed = check_int(self.name, "split_seed", split_seed, 0)
        self.labels_per_class = check_int(self.name, "labels_per_class", labels_per_class, 1)
        _, labels = load_splits(self.split_seed)["train"]
        available = int(torch.bincount(labels, minlength=10)[list(TARGET_CLASSES)].min())
        if labels_per_class > available:
            raise ValueError(
                f"{self.name}: labels_per_class={labels_per_class} exceeds the {available} training "
                "images of the rarest target digit"
            )

    @cached_property
    def data(self) -> TransferData:
        splits = load_splits(self.split_seed)
        sides = {
            side: {name: _select(*splits[name], classes) for name in splits}
            for side, classes in (("source", SOURCE_CLASSES), ("target", TARGET_CLASSES))
        }
        evaluation = ("val", "test")
        return TransferData(
            source_train=sides["source"]["train"],
            target_train=few_labels(sides["target"]["train"], self.labels_per_class, self.split_seed),
            source_eval=MappingProxyType({s: sides["source"][s] for s in evaluation}),
            target_eval=MappingProxyType({s: sides["target"][s] for s in evaluation}),
            num_classes=(len(SOURCE_CLASSES), len(TARGET_CLASSES)),
        )

    def build_model(self) -> MultiTaskModel:
        trunk = nn.Sequential(
            nn.Linear(64, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.hidden), nn.ReLU()
        )
        heads = [nn.Linear(self.hidden, len(SOURCE_CLASSES)), nn.Linear(self.hidden, len(TARGET_CLASSES))]
        return MultiTaskModel(trunk, heads)
