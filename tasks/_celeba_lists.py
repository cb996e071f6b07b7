"""CelebA's annotation lists on disk: where they are and what they say, checked line by line.

The dataset (Liu et al. 2015, "Deep Learning Face Attributes in the Wild", ICCV) is published at
https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html. Three layouts are read, in a data root ``R``:

- the official one, ``R/img_align_celeba/*.jpg``, ``R/list_attr_celeba.txt`` (line 1: the image count;
  line 2: the 40 attribute names; then ``000001.jpg  -1  1 ...``, fields separated by runs of spaces)
  and ``R/list_eval_partition.txt`` (``000001.jpg 0``; 0/1/2 = train/val/test);
- the same one folder down, ``R/celeba/...`` (torchvision's layout);
- the CSV variant: ``list_attr_celeba.csv`` (header ``image_id,5_o_Clock_Shadow,...``) and
  ``list_eval_partition.csv`` (header ``image_id,partition``), in either folder; its images may sit one
  folder deeper, ``img_align_celeba/img_align_celeba/``.

Anything missing or malformed raises :class:`benchmark.data.DataError` naming the file and line.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.data import DataError

PROJECT_PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)  # fmt: skip
"""The 40 attributes in the order of ``list_attr_celeba.txt``."""
SPLITS = ("train", "val", "test")
"""Partition codes 0, 1, 2."""
IMAGE_FOLDER = "img_align_celeba"
LISTS = {
    "txt": ("list_attr_celeba.txt", "list_eval_partition.txt"),
    "csv": ("list_attr_celeba.csv", "list_eval_partition.csv"),
}
LAYOUT = (
    f"expected in the data root or its 'celeba/' folder: {IMAGE_FOLDER}/*.jpg, list_attr_celeba.txt and "
    "list_eval_partition.txt (or their .csv variants); CelebA is published at " + PROJECT_PAGE
)


@dataclass(frozen=True)
class Layout:
    """Where one copy of CelebA is: its folder, its two list files and its image folder."""

    folder: Path
    attributes: Path
    partition: Path

    @property
    def images(self) -> Path:
        """The folder of the JPEGs (the CSV variant's doubled ``img_align_celeba/img_align_celeba``
        where it exists)."""
        nested = self.folder / IMAGE_FOLDER / IMAGE_FOLDER
        return nested if nested.is_dir() else self.folder / IMAGE_FOLDER

    @property
    def lists(self) -> tuple[Path, Path]:
        return self.attributes, self.partition


@dataclass(frozen=True)
class Annotations:
    """The lists' content: image names ``[N]``, attributes ``[N, 40]`` bool, partition codes ``[N]``,
    all in the attribute list's order."""

    images: np.ndarray
    attributes: np.ndarray
    partition: np.ndarray


def locate(data_root: Path) -> Layout:
    """The first folder of ``data_root``, ``data_root/celeba`` holding an attribute list (.txt before
    .csv); its partition list must be there too."""
    for folder in (data_root, data_root / "celeba"):
        for attributes, partition in LISTS.values():
            if (folder / attributes).is_file():
                if not (folder / partition).is_file():
                    raise DataError(f"{folder / partition}: file not found (next to {attributes}); {LAYOUT}")
                return Layout(folder, folder / attributes, folder / partition)
    raise DataError(f"{data_root}: no CelebA annotation lists found; {LAYOUT}")


def read(layout: Layout) -> Annotations:
    """Parse and cross-check both lists (cached while the files are unchanged)."""
    stamps = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in layout.lists)
    return _read(layout.attributes, layout.partition, stamps)


@cache
def _read(attributes: Path, partition: Path, stamps: tuple[tuple[int, int], ...]) -> Annotations:
    del stamps  # part of the cache key only
    images, values = _attribute_list(attributes)
    codes = _partition_list(partition)
    missing = pd.Index(images).difference(codes.index)
    if len(missing):
        raise DataError(f"{partition}: no entry for {missing[0]} (listed in {attributes.name}); {LAYOUT}")
    extra = codes.index.difference(pd.Index(images))
    if len(extra):
        raise DataError(f"{partition}: lists {extra[0]}, which {attributes.name} does not; {LAYOUT}")
    return Annotations(images, values == 1, codes.loc[images].to_numpy(np.int8))


