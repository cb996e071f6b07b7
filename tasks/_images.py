"""Image files -> a prepared uint8 cache, and a dataset that reads the cache or decodes on the fly.

Shared by the image tasks (not a task module: the ``_`` prefix keeps the registry from scanning it).
:func:`build_cache` decodes and resizes every image once (PIL, bilinear, in a process pool) into one
``.npy`` array ``[N, 3, H, W]`` written with ``numpy.lib.format.open_memmap``, then writes a JSON
manifest (the size and SHA-256 of the source lists and the image size) *last*: an array without a
matching manifest is partial or stale and is never read (:func:`find_cache`). The cache goes beside the
data (``<data dir>/gsb_cache/``) or, where that folder is read-only, under
``$XDG_CACHE_HOME/gradient-surgery-bench/`` (default ``~/.cache``). Decoding on the fly goes through
the same :func:`decode_image`, so both give identical pixels.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from benchmark.data import DataError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
CACHE_FOLDER = "gsb_cache"
CHUNK = 64
"""Images per task handed to a pool worker."""


def decode_image(path: Path, size: int) -> np.ndarray:
    """The image at ``path`` as RGB, resized to ``size`` x ``size`` (PIL bilinear, as torchvision's
    ``Resize((size, size))`` on a PIL image), uint8 ``[3, size, size]``."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    except FileNotFoundError as err:
        raise DataError(f"{path}: image file not found") from err
    except OSError as err:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise DataError(f"{path}: cannot decode the image: {err}") from err
    return pixels.transpose(2, 0, 1).copy()


def fingerprint(path: Path) -> dict[str, Any]:
    """``{"bytes", "sha256"}`` of a file: what a cache records of the lists it was built from."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def manifest(sources: Sequence[Path], count: int, size: int) -> dict[str, Any]:
    """What a cache of ``count`` images at ``size`` built from the list files ``sources`` must record."""
    return {
        "format": CACHE_FORMAT,
        "images": count,
        "size": size,
        "resize": "PIL bilinear",
        "sources": {p.name: fingerprint(p) for p in sources},
    }


def writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def cache_folders(data_dir: Path) -> list[Path]:
    """Where a cache of ``data_dir`` may be, in the order they are tried: beside the data, then the
    user cache folder (named by a hash of the data folder's absolute path)."""
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return [data_dir / CACHE_FOLDER, user / "gradient-surgery-bench" / key]


def cache_files(folder: Path, stem: str) -> tuple[Path, Path]:
    """``(array .npy, manifest .json)`` of the cache ``stem`` in ``folder``."""
    return folder / f"{stem}.npy", folder / f"{stem}.json"


def find_cache(data_dir: Path, stem: str, expected: Mapping[str, Any]) -> Path | None:
    """The array of a complete cache whose manifest equals ``expected``; ``None`` if there is none.
    A cache that exists but does not match (stale or partial) is logged and ignored."""
    for folder in cache_folders(data_dir):
        array, manifest_file = cache_files(folder, stem)
        if not array.exists() and not manifest_file.exists():
            continue
        problem = _cache_problem(array, manifest_file, expected)
        if problem is None:
            return array
        log.warning("%s: ignoring the image cache: %s", array, problem)
    return None


def _cache_problem(array: Path, manifest_file: Path, expected: Mapping[str, Any]) -> str | None:
    """Why the cache is unusable, or ``None``."""
    if not manifest_file.is_file():
        return "no manifest (an interrupted prepare)"
    try:
        recorded = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as err:
        return f"unreadable manifest ({err})"
    if recorded != expected:
        return "built from other list files or another image size (stale)"
    try:
        shape = np.load(array, mmap_mode="r").shape
    except (OSError, ValueError) as err:
        return f"unreadable array ({err})"
    wanted = (expected["images"], 3, expected["size"], expected["size"])
    return None if shape == wanted else f"array of shape {shape}, expected {wanted}"


def build_cache(
    images: Sequence[Path], data_dir: Path, stem: str, expected: Mapping[str, Any], workers: int
) -> Path:
    """Decode ``images`` (in order) into the cache ``stem`` of ``data_dir`` with ``workers`` processes
    (0 or 1: in this process); the manifest ``expected`` is written last. Returns the array's path."""
    size = expected["size"]
    folder = next((f for f in cache_folders(data_dir) if _usable_folder(f)), None)
    if folder is None:
        raise DataError(f"{data_dir}: no writable folder for the image cache: {cache_folders(data_dir)}")
    array_file, manifest_file = cache_files(folder, stem)
    manifest_file.unlink(missing_ok=True)  # from here on, an interruption leaves no valid cache
    array = open_memmap(array_file, mode="w+", dtype=np.uint8, shape=(len(images), 3, size, size))
    decoded = _decode_all(images, size, workers)
    for row, pixels in enumerate(tqdm(decoded, total=len(images), desc=f"prepare {stem}", unit="img")):
        array[row] = pixels
    array.flush()
    del array
    partial = manifest_file.with_suffix(".json.tmp")
    partial.write_text(json.dumps(expected, indent=1, sort_keys=True))
    partial.replace(manifest_file)
    log.info("wrote %s (%d images, %dx%d)", array_file, len(images), size, size)
    return array_file


def _usable_folder(folder: Path) -> bool:
    """``folder`` exists and is writable, or can be created in a writable parent."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not writable(existing):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    return True


def _decode_all(images: Sequence[Path], size: int, workers: int) -> Iterator[np.ndarray]:
    """The decoded images in order, from a pool of ``workers`` processes (0 or 1: this process)."""
    if workers <= 1:
        yield from (decode_image(path, size) for path in images)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(decode_image, images, itertools.repeat(size), chunksize=CHUNK)


class ImageDataset(Dataset):
    """Images in [0, 1] ``[3, size, size]`` float32 with their target rows.

    Row ``i`` is ``rows[i]`` of the cache array ``cache`` if given, else the file ``files[i]`` decoded
    on the fly. The cache is memory-mapped lazily in each process (DataLoader workers included).
    """

    def __init__(
        self, files: Sequence[Path], rows: np.ndarray, targets: Tensor, size: int, cache: Path | None
    ) -> None:
        if not len(files) == len(rows) == len(targets):
            raise ValueError(f"{len(files)} files, {len(rows)} cache rows and {len(targets)} targets")
        self.files, self.rows, self.targets = list(files), rows, targets
        self.size, self.cache = size, cache
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if self.cache is None:
            pixels = decode_image(self.files[index], self.size)
        else:
            if self._array is None:
                self._array = np.load(self.cache, mmap_mode="r")
            pixels = np.array(self._array[self.rows[index]])
        return torch.from_numpy(pixels).float().div_(255), self.targets[index]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}  # each worker maps the file itself
