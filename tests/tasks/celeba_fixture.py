"""A tiny CelebA on disk, in the real formats: JPEGs written with PIL and the two annotation lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tasks._celeba_lists import ATTRIBUTES

PARTITION = (0,) * 20 + (1,) * 8 + (2,) * 8
"""Partition codes of the fixture's 36 images: 20 train, 8 val, 8 test."""


def image_name(i: int) -> str:
    return f"{i + 1:06d}.jpg"


def attribute_values(seed: int = 0) -> np.ndarray:
    """The fixture's ``[36, 40]`` values in {-1, 1}."""
    return np.random.default_rng(seed).choice([-1, 1], size=(len(PARTITION), len(ATTRIBUTES)))


def make_celeba(root: Path, layout: str = "official", seed: int = 0) -> Path:
    """Write the fixture under ``root`` (``official``: in root; ``torchvision``: in ``root/celeba``;
    ``csv``: the CSV lists, images in ``img_align_celeba/img_align_celeba``). Returns the folder of
    the lists."""
    folder = root / "celeba" if layout == "torchvision" else root
    images = folder / "img_align_celeba"
    if layout == "csv":
        images = images / "img_align_celeba"
    images.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(len(PARTITION)):
        pixels = rng.integers(0, 256, size=(22, 18, 3), dtype=np.uint8)  # portrait, like CelebA's 218×178
        Image.fromarray(pixels).save(images / image_name(i), quality=90)
    values = attribute_values(seed)
    if layout == "csv":
        rows = [",".join(["image_id", *ATTRIBUTES])]
        rows += [",".join([image_name(i), *map(str, v)]) for i, v in enumerate(values)]
        (folder / "list_attr_celeba.csv").write_text("\n".join(rows) + "\n")
        parts = ["image_id,partition"] + [f"{image_name(i)},{p}" for i, p in enumerate(PARTITION)]
        (folder / "list_eval_partition.csv").write_text("\n".join(parts) + "\n")
    else:
        rows = [str(len(values)), " ".join(ATTRIBUTES) + " "]
        rows += [image_name(i) + " " + " ".join(f"{v:2d}" for v in row) for i, row in enumerate(values)]
        (folder / "list_attr_celeba.txt").write_text("\n".join(rows) + "\n")
        parts = [f"{image_name(i)} {p}" for i, p in enumerate(PARTITION)]
        (folder / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    return folder


def replace_line(path: Path, number: int, text: str | None) -> None:
    """Set line ``number`` (from 1) of ``path`` to ``text``, or delete it (``None``)."""
    lines = path.read_text().splitlines()
    if text is None:
        del lines[number - 1]
    else:
        lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")