def _attribute_list(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(image names [N], values [N, 40] in {-1, 1})`` of ``list_attr_celeba.txt`` or ``.csv``."""
    if path.suffix == ".csv":
        header = _line(path, 1).strip().split(",")
        _check_header(path, 1, header, ["image_id", *ATTRIBUTES])
        frame = _table(path, 1, 1 + len(ATTRIBUTES), sep=",")
        first = 2
    else:
        count_line = _line(path, 1).strip()
        if not count_line.isdigit():
            raise DataError(f"{path}:1: expected the number of images, got {count_line!r}; {LAYOUT}")
        _check_header(path, 2, _line(path, 2).split(), list(ATTRIBUTES))
        frame = _table(path, 2, 1 + len(ATTRIBUTES), sep=r"\s+")
        first = 3
        if len(frame) != int(count_line):
            raise DataError(
                f"{path}:1: declares {int(count_line)} images but lists {len(frame)} (truncated?); {LAYOUT}"
            )
    values = frame.iloc[:, 1:].apply(pd.to_numeric, errors="coerce").to_numpy()
    expected = f"an image name and {len(ATTRIBUTES)} values -1 or 1"
    images = _checked_images(path, frame, ~np.isin(values, (-1, 1)).all(1), first, expected)
    return images, values.astype(np.int8)


def _partition_list(path: Path) -> pd.Series:
    """``image name -> 0/1/2`` of ``list_eval_partition.txt`` or ``.csv``."""
    if path.suffix == ".csv":
        _check_header(path, 1, _line(path, 1).strip().split(","), ["image_id", "partition"])
        frame, first = _table(path, 1, 2, sep=","), 2
    else:
        frame, first = _table(path, 0, 2, sep=r"\s+"), 1
    codes = pd.to_numeric(frame.iloc[:, 1], errors="coerce").to_numpy()
    expected = "an image name and a partition 0, 1 or 2 (train, val, test)"
    images = _checked_images(path, frame, ~np.isin(codes, (0, 1, 2)), first, expected)
    return pd.Series(codes.astype(np.int8), index=images)


def _checked_images(
    path: Path, frame: pd.DataFrame, bad: np.ndarray, first: int, expected: str
) -> np.ndarray:
    """The image names of ``frame`` (first column), read from ``path`` from line ``first``; a
    ``DataError`` at the first ``bad`` row, naming its line and what was ``expected``, or at a name
    listed twice."""
    if bad.any():
        line = first + int(np.argmax(bad))
        raise DataError(f"{path}:{line}: expected {expected}, got {_line(path, line).strip()!r}")
    images = frame.iloc[:, 0].to_numpy(str)
    _check_unique(path, images, first)
    return images


def _table(path: Path, header_lines: int, fields: int, sep: str) -> pd.DataFrame:
    """The records after ``header_lines`` lines, ``fields`` columns (short rows padded with NaN); a
    row with too many fields raises naming its line."""
    try:
        frame = pd.read_csv(
            path, sep=sep, skiprows=header_lines, header=None, names=range(fields), dtype={0: str}
        )
    except pd.errors.ParserError as err:
        line = _first_long_line(path, header_lines, fields, sep)
        raise DataError(f"{path}:{line}: more than {fields} fields: {_line(path, line).strip()!r}") from err
    except (pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: no records after line {header_lines} ({err}); {LAYOUT}") from err
    if frame.empty:
        raise DataError(f"{path}: no records after line {header_lines}; {LAYOUT}")
    return frame


def _first_long_line(path: Path, header_lines: int, fields: int, sep: str) -> int:
    with path.open() as stream:
        for number, text in enumerate(itertools.islice(stream, header_lines, None), header_lines + 1):
            parts = text.split() if sep == r"\s+" else text.rstrip("\n").split(sep)
            if len(parts) > fields:
                return number
    return header_lines + 1


def _line(path: Path, number: int) -> str:
    """Line ``number`` (from 1) of ``path``; ``''`` past the end."""
    try:
        with path.open() as stream:
            return next(itertools.islice(stream, number - 1, None), "")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a text file ({err}); {LAYOUT}") from err


def _check_header(path: Path, line: int, names: list[str], expected: list[str]) -> None:
    if names != expected:
        wrong = next((i for i, (n, e) in enumerate(zip(names, expected, strict=False)) if n != e), None)
        detail = "" if wrong is None else f"; name {wrong + 1} is {names[wrong]!r}, not {expected[wrong]!r}"
        raise DataError(
            f"{path}:{line}: expected the header {' '.join(expected[:3])} ... ({len(expected)} names), "
            f"got {len(names)} names{detail}"
        )


def _check_unique(path: Path, images: np.ndarray, first: int) -> None:
    repeated = pd.Index(images).duplicated()
    if repeated.any():
        row = int(np.argmax(repeated))
        raise DataError(f"{path}:{first + row}: {images[row]} is listed twice")
