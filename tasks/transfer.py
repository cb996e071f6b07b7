"""ImageNet -> CIFAR-100 transfer, the GradDrop paper's transfer setting (Chen et al. 2020, NeurIPS).

Source (ImageNet as an ImageFolder tree, or CIFAR-10) and target (CIFAR-100) images go through one
shared trunk in the same batch; the source loss is computed on the source rows only, the target loss
on the target rows only (:mod:`tasks._transfer`). The paper applies GradDrop there with the sign signal
summed over the batch and leak 1.0 on the target loss (``configs/paper/transfer.yaml``).

Two protocols: ``mixed`` trains from scratch on mixed batches; ``finetune`` loads the trunk from a
checkpoint (a ``torch.save``d ``state_dict`` of :func:`tasks._resnet.cifar_resnet`) and trains on the
target with the source loss as an auxiliary, on the same mixed batches. The trunk is the CIFAR ResNet
of He et al. 2016 (ResNet-20 by default), not the paper's network; the training defaults are ours (the
usual CIFAR recipe of He et al.: SGD with momentum 0.9, weight decay 5e-4, 4-pixel crops and flips).

Data under the data root (:mod:`benchmark.data`; nothing is downloaded; formats in
:mod:`tasks._image_data` and :mod:`tasks._imagefolder`): ``cifar-100-python/`` (target),
``imagenet/train/`` or ``cifar-10-batches-py/`` (source). Splits: target validation is a stratified,
seeded hold-out of ``val_fraction`` of CIFAR-100's training set, target test is CIFAR-100's test set;
source accuracy (a diagnostic) is measured on a seeded hold-out of ``source_eval_size`` source training
images (at most a tenth of them, so that a small source still trains), and at test time on CIFAR-10's
test set when that is the source. ``run_all.py prepare transfer`` decodes the ImageFolder tree at
``imagenet/train`` once into the shared image cache (:mod:`tasks._images`), beside the tree.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from types import MappingProxyType

import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from benchmark.data import DataError, require_root
from benchmark.registry import TASKS
from benchmark.task import MultiTaskModel
from tasks._checks import check_fraction, check_int
from tasks._image_data import (
    CIFAR10_LAYOUT,
    CIFAR100_LAYOUT,
    CIFAR_SOURCE,
    Images,
    cifar10_files,
    load_cifar10,
    load_cifar100,
)
from tasks._imagefolder import (
    IMAGEFOLDER_LAYOUT,
    IMAGENET_SOURCE,
    find_imagefolder_cache,
    load_imagefolder,
    prepare_imagefolder,
)
from tasks._resnet import cifar_resnet
from tasks._transfer import Labelled, TransferData, TransferTask

SOURCES = ("imagefolder", "cifar10")
PROTOCOLS = ("mixed", "finetune")
SOURCE_DIRS = MappingProxyType({"imagefolder": "imagenet/train", "cifar10": "cifar-10-batches-py"})
TARGET_DIR = "cifar-100-python"
PAD = 4
"""Padding of the random crops (He et al. 2016, §4.2)."""


def augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random horizontal flips and random 32×32 crops of the images zero-padded by :data:`PAD` pixels."""
    count, _, height, width = images.shape
    flip = torch.rand(count, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(3), images)
    padded = F.pad(images, (PAD, PAD, PAD, PAD)).permute(0, 2, 3, 1)  # [B, H + 2p, W + 2p, C]
    top, left = torch.randint(0, 2 * PAD + 1, (2, count), generator=generator)
    rows = (top[:, None] + torch.arange(height))[:, :, None]
    cols = (left[:, None] + torch.arange(width))[:, None, :]
    return padded[torch.arange(count)[:, None, None], rows, cols].permute(0, 3, 1, 2)


def load_trunk(trunk: nn.Module, path: Path) -> None:
    """Load a ``torch.save``d ``state_dict`` of the trunk from ``path`` (tensors only), strictly."""
    expected = "a torch.save'd state_dict of the transfer trunk (tasks._resnet.cifar_resnet(width, blocks))"
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found; expected {expected}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable checkpoint ({err}); expected {expected}") from err
    if not isinstance(state, Mapping):
        raise DataError(f"{path}: holds a {type(state).__name__}, expected {expected}")
    try:
        trunk.load_state_dict(state)
    except (RuntimeError, TypeError) as err:
        raise DataError(f"{path}: does not fit the trunk ({err}); expected {expected}") from err


def _holdout(labels: Tensor, size: int, seed: int, stratify: bool) -> tuple[Tensor, Tensor]:
    """``(kept, held_out)`` row indices: ``size`` rows held out, seeded (stratified by label if asked)."""
    rows = torch.arange(len(labels))
    kept, held = train_test_split(
        rows.numpy(), test_size=size, stratify=labels.numpy() if stratify else None, random_state=seed
    )
    return torch.from_numpy(kept), torch.from_numpy(held)


