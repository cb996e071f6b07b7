"""Tiny CIFAR-100, CIFAR-10 and ImageFolder trees in their real on-disk formats (pickles with bytes
keys, JPEG folders), written by the tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_pickle(path: Path, record: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(record, protocol=2))


def pixels(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 3072), dtype=np.uint8)


def write_cifar100(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    folder = root / "cifar-100-python"
    names = [f"fine{i}".encode() for i in range(100)]
    write_pickle(folder / "meta", {b"fine_label_names": names, b"coarse_label_names": names[:20]})
    for split, count, seed in (("train", per_class, 0), ("test", 2, 1)):
        labels = [c for c in range(classes) for _ in range(count)]
        record = {b"data": pixels(len(labels), seed), b"fine_labels": labels, b"coarse_labels": labels}
        write_pickle(folder / split, {**record, b"batch_label": split.encode()})
    return folder


def write_cifar10(root: Path, per_batch: int = 4) -> Path:
    folder = root / "cifar-10-batches-py"
    write_pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    for seed, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        labels = [(seed + r) % 10 for r in range(per_batch)]
        write_pickle(folder / name, {b"data": pixels(per_batch, 10 + seed), b"labels": labels})
    return folder


COLOURS = {"n02": (200, 30, 90), "n01": (20, 180, 240)}


def write_imagefolder(root: Path, per_class: int = 3) -> Path:
    folder = root / "imagenet" / "train"
    for wnid, colour in COLOURS.items():  # n02 first: classes must come out sorted
        (folder / wnid).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40 + 8 * i, 30), colour).save(folder / wnid / f"{wnid}_{i}.JPEG", "JPEG")
    (folder / "n01" / "notes.txt").write_text("not an image")
    return folder
