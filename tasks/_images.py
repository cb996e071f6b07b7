"""Image files -> a prepared uint8 cache, and a dataset that reads the cache or decodes on the fly.

Shared by the image tasks (not a task module: the ``_`` prefix keeps the registry from scanning it).
:func:`build_cache` decodes and resizes every image once (PIL, in a process pool) into one ``.npy``
array ``[N, 3, H, W]`` written with ``numpy.lib.format.open_memmap``, then writes a JSON manifest (a
fingerprint of the sources, the image count, size and resize filter) *last*: an array without a
matching manifest is partial or stale and is never read (:func:`find_cache`). The sources are list
files (:func:`file_fingerprints`: size and SHA-256 of each) or, for a folder tree of images, the sorted
file list (:func:`tree_fingerprint`: names and sizes). The cache goes beside the
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
from types import MappingProxyType
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
RESAMPLE = MappingProxyType({"bilinear": Image.Resampling.BILINEAR, "box": Image.Resampling.BOX})
"""The resize filters: ``bilinear`` as torchvision's ``Resize((size, size))`` on a PIL image (CelebA in
FAMO), ``box`` as the downsampled ImageNet of Chrabaszcz et al. 2017 ("A Downsampled Variant of ImageNet
as an Alternative to the CIFAR datasets")."""


def decode_image(path: Path, size: int, resample: str = "bilinear") -> np.ndarray:
    """The image at ``path`` as RGB, resized to ``size`` x ``size`` with the filter ``resample`` (a key
    of :data:`RESAMPLE`), uint8 ``[3, size, size]``. With ``box``, a JPEG is first decoded at the
    smallest DCT scale that keeps at least ``2 * size`` pixels a side (PIL's ``draft``), much faster."""
    try:
        with Image.open(path) as image:
            if resample == "box":
                image.draft("RGB", (2 * size, 2 * size))
            pixels = np.asarray(image.convert("RGB").resize((size, size), RESAMPLE[resample]))
    except FileNotFoundError as err:
        raise DataError(f"{path}: image file not found") from err
    except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise DataError(f"{path}: cannot decode the image: {err}") from err
    return pixels.transpose(2, 0, 1).copy()


def fingerprint(path: Path) -> dict[str, Any]:
    """``{"bytes", "sha256"}`` of a file: what a cache records of the lists it was built from."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def file_fingerprints(files: Sequence[Path]) -> dict[str, Any]:
    """The :func:`fingerprint` of each list file, by file name: the sources of a cache of listed images."""
    return {p.name: fingerprint(p) for p in files}


def tree_fingerprint(folder: Path, files: Sequence[Path]) -> dict[str, Any]:
    """``{"files", "bytes", "sha256"}`` of the image ``files`` under ``folder``, in their order: the
    SHA-256 of one ``<path relative to folder>\t<size>`` line per file. Renaming, adding, removing or
    rewriting (to another size) a file changes it, without reading a single image."""
    digest = hashlib.sha256()
    total = 0
    for path in files:
        size = path.stat().st_size
        total += size
        digest.update(f"{path.relative_to(folder).as_posix()}\t{size}\n".encode())
    return {"files": len(files), "bytes": total, "sha256": digest.hexdigest()}


def manifest(sources: Mapping[str, Any], count: int, size: int, resample: str = "bilinear") -> dict[str, Any]:
    """What a cache of ``count`` images at ``size`` (filter ``resample``) must record; ``sources``
    fingerprints what it was built from (:func:`file_fingerprints`, :func:`tree_fingerprint`)."""
    if resample not in RESAMPLE:
        raise ValueError(f"resample={resample!r} must be one of {tuple(RESAMPLE)}")
    return {
        "format": CACHE_FORMAT,
        "images": count,
        "size": size,
        "resize": f"PIL {resample}",
        "sources": dict(sources),
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
        return "built from other sources, or at another image size or filter (stale)"
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
    (0 or 1: in this process), at the size and filter of the :func:`manifest` ``expected``, which is
    written last. Returns the array's path."""
    size, resample = expected["size"], expected["resize"].removeprefix("PIL ")
    folder = next((f for f in cache_folders(data_dir) if _usable_folder(f)), None)
    if folder is None:
        raise DataError(f"{data_dir}: no writable folder for the image cache: {cache_folders(data_dir)}")
    array_file, manifest_file = cache_files(folder, stem)
    manifest_file.unlink(missing_ok=True)  # from here on, an interruption leaves no valid cache
    array = open_memmap(array_file, mode="w+", dtype=np.uint8, shape=(len(images), 3, size, size))
    decoded = decode_all(images, size, workers, resample)
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


def decode_all(
    images: Sequence[Path], size: int, workers: int, resample: str = "bilinear"
) -> Iterator[np.ndarray]:
    """:func:`decode_image` of each of ``images`` in order, from a pool of ``workers`` processes (0 or
    1: this process)."""
    if workers <= 1:
        yield from (decode_image(path, size, resample) for path in images)
        return
    with ProcessPoolExecutor(workers) as pool:
        repeat = itertools.repeat
        yield from pool.map(decode_image, images, repeat(size), repeat(resample), chunksize=CHUNK)


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
