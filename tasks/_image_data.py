"""Readers of CIFAR-10 and CIFAR-100 (python pickle format), and :class:`Images`, what the image readers
return (ImageFolder trees: :mod:`tasks._imagefolder`).

Every reader returns :class:`Images`, uint8 ``[N, 3, 32, 32]`` (channels first) with int64 labels; a
missing, truncated or malformed file raises :class:`benchmark.data.DataError` naming the file, the
layout expected and where the dataset is published.

- CIFAR (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html): each file is a pickled dict
  with bytes keys; ``b"data"`` is a uint8 ``[N, 3072]`` array, each row the red, green then blue 32×32
  planes in row-major order. CIFAR-10: ``cifar-10-batches-py/data_batch_1..5``, ``test_batch`` (labels
  ``b"labels"``) and ``batches.meta`` (``b"label_names"``). CIFAR-100: ``cifar-100-python/train``,
  ``test`` (labels ``b"fine_labels"``) and ``meta`` (``b"fine_label_names"``).

Unpickling only accepts the few globals a NumPy array needs, so a crafted file cannot run code.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmark.data import DataError

CIFAR_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html"
SIZE = 32
"""Side of every image returned (CIFAR's)."""
PIXELS = 3 * SIZE * SIZE

CIFAR10_LAYOUT = (
    "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}: pickled dicts with b'data' "
    f"(uint8 [N, {PIXELS}]) and b'labels'"
)
CIFAR100_LAYOUT = (
    "cifar-100-python/{train, test, meta}: pickled dicts with b'data' "
    f"(uint8 [N, {PIXELS}]) and b'fine_labels'"
)

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
