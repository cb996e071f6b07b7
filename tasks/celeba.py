"""CelebA: 40 binary face attributes, one BCE loss each (Liu et al. 2015, "Deep Learning Face Attributes
in the Wild", ICCV; https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html).

The multi-task protocols it follows: FAMO's (Liu et al. 2023, NeurIPS; the authors'
``experiments/celeba/`` in ``Cranial-XIX/FAMO``: 64×64 inputs, their 9-layer CNN, BCE, Adam 3e-4,
batch 256, 15 epochs, F1) and the ResNet-18 one of MGDA (Sener & Koltun 2018) and Pareto MTL (64×64
inputs). The splits are the official partition (``list_eval_partition.txt``: 162,770 / 19,867 / 19,962
images), fixed by the dataset rather than drawn from a seed. Where the files are and how they are
checked: :mod:`tasks._celeba_lists`; the prepared image cache: :mod:`tasks._images`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from benchmark.data import DataError, require_root, resolve_data_root
from benchmark.registry import TASKS, unknown_name_message
from benchmark.task import Batch, LinearHead, Metric, MultiTaskModel, Task
from tasks import _celeba_lists as lists
from tasks import _images as images
from tasks._celeba_models import MODELS
from tasks._checks import check_int

log = logging.getLogger(__name__)

TRAIN_IMAGES = 162_770
"""Images in the official train split."""
EPOCH_STEPS = math.ceil(TRAIN_IMAGES / 256)
"""636 steps of batch 256 per epoch."""
DEFAULT_SIZE = 64
EVAL_BATCH = 256
LEARNING_RATES = MappingProxyType({"famo_cnn": 3e-4, "resnet18": 5e-4})
"""Adam's learning rate per model: FAMO's ``trainer.py`` for its CNN; 5e-4 for the ResNet-18."""


def cache_stem(size: int) -> str:
    return f"celeba_{size}x{size}"


def cache_manifest(layout: lists.Layout, count: int, size: int) -> dict[str, object]:
    return images.manifest(images.file_fingerprints(layout.lists), count, size)


@TASKS.register("celeba")
class CelebA(Task):
    """CelebA's 40 binary attributes; a shared trunk (``model``) and one linear head per attribute.

    Each loss is the binary cross-entropy with logits of its attribute (FAMO applies a sigmoid and
    ``BCELoss``: the same loss, computed stably). Batches come from a ``DataLoader`` over the official
    train split, shuffled with the run's data generator; images are RGB in [0, 1], resized to
    ``image_size`` squared (PIL bilinear, as FAMO's ``transforms.Resize((64, 64))``), without
    normalisation or augmentation. They are read from the cache of ``python run_all.py prepare celeba``
    when one matches the lists and the size, else decoded on the fly (the same pixels, slower).

    Args:
        model: ``famo_cnn`` (FAMO's CNN) or ``resnet18`` (MGDA's CelebA ResNet-18); see
            :mod:`tasks._celeba_models`.
        attributes: a subset of :data:`tasks._celeba_lists.ATTRIBUTES` (``None``: all 40).
        image_size: the side of the square input images (default 64, as in FAMO and MGDA).
        workers: ``DataLoader`` worker processes (0: load in the training process).
        pin_memory: the ``DataLoader``'s ``pin_memory`` (for CUDA runs).
        data_root: the folder holding CelebA (not a hyperparameter; ``None``: ``$GSB_DATA``).
    """

    description = "CelebA, 40 binary face attributes (Liu et al. 2015); FAMO's CNN or a ResNet-18"
    eval_splits = ("val", "test")
    selection_metric = "mean_error"
    needs_data = True
    linear_heads = True

    def __init__(
        self,
        model: str = "famo_cnn",
        attributes: Sequence[str] | None = None,
        image_size: int = DEFAULT_SIZE,
        workers: int = 0,
        pin_memory: bool = False,
        data_root: Path | None = None,
    ) -> None:
        super().__init__(_check_attributes(attributes))
        if model not in MODELS:
            raise ValueError(f"celeba: model: {unknown_name_message('model', model, MODELS)}")
        self.model = model
        self.image_size = check_int("celeba", "image_size", image_size, 8)
        self.workers = check_int("celeba", "workers", workers, 0)
        if not isinstance(pin_memory, bool):
            raise ValueError(f"celeba: pin_memory={pin_memory!r} must be true or false")
        self.pin_memory = pin_memory
        self.train_defaults = MappingProxyType(
            {
                "optimizer": "adam",
                "lr": LEARNING_RATES[model],
                "batch_size": 256,
                "steps": 15 * EPOCH_STEPS,
                "eval_every": EPOCH_STEPS,
            }
        )
        root = require_root(resolve_data_root(data_root), "celeba")
        self.layout = lists.locate(root)
        self.annotations = lists.read(self.layout)
        expected = cache_manifest(self.layout, len(self.annotations.images), self.image_size)
        self.cache = images.find_cache(self.layout.folder, cache_stem(self.image_size), expected)
        if self.cache is None:
            if not self.layout.images.is_dir():
                raise DataError(f"{self.layout.images}: image folder not found; {lists.LAYOUT}")
            log.info("celeba: no prepared cache, decoding on the fly (python run_all.py prepare celeba)")
        columns = [lists.ATTRIBUTES.index(name) for name in self.task_names]
        self.targets = torch.from_numpy(self.annotations.attributes[:, columns]).float()

    def dataset(self, split: str) -> images.ImageDataset:
        """The images and targets of ``split`` (``train``, ``val`` or ``test``)."""
        if split not in lists.SPLITS:
            raise ValueError(f"celeba: unknown split {split!r}; one of {lists.SPLITS}")
        rows = np.flatnonzero(self.annotations.partition == lists.SPLITS.index(split))
        files = [self.layout.images / name for name in self.annotations.images[rows]]
        return images.ImageDataset(files, rows, self.targets[rows], self.image_size, self.cache)

    def build_model(self) -> MultiTaskModel:
        trunk, features = MODELS[self.model]()
        heads = [LinearHead(features, 1, squeeze=True) for _ in self.task_names]
        return MultiTaskModel(trunk, heads)

    def steps_per_epoch(self, batch_size: int | None) -> int:
        return math.ceil(self._split_size("train") / self._batch_size(batch_size))

    def train_batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        """Shuffled epochs over the train split without end; ``None`` means batches of 256. The
        ``DataLoader``'s shuffling draws from ``generator``, so a seed gives the same batches."""
        loader = self._loader("train", self._batch_size(batch_size), generator)
        while True:
            for inputs, targets in loader:
                yield Batch(inputs, targets)

    def losses(self, outputs: list[Tensor], batch: Batch) -> Tensor:
        logits = torch.stack(outputs, dim=1)
        return F.binary_cross_entropy_with_logits(logits, batch.targets, reduction="none").mean(0)

    def metrics(self) -> list[Metric]:
        return [
            Metric("mean_error", False, "mean classification error over attributes"),
            Metric("mean_f1", True, "mean F1 of the positive class over attributes"),
        ]

    @torch.no_grad()
    def evaluate(self, model: MultiTaskModel, split: str) -> dict[str, float]:
        """``mean_error``, ``mean_f1``, and ``error/<attribute>``, ``f1/<attribute>`` for each one."""
        device = next(model.parameters()).device
        logits, targets = [], []
        for inputs, target in self._loader(split, EVAL_BATCH, None):
            logits.append(torch.stack(model(inputs.to(device)), dim=1).float().cpu())
            targets.append(target)
        error, f1 = attribute_scores(torch.cat(logits) > 0, torch.cat(targets) > 0.5)
        values = {"mean_error": float(error.mean()), "mean_f1": float(f1.mean())}
        for name, e, f in zip(self.task_names, error.tolist(), f1.tolist(), strict=True):
            values[f"error/{name}"], values[f"f1/{name}"] = e, f
        return values

    def _loader(self, split: str, batch_size: int, generator: torch.Generator | None) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=batch_size,
            shuffle=generator is not None,
            generator=generator,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
            pin_memory=self.pin_memory,
        )

    def _split_size(self, split: str) -> int:
        return int((self.annotations.partition == lists.SPLITS.index(split)).sum())

    def _batch_size(self, batch_size: int | None) -> int:
        return 256 if batch_size is None else check_int("celeba", "batch_size", batch_size, 1)

    @classmethod
    def data_status(cls, data_root: Path | None) -> str:
        root = resolve_data_root(data_root)
        if root is None:
            return "no data root given (--data-root, a suite's data_root: or $GSB_DATA); " + lists.LAYOUT
        try:
            layout = lists.locate(root)
            count = len(lists.read(layout).images)
        except DataError as err:
            return f"not ready: {err}"
        expected = cache_manifest(layout, count, DEFAULT_SIZE)
        cache = images.find_cache(layout.folder, cache_stem(DEFAULT_SIZE), expected)
        prepared = f"cache prepared: {cache}" if cache else "not prepared (python run_all.py prepare celeba)"
        return f"{count} images listed in {layout.folder}; {prepared}"

    @classmethod
    def prepare(cls, data_root: Path, workers: int, image_size: int = DEFAULT_SIZE) -> None:
        """Decode every image listed once into the cache of ``image_size`` (rebuilt unless a complete
        cache matching the current lists already exists)."""
        size = check_int("celeba", "image_size", image_size, 8)
        layout = lists.locate(require_root(resolve_data_root(data_root), "celeba"))
        names = lists.read(layout).images
        expected = cache_manifest(layout, len(names), size)
        if images.find_cache(layout.folder, cache_stem(size), expected) is not None:
            log.info("celeba: the %dx%d cache is up to date", size, size)
            return
        if not layout.images.is_dir():
            raise DataError(f"{layout.images}: image folder not found; {lists.LAYOUT}")
        files = [layout.images / name for name in names]
        images.build_cache(files, layout.folder, cache_stem(size), expected, workers)


