"""Readers of on-disk image datasets: CIFAR-10 and CIFAR-100 (python pickle format) and ImageFolder trees.

Every reader returns :class:`Images`, uint8 ``[N, 3, 32, 32]`` (channels first) with int64 labels; a
missing, truncated or malformed file raises :class:`benchmark.data.DataError` naming the file, the
layout expected and where the dataset is published.

- CIFAR (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html): each file is a pickled dict
  with bytes keys; ``b"data"`` is a uint8 ``[N, 3072]`` array, each row the red, green then blue 32×32
  planes in row-major order. CIFAR-10: ``cifar-10-batches-py/data_batch_1..5``, ``test_batch`` (labels
  ``b"labels"``) and ``batches.meta`` (``b"label_names"``). CIFAR-100: ``cifar-100-python/train``,
  ``test`` (labels ``b"fine_labels"``) and ``meta`` (``b"fine_label_names"``).
- ImageFolder (the layout of ImageNet's ``train/<wnid>/*.JPEG``, torchvision's ``ImageFolder``): one
  folder per class, classes numbered in sorted folder order; images decoded with PIL, converted to RGB
  and resized to 32×32 with a box filter, as the downsampled ImageNet of Chrabaszcz et al. 2017
  ("A Downsampled Variant of ImageNet as an Alternative to the CIFAR datasets"). Decoding a large tree
  is slow: :func:`write_cache` stores it once as ``.npz`` and :func:`read_cache` reads it back.

Unpickling only accepts the few globals a NumPy array needs, so a crafted file cannot run code.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from tqdm import tqdm

from benchmark.data import DataError

log = logging.getLogger(__name__)

CIFAR_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGENET_SOURCE = "https://image-net.org"
SIZE = 32
"""Side of every image returned (CIFAR's)."""
PIXELS = 3 * SIZE * SIZE
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp"})

CIFAR10_LAYOUT = (
    "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}: pickled dicts with b'data' "
    f"(uint8 [N, {PIXELS}]) and b'labels'"
)
CIFAR100_LAYOUT = (
    "cifar-100-python/{train, test, meta}: pickled dicts with b'data' "
    f"(uint8 [N, {PIXELS}]) and b'fine_labels'"
)
IMAGEFOLDER_LAYOUT = "<folder>/<class>/<image>.JPEG (ImageNet's train/<wnid>/*.JPEG)"

_ARRAY_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
    }
)


@dataclass(frozen=True)
class Images:
    """A labelled image set: ``images`` uint8 ``[N, 3, 32, 32]``, ``labels`` int64 ``[N]``, ``classes``."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds NumPy arrays and plain containers, and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")
        return super().find_class(module, name)


def _fail(path: Path, problem: str, layout: str, source: str) -> DataError:
    return DataError(f"{path}: {problem}; expected {layout} (published at {source})")


def read_pickle(path: Path, keys: Sequence[bytes], layout: str, source: str = CIFAR_SOURCE) -> dict:
    """The pickled dict in ``path`` (bytes keys, Python 2 strings read as bytes), which must hold ``keys``."""
    if not path.is_file():
        raise _fail(path, "file not found", layout, source)
    try:
        with path.open("rb") as f:
            record = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise _fail(path, f"not a readable pickle (truncated or corrupt?): {err}", layout, source) from err
    if not isinstance(record, dict):
        raise _fail(path, f"holds a {type(record).__name__}, not a dict", layout, source)
    missing = [k for k in keys if k not in record]
    if missing:
        found = ", ".join(map(repr, list(record)[:8])) or "none"
        raise _fail(path, f"missing key {missing[0]!r} (keys found: {found})", layout, source)
    return record


def _cifar_images(path: Path, record: dict, label_key: bytes, num_classes: int, layout: str) -> Images:
    """``b"data"`` and ``record[label_key]`` of one CIFAR file, checked, as :class:`Images`."""
    data = record[b"data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        what = f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}".strip()
        raise _fail(path, f"b'data' must be a uint8 array [N, {PIXELS}], got {what}", layout, CIFAR_SOURCE)
    if data.shape[1] != PIXELS:
        raise _fail(path, f"b'data' has shape {data.shape}, expected [N, {PIXELS}]", layout, CIFAR_SOURCE)
    try:
        labels = np.asarray(record[label_key], dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise _fail(path, f"{label_key!r} is not a list of integers: {err}", layout, CIFAR_SOURCE) from err
    if labels.shape != (len(data),):
        problem = f"{label_key!r} has shape {labels.shape}, expected ({len(data)},) like b'data'"
        raise _fail(path, problem, layout, CIFAR_SOURCE)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        problem = f"{label_key!r} holds {labels.min()}..{labels.max()}, outside 0..{num_classes - 1}"
        raise _fail(path, problem, layout, CIFAR_SOURCE)
    images = torch.from_numpy(data.reshape(-1, 3, SIZE, SIZE).copy())
    return Images(images, torch.from_numpy(labels), ())


def _class_names(path: Path, key: bytes, layout: str) -> tuple[str, ...]:
    names = read_pickle(path, [key], layout)[key]
    if not isinstance(names, list) or not names:
        raise _fail(path, f"{key!r} must be a non-empty list of class names", layout, CIFAR_SOURCE)
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _concat(parts: Sequence[Images], classes: tuple[str, ...]) -> Images:
    return Images(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]), classes)


def cifar10_files(folder: Path, split: str) -> list[Path]:
    """The pickles of CIFAR-10's ``split`` (``"train"``: the five data batches, ``"test"``)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return [folder / n for n in names]


