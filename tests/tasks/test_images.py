"""The shared image decoding and cache (tasks._images): filters, fingerprints and manifests by hand.
The cache's life cycle is tested through its users (test_celeba.py, test_transfer.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks import _images as images

BLOCKS = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [40, 80, 120]]], dtype=np.uint8)
"""Four colours, one per 2×2 block of a 4×4 image."""


@pytest.fixture
def blocks(tmp_path: Path) -> Path:
    path = tmp_path / "blocks.png"
    Image.fromarray(BLOCKS.repeat(2, axis=0).repeat(2, axis=1)).save(path)  # lossless
    return path


def test_box_filter_averages_each_block(blocks):
    pixels = images.decode_image(blocks, 2, "box")
    assert pixels.dtype == np.uint8 and np.array_equal(pixels, BLOCKS.transpose(2, 0, 1))


def test_bilinear_filter_blends_neighbouring_blocks(blocks):
    pixels = images.decode_image(blocks, 2).astype(int)  # bilinear: the default
    assert pixels.shape == (3, 2, 2)
    assert 0 < pixels[1, 0, 0] < 255 and pixels[0, 0, 0] < 255  # green leaks into the red block


def test_tree_fingerprint_hashes_relative_names_and_sizes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    files = [tmp_path / "a" / "x.png", tmp_path / "b" / "y.png"]
    files[0].write_bytes(b"123")
    files[1].write_bytes(b"4567")
    expected = hashlib.sha256(b"a/x.png\t3\nb/y.png\t4\n").hexdigest()
    assert images.tree_fingerprint(tmp_path, files) == {"files": 2, "bytes": 7, "sha256": expected}
    files[1].write_bytes(b"45678")  # rewritten to another size
    assert images.tree_fingerprint(tmp_path, files)["sha256"] != expected


def test_manifest_records_the_filter_and_sources(tmp_path):
    listed = tmp_path / "list.txt"
    listed.write_bytes(b"abc")
    sources = images.file_fingerprints([listed])
    assert sources == {"list.txt": {"bytes": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}}
    assert images.manifest(sources, 5, 8) == {
        "format": images.CACHE_FORMAT,
        "images": 5,
        "size": 8,
        "resize": "PIL bilinear",
        "sources": sources,
    }
    assert images.manifest(sources, 5, 8, "box")["resize"] == "PIL box"
    with pytest.raises(ValueError, match="resample='nearest'"):
        images.manifest(sources, 5, 8, "nearest")
