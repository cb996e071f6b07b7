"""ImageFolder trees -> :class:`tasks._image_data.Images`, decoded once into the shared image cache.

The layout is ImageNet's ``train/<wnid>/*.JPEG`` (torchvision's ``ImageFolder``): one folder per class,
classes numbered in sorted folder order, files in sorted order within each. Images are decoded with
:func:`tasks._images.decode_image`, converted to RGB and resized to 32×32 with a box filter, as the
downsampled ImageNet of Chrabaszcz et al. 2017. :func:`prepare_imagefolder` stores the pixels once in
the cache of :mod:`tasks._images` beside the tree (``<tree's parent>/gsb_cache/<tree name>_32x32.npy``,
or the user cache folder); its manifest fingerprints the sorted file list (names and sizes), so a tree
whose files changed has a stale cache, which is ignored (decoded on the fly) until prepared again.
Labels and classes always come from the tree itself, never from the cache.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmark.data import DataError
from tasks import _images as images
from tasks._image_data import SIZE, Images

log = logging.getLogger(__name__)

IMAGENET_SOURCE = "https://image-net.org"
IMAGEFOLDER_LAYOUT = "<folder>/<class>/<image>.JPEG (ImageNet's train/<wnid>/*.JPEG)"
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp"})
RESAMPLE = "box"
DECODE_HINT = 20_000
"""Above this many images, decoding a tree without a cache logs a hint to prepare it."""


def image_files(folder: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """The image files of an ImageFolder tree, their class indices and the sorted class names."""
    if not folder.is_dir():
        raise _layout_error(f"{folder}: folder not found")
    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
    files, labels = [], []
    for index, name in enumerate(classes):
        found = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [index] * len(found)
    if not files:
        raise _layout_error(f"{folder}: no class folder with images")
    return files, labels, classes


def cache_location(folder: Path) -> tuple[Path, str]:
    """``(data_dir, stem)`` of the tree's cache for :mod:`tasks._images`: beside the tree, not in it
    (a folder inside would read as one more class)."""
    return folder.parent, f"{folder.name}_{SIZE}x{SIZE}"


def tree_manifest(folder: Path, files: list[Path]) -> dict[str, Any]:
    """The manifest a cache of ``files`` (the tree's, in order) must have."""
    return images.manifest({"tree": images.tree_fingerprint(folder, files)}, len(files), SIZE, RESAMPLE)


def find_imagefolder_cache(folder: Path, files: list[Path] | None = None) -> Path | None:
    """The array of the tree's complete, current cache, or ``None``; ``files``: the tree's, if listed."""
    files = image_files(folder)[0] if files is None else files
    return images.find_cache(*cache_location(folder), tree_manifest(folder, files))


def load_imagefolder(folder: Path, workers: int = 0) -> Images:
    """Every image of the tree: from its cache if current, else decoded (``workers`` > 1: in that
    many processes)."""
    files, labels, classes = image_files(folder)
    cache = find_imagefolder_cache(folder, files)
    if cache is not None:
        pixels = np.load(cache)
    else:
        progress = {"total": len(files), "desc": f"decoding {folder}", "disable": len(files) < 1000}
        with _explained():
            pixels = np.stack(list(tqdm(images.decode_all(files, SIZE, workers, RESAMPLE), **progress)))
        if len(files) > DECODE_HINT:
            log.info("decoded %d images of %s; 'run_all.py prepare' caches them once", len(files), folder)
    return Images(torch.from_numpy(pixels), torch.tensor(labels, dtype=torch.int64), classes)


def prepare_imagefolder(folder: Path, workers: int) -> Path:
    """Decode the tree into its cache with ``workers`` processes, unless a current one exists;
    returns the cache array."""
    files = image_files(folder)[0]
    expected = tree_manifest(folder, files)
    data_dir, stem = cache_location(folder)
    cached = images.find_cache(data_dir, stem, expected)
    if cached is not None:
        log.info("%s: the image cache %s is up to date", folder, cached)
        return cached
    with _explained():
        return images.build_cache(files, data_dir, stem, expected, workers)


def _layout_error(problem: str) -> DataError:
    return DataError(f"{problem}; expected {IMAGEFOLDER_LAYOUT} (published at {IMAGENET_SOURCE})")


@contextmanager
def _explained() -> Iterator[None]:
    """Add the expected layout and where the dataset is published to a decoding :class:`DataError`."""
    try:
        yield
    except DataError as err:
        raise _layout_error(str(err)) from err