def load_cifar10(folder: Path, split: str) -> Images:
    """CIFAR-10's ``"train"`` (50,000 images) or ``"test"`` (10,000) split from ``cifar-10-batches-py``."""
    classes = _class_names(folder / "batches.meta", b"label_names", CIFAR10_LAYOUT)
    parts = [
        _cifar_images(
            path,
            read_pickle(path, [b"data", b"labels"], CIFAR10_LAYOUT),
            b"labels",
            len(classes),
            CIFAR10_LAYOUT,
        )
        for path in cifar10_files(folder, split)
    ]
    return _concat(parts, classes)


def load_cifar100(folder: Path, split: str) -> Images:
    """CIFAR-100's ``"train"`` (50,000 images) or ``"test"`` (10,000) split, fine labels, from
    ``cifar-100-python``."""
    classes = _class_names(folder / "meta", b"fine_label_names", CIFAR100_LAYOUT)
    path = folder / split
    record = read_pickle(path, [b"data", b"fine_labels"], CIFAR100_LAYOUT)
    return _concat([_cifar_images(path, record, b"fine_labels", len(classes), CIFAR100_LAYOUT)], classes)


def image_files(folder: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """The image files of an ImageFolder tree, their class indices and the sorted class names."""
    if not folder.is_dir():
        raise _fail(folder, "folder not found", IMAGEFOLDER_LAYOUT, IMAGENET_SOURCE)
    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
    files, labels = [], []
    for index, name in enumerate(classes):
        found = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [index] * len(found)
    if not files:
        raise _fail(folder, "no class folder with images", IMAGEFOLDER_LAYOUT, IMAGENET_SOURCE)
    return files, labels, classes


def decode_image(path: Path) -> np.ndarray:
    """One image file -> uint8 ``[3, 32, 32]``: decoded, RGB, resized with a box filter."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (SIZE * 2, SIZE * 2))  # JPEG: decode at a reduced scale, much faster
            small = image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BOX)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise _fail(
            path, f"not a readable image (truncated or corrupt?): {err}", IMAGEFOLDER_LAYOUT, IMAGENET_SOURCE
        ) from err
    return np.asarray(small, dtype=np.uint8).transpose(2, 0, 1)


def load_imagefolder(folder: Path, workers: int = 0) -> Images:
    """Decode every image of an ImageFolder tree (``workers`` > 1: in that many processes)."""
    files, labels, classes = image_files(folder)
    progress = {"total": len(files), "desc": f"decoding {folder}", "disable": len(files) < 1000}
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            decoded = list(tqdm(pool.map(decode_image, files, chunksize=256), **progress))
    else:
        decoded = [decode_image(p) for p in tqdm(files, **progress)]
    return Images(torch.from_numpy(np.stack(decoded)), torch.tensor(labels, dtype=torch.int64), classes)


def write_cache(images: Images, path: Path) -> None:
    """Store ``images`` as an uncompressed ``.npz`` (images, labels, classes), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as f:
        arrays = {"images": images.images.numpy(), "labels": images.labels.numpy()}
        np.savez(f, **arrays, classes=np.array(images.classes))
    partial.replace(path)


def read_cache(path: Path, folder: Path) -> Images:
    """The cache :func:`write_cache` made of ``folder``; its classes must still be ``folder``'s."""
    layout = f"a cache written by 'run_all.py prepare' from {folder}"
    try:
        with np.load(path, allow_pickle=False) as cache:
            images, labels, classes = cache["images"], cache["labels"], tuple(cache["classes"].tolist())
    except (OSError, ValueError, KeyError, EOFError) as err:
        problem = f"unreadable cache ({err}); delete it or prepare again"
        raise _fail(path, problem, layout, IMAGENET_SOURCE) from err
    if images.dtype != np.uint8 or images.shape[1:] != (3, SIZE, SIZE) or labels.shape != images.shape[:1]:
        raise _fail(
            path,
            f"cache holds images {images.shape} {images.dtype}, labels {labels.shape}; "
            "delete it or prepare again",
            layout,
            IMAGENET_SOURCE,
        )
    current = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir())) if folder.is_dir() else classes
    if current != classes:
        raise _fail(
            path,
            f"cache has {len(classes)} classes but {folder} has {len(current)}; prepare again",
            layout,
            IMAGENET_SOURCE,
        )
    return Images(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), classes)