def attribute_scores(predicted: Tensor, actual: Tensor) -> tuple[Tensor, Tensor]:
    """Per-attribute error rate and F1 of the positive class, ``[T]`` each, from bool ``[N, T]``.

    F1 = 2 TP / (2 TP + FP + FN), 0 when an attribute has no positive example and no positive
    prediction (FAMO's ``CelebaMetrics`` computes it from precision and recall with 1e-8 guards).
    """
    true_pos = (predicted & actual).sum(0)
    wrong = (predicted != actual).sum(0)
    error = wrong / max(len(actual), 1)
    return error.float(), (2 * true_pos / (2 * true_pos + wrong).clamp_min(1)).float()


def _check_attributes(attributes: Sequence[str] | None) -> tuple[str, ...]:
    if attributes is None:
        return lists.ATTRIBUTES
    if isinstance(attributes, str) or not isinstance(attributes, Sequence) or not attributes:
        raise ValueError(f"celeba: attributes={attributes!r} must be a non-empty list of names")
    for name in attributes:
        if name not in lists.ATTRIBUTES:
            unknown = unknown_name_message("attribute", name, lists.ATTRIBUTES)
            raise ValueError(f"celeba: attributes: {unknown}")
    if len(set(attributes)) != len(attributes):
        raise ValueError(f"celeba: attributes={list(attributes)!r} lists a name twice")
    return tuple(attributes)