def _labelled(images: Images, rows: Tensor | None = None) -> Labelled:
    if rows is None:
        return Labelled(images.images, images.labels)
    return Labelled(images.images[rows], images.labels[rows])


@TASKS.register("transfer")
class Transfer(TransferTask):
    """ImageNet (or CIFAR-10) -> CIFAR-100 on batch-separated losses; a CIFAR ResNet trunk, two linear heads.

    Args:
        source: ``"imagefolder"`` (ImageNet's layout) or ``"cifar10"``.
        source_dir: the source's folder under the data root (default ``imagenet/train`` or
            ``cifar-10-batches-py``).
        target_dir: CIFAR-100's folder under the data root.
        protocol: ``"mixed"`` (from scratch) or ``"finetune"`` (trunk from ``checkpoint``).
        checkpoint: the trunk's ``state_dict`` file for ``finetune``; a relative path is under the data root.
        source_fraction: share of each batch's rows that are source rows, in [0, 1).
        val_fraction: share of CIFAR-100's training set held out for validation, in (0, 1).
        source_eval_size: source training images held out to measure source accuracy (at most a
            tenth of the source's training images).
        width: filters of the trunk's first stage (16 in ResNet-20).
        blocks: basic blocks per stage (3 in ResNet-20).
        augment: random crops and flips of the training images.
        split_seed: seed of the hold-outs, fixed across run seeds.
        data_root: the folder holding the datasets (not a hyperparameter).
    """

    description = "ImageNet (or CIFAR-10) -> CIFAR-100, batch-separated source/target losses (GradDrop paper)"
    needs_data = True

    def __init__(
        self,
        source: str = "imagefolder",
        source_dir: str | None = None,
        target_dir: str = TARGET_DIR,
        protocol: str = "mixed",
        checkpoint: str | None = None,
        source_fraction: float = 0.5,
        val_fraction: float = 0.1,
        source_eval_size: int = 5000,
        width: int = 16,
        blocks: int = 3,
        augment: bool = True,
        split_seed: int = 0,
        data_root: Path | None = None,
    ) -> None:
        super().__init__(source_fraction)
        self.source = self._choice("source", source, SOURCES)
        self.protocol = self._choice("protocol", protocol, PROTOCOLS)
        if (protocol == "finetune") != (checkpoint is not None):
            raise ValueError(
                f"{self.name}: checkpoint={checkpoint!r} is needed by, and only by, protocol finetune"
            )
        self.source_dir = self._subpath(
            "source_dir", SOURCE_DIRS[source] if source_dir is None else source_dir
        )
        self.target_dir = self._subpath("target_dir", target_dir)
        self.checkpoint = None if checkpoint is None else self._subpath("checkpoint", checkpoint)
        self.val_fraction = check_fraction(self.name, "val_fraction", val_fraction)
        if self.val_fraction == 0:
            raise ValueError(f"{self.name}: val_fraction=0 leaves no validation split")
        self.source_eval_size = check_int(self.name, "source_eval_size", source_eval_size, 1)
        self.width = check_int(self.name, "width", width, 1)
        self.blocks = check_int(self.name, "blocks", blocks, 1)
        if not isinstance(augment, bool):
            raise ValueError(f"{self.name}: augment={augment!r} must be true or false")
        self.augment = augment
        self.split_seed = check_int(self.name, "split_seed", split_seed, 0)
        self.data_root = data_root
        self.train_defaults = MappingProxyType(
            {
                "optimizer": "sgd",
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "lr": 0.1 if protocol == "mixed" else 0.01,
                "schedule": "cosine",
                "batch_size": 256,
                "steps": 30_000 if protocol == "mixed" else 10_000,
                "eval_every": 1000,
            }
        )
        if data_root is not None:
            self.check_files()

    def _choice(self, key: str, value: object, choices: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"{self.name}: {key}={value!r} must be one of {choices}")
        return value

    def _subpath(self, key: str, value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{self.name}: {key}={value!r} must be a path (relative to the data root)")
        return value

    def path(self, subpath: str) -> Path:
        """``subpath`` under the data root (an absolute ``subpath`` as is)."""
        return (
            Path(subpath)
            if Path(subpath).is_absolute()
            else require_root(self.data_root, self.name) / subpath
        )

    def check_files(self) -> None:
        """Fail early, with a :class:`DataError` naming the first missing, truncated or malformed file,
        before any training (ImageFolder images are checked when decoded: by ``prepare``, or at the
        run's start)."""
        target = self.path(self.target_dir)
        needed = [(target / name, CIFAR100_LAYOUT, CIFAR_SOURCE) for name in ("meta", "train", "test")]
        source = self.path(self.source_dir)
        if self.source == "cifar10":
            files = [source / "batches.meta", *cifar10_files(source, "train"), *cifar10_files(source, "test")]
            needed += [(path, CIFAR10_LAYOUT, CIFAR_SOURCE) for path in files]
        elif not source.is_dir():
            needed.append((source, IMAGEFOLDER_LAYOUT, IMAGENET_SOURCE))
        if self.checkpoint is not None:
            needed.append(
                (self.path(self.checkpoint), "a torch.save'd state_dict of the trunk", "your own training")
            )
        for path, layout, published in needed:
            if not path.exists():
                raise DataError(f"{path}: not found; expected {layout} (published at {published})")
        for split in ("train", "test"):  # the pickles are read whole: a truncated or malformed one fails here
            load_cifar100(target, split)
            if self.source == "cifar10":
                load_cifar10(source, split)

    @cached_property
    def data(self) -> TransferData:
        target_train = load_cifar100(self.path(self.target_dir), "train")
        target_test = load_cifar100(self.path(self.target_dir), "test")
        source_train, source_test = self._source()
        val_size = max(1, round(self.val_fraction * len(target_train)))
        train_rows, val_rows = _holdout(target_train.labels, val_size, self.split_seed, stratify=True)
        if len(source_train) < 2:
            raise DataError(
                f"{self.path(self.source_dir)}: {len(source_train)} source image(s), too few to train on "
                "and hold one out to measure source accuracy"
            )
        held_out = min(self.source_eval_size, max(1, len(source_train) // 10))
        kept, held = _holdout(source_train.labels, held_out, self.split_seed, stratify=False)
        source_val = _labelled(source_train, held)
        return TransferData(
            source_train=_labelled(source_train, kept),
            target_train=_labelled(target_train, train_rows),
            source_eval=MappingProxyType(
                {"val": source_val, "test": source_val if source_test is None else _labelled(source_test)}
            ),
            target_eval=MappingProxyType(
                {"val": _labelled(target_train, val_rows), "test": _labelled(target_test)}
            ),
            num_classes=(len(source_train.classes), len(target_train.classes)),
        )

    @cached_property
    def normalisation(self) -> tuple[Tensor, Tensor]:
        """Per-channel mean and standard deviation of the target training images, ``[1, 3, 1, 1]`` each."""
        return channel_stats(self.data.target_train.inputs)

    def _source(self) -> tuple[Images, Images | None]:
        """The source's training images and, for CIFAR-10, its test images."""
        folder = self.path(self.source_dir)
        if self.source == "cifar10":
            return load_cifar10(folder, "train"), load_cifar10(folder, "test")
        return load_imagefolder(folder), None

    def as_inputs(self, stored: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 images -> float, augmented when training (``generator`` given) and ``self.augment``,
        then normalised per channel with the target training set's mean and standard deviation."""
        images = stored.float() / 255
        if generator is not None and self.augment:
            images = augment(images, generator)
        mean, std = self.normalisation
        return (images - mean) / std

    def build_model(self) -> MultiTaskModel:
        num_source, num_target = self.data.num_classes
        trunk = cifar_resnet(self.width, self.blocks)
        if self.checkpoint is not None:
            load_trunk(trunk, self.path(self.checkpoint))
        features = 4 * self.width
        return MultiTaskModel(trunk, [nn.Linear(features, num_source), nn.Linear(features, num_target)])

    @classmethod
    def data_status(cls, data_root: Path | None) -> str:
        """Which of the default folders are present under ``data_root``."""
        if data_root is None:
            return f"no data root: give one with --data-root, holding {TARGET_DIR}/ and a source"
        parts = []
        for name, folder in (("CIFAR-100", TARGET_DIR), *(((s, d) for s, d in SOURCE_DIRS.items()))):
            path = data_root / folder
            parts.append(f"{name} {'present' if path.is_dir() else 'missing'} at {path}")
        tree = data_root / SOURCE_DIRS["imagefolder"]
        if tree.is_dir():
            try:
                cache = find_imagefolder_cache(tree)
            except DataError as err:
                parts.append(f"imagefolder not ready: {err}")
            else:
                missing = "not prepared (python run_all.py prepare transfer)"
                parts.append(f"imagefolder cache {f'prepared: {cache}' if cache else missing}")
        return "; ".join(parts)

    @classmethod
    def prepare(cls, data_root: Path, workers: int) -> None:
        """Decode the ImageFolder tree at ``imagenet/train`` into its cache (``workers`` processes),
        unless a current one exists."""
        prepare_imagefolder(require_root(data_root, cls.name) / SOURCE_DIRS["imagefolder"], workers)


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (population) standard deviation of uint8 images ``[N, 3, H, W]`` scaled to
    [0, 1], each ``[1, 3, 1, 1]``; accumulated in float64 over chunks of ``chunk`` images. A constant
    channel gets a deviation of 1."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for part in images.split(chunk):
        values = part.double() / 255
        total += values.sum((0, 2, 3))
        squares += values.square().sum((0, 2, 3))
    count = images.numel() / 3
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return mean.float().view(1, 3, 1, 1), std.float().view(1, 3, 1, 1)
