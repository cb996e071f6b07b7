"""transfer: the on-disk readers (CIFAR pickles, ImageFolder), splits, protocols and training, on
fixtures written here in the real formats."""

from __future__ import annotations

import collections
import dataclasses
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.config import load_suite, parse_suite
from benchmark.data import DataError
from benchmark.registry import TASKS
from benchmark.task import get_task
from benchmark.trainer import run
from tasks import _images as images
from tasks._image_data import load_cifar10, load_cifar100
from tasks._imagefolder import find_imagefolder_cache, load_imagefolder
from tasks._resnet import cifar_resnet
from tasks.transfer import Transfer, augment, channel_stats
from tests.tasks.training import TRAIN_SETTINGS
from tests.tasks.transfer_fixture import (
    COLOURS,
    write_cifar10,
    write_cifar100,
    write_imagefolder,
    write_pickle,
)

ROOT = Path(__file__).parents[2]
SMALL = {"width": 4, "blocks": 1, "val_fraction": 0.25}
"""A tiny trunk, and a validation split of 3 of the 12 CIFAR-100 fixture rows (one per class)."""


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))
    write_cifar100(tmp_path)
    write_cifar10(tmp_path)
    write_imagefolder(tmp_path)
    return tmp_path


# --- readers ------------------------------------------------------------------------------------


def test_cifar100_rows_are_red_green_blue_planes(root):
    train = load_cifar100(root / "cifar-100-python", "train")
    record = pickle.loads((root / "cifar-100-python" / "train").read_bytes())
    assert train.images.shape == (12, 3, 32, 32) and train.images.dtype == torch.uint8
    row = record[b"data"][5]
    assert int(train.images[5, 0, 0, 1]) == row[1]  # red, row 0, column 1
    assert int(train.images[5, 1, 0, 0]) == row[1024]  # green starts after the 32×32 red plane
    assert int(train.images[5, 2, 31, 31]) == row[3071]
    assert train.labels.tolist() == record[b"fine_labels"]
    assert len(train.classes) == 100 and train.classes[2] == "fine2"
    assert len(load_cifar100(root / "cifar-100-python", "test")) == 6


def test_cifar10_concatenates_the_five_batches(root):
    train, test = (
        load_cifar10(root / "cifar-10-batches-py", "train"),
        load_cifar10(root / "cifar-10-batches-py", "test"),
    )
    assert len(train) == 20 and len(test) == 4 and train.classes[3] == "c3"
    assert train.labels[:8].tolist() == [0, 1, 2, 3, 1, 2, 3, 4]  # batch 1, then batch 2


def test_imagefolder_sorts_classes_and_resizes(root):
    images = load_imagefolder(root / "imagenet" / "train")
    assert images.classes == ("n01", "n02")
    assert images.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert images.images.shape == (6, 3, 32, 32)
    for label, wnid in enumerate(images.classes):
        mean = images.images[images.labels == label].float().mean((0, 2, 3))
        torch.testing.assert_close(mean, torch.tensor(COLOURS[wnid], dtype=torch.float), atol=4, rtol=0)


def corrupt(path: Path, kind: str) -> None:
    record = pickle.loads(path.read_bytes())
    if kind == "missing":
        path.unlink()
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif kind == "wrong key":
        write_pickle(path, {k.replace(b"labels", b"lables"): v for k, v in record.items()})
    elif kind == "wrong shape":
        write_pickle(path, {**record, b"data": record[b"data"][:, :1000]})
    elif kind == "wrong dtype":
        write_pickle(path, {**record, b"data": record[b"data"].astype(np.float32)})
    elif kind == "short labels":
        key = b"fine_labels" if b"fine_labels" in record else b"labels"
        write_pickle(path, {**record, key: record[key][:-1]})
    elif kind == "label out of range":
        key = b"fine_labels" if b"fine_labels" in record else b"labels"
        write_pickle(path, {**record, key: [100] * len(record[key])})
    elif kind == "not a dict":
        write_pickle(path, [record])
    elif kind == "foreign global":
        write_pickle(path, collections.OrderedDict(record))


KINDS = [
    ("missing", "file not found"),
    ("truncated", "truncated"),
    ("wrong key", "missing key b'"),
    ("wrong shape", r"shape \(4, 1000\)|shape \(12, 1000\)"),
    ("wrong dtype", "uint8"),
    ("short labels", "labels' has shape"),
    ("label out of range", "outside"),
    ("not a dict", "not a dict"),
    ("foreign global", "OrderedDict"),
]


@pytest.mark.parametrize(("kind", "message"), KINDS)
@pytest.mark.parametrize(
    ("name", "load"),
    [
        ("cifar-100-python/train", lambda root: load_cifar100(root / "cifar-100-python", "train")),
        (
            "cifar-10-batches-py/data_batch_3",
            lambda root: load_cifar10(root / "cifar-10-batches-py", "train"),
        ),
    ],
)
def test_bad_cifar_files_raise_data_errors_naming_the_file(root, name, load, kind, message):
    path = root / name
    corrupt(path, kind)
    with pytest.raises(DataError, match=message) as error:
        load(root)
    assert str(error.value).startswith(f"{path}: ")
    assert "cs.toronto.edu/~kriz/cifar.html" in str(error.value) and "b'data'" in str(error.value)


@pytest.mark.parametrize("name", ["cifar-100-python/meta", "cifar-10-batches-py/batches.meta"])
def test_missing_or_truncated_meta_names_the_file(root, name):
    load = load_cifar100 if name.startswith("cifar-100") else load_cifar10
    path = root / name
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(DataError, match=f"^{path}: .*truncated"):
        load(path.parent, "train")
    path.unlink()
    with pytest.raises(DataError, match=f"^{path}: file not found"):
        load(path.parent, "train")


def test_bad_imagefolder_files_raise_data_errors_naming_them(root):
    folder = root / "imagenet" / "train"
    broken = folder / "n02" / "n02_1.JPEG"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(DataError, match=f"^{broken}: cannot decode the image.*wnid.*image-net.org"):
        load_imagefolder(folder)
    with pytest.raises(DataError, match=f"^{root / 'nowhere'}: folder not found.*wnid"):
        load_imagefolder(root / "nowhere")
    (root / "empty" / "n01").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folder with images"):
        load_imagefolder(root / "empty")


# --- the task -----------------------------------------------------------------------------------


def test_registered_with_defaults_and_metrics():
    assert TASKS.get("transfer") is Transfer and Transfer.needs_data
    task = Transfer()
    assert set(task.train_defaults) <= TRAIN_SETTINGS
    assert task.task_names == ("source", "target")
    assert [(m.name, m.higher_is_better) for m in task.metrics()] == [("target_accuracy", True)]
    assert task.selection_metric == "target_accuracy" and task.eval_splits == ("val", "test")
    assert Transfer.defaults()["source"] == "imagefolder" and "data_root" not in Transfer.defaults()
    finetune = Transfer(protocol="finetune", checkpoint="trunk.pt")
    assert finetune.train_defaults["lr"] < task.train_defaults["lr"]


@pytest.mark.parametrize("source", ["cifar10", "imagefolder"])
def test_splits_hold_out_validation_and_source_rows(root, source):
    task = get_task("transfer", root, source=source, source_eval_size=2, **SMALL)
    data = task.data
    assert len(data.target_train) == 9 and len(data.target_eval["val"]) == 3  # 25 % of 12
    assert sorted(data.target_eval["val"].labels.tolist()) == [0, 1, 2]  # stratified
    assert len(data.target_eval["test"]) == 6
    total = 20 if source == "cifar10" else 6
    held = 2 if source == "cifar10" else 1  # source_eval_size, at most a tenth (at least one)
    assert len(data.source_train) == total - held and len(data.source_eval["val"]) == held
    assert len(data.source_eval["test"]) == (4 if source == "cifar10" else held)
    assert data.num_classes == (10 if source == "cifar10" else 2, 100)
    again = get_task("transfer", root, source=source, source_eval_size=2, **SMALL).data
    other = get_task("transfer", root, source=source, source_eval_size=2, split_seed=1, **SMALL).data
    assert torch.equal(again.target_eval["val"].inputs, data.target_eval["val"].inputs)
    assert not torch.equal(other.target_eval["val"].inputs, data.target_eval["val"].inputs)


def test_missing_data_fails_at_construction_naming_the_file(tmp_path):
    write_cifar100(tmp_path)
    with pytest.raises(DataError, match=f"^{tmp_path / 'imagenet' / 'train'}: not found.*wnid"):
        get_task("transfer", tmp_path)
    with pytest.raises(DataError, match="data_batch_1"):
        get_task("transfer", tmp_path, source="cifar10")
    with pytest.raises(DataError, match="--data-root"):
        _ = Transfer().data
    write_imagefolder(tmp_path)
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(DataError, match=r"cifar-100-python/test: not found.*kriz/cifar\.html"):
        get_task("transfer", tmp_path)


def test_the_source_hold_out_is_at_most_a_tenth_of_the_source(root):
    data = get_task("transfer", root, source_eval_size=6, **SMALL).data
    assert len(data.source_eval["val"].labels) == 1 and len(data.source_train.labels) == 6 - 1


def test_augment_flips_and_crops_the_padded_image():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float).view(2, 3, 32, 32)
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    for image, result in zip(images, out, strict=True):
        padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
        windows = [
            candidate[:, top : top + 32, left : left + 32]
            for candidate in (padded, padded.flip(2))
            for top in range(9)
            for left in range(9)
        ]
        assert any(torch.equal(result, w) for w in windows)


def test_channel_stats_by_hand():
    images = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    images[0, 0] = 255  # red: half 0, half 1 -> mean ½, deviation ½
    images[:, 1] = 51  # green: constant 0.2 -> deviation replaced by 1
    mean, std = channel_stats(images, chunk=1)
    torch.testing.assert_close(mean.flatten(), torch.tensor([0.5, 0.2, 0.0]))
    torch.testing.assert_close(std.flatten(), torch.tensor([0.5, 1.0, 1.0]))


def test_inputs_are_normalised_with_the_target_statistics(root):
    task = get_task("transfer", root, source="cifar10", source_eval_size=2, augment=False, **SMALL)
    inputs = task.as_inputs(task.data.target_train.inputs, torch.Generator())
    torch.testing.assert_close(inputs.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(inputs.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-4, rtol=0)


def test_finetune_loads_the_trunk_checkpoint(root):
    torch.manual_seed(1)
    saved = cifar_resnet(4, 1)
    torch.save(saved.state_dict(), root / "trunk.pt")
    task = get_task("transfer", root, protocol="finetune", checkpoint="trunk.pt", source_eval_size=2, **SMALL)
    model = task.build_model()
    for name, value in saved.state_dict().items():
        assert torch.equal(model.trunk.state_dict()[name], value), name


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        (b"garbage", "not a readable checkpoint"),
        ("wider", "does not fit the trunk"),
        ("list", "holds a list"),
    ],
)
def test_bad_checkpoints_raise_data_errors_naming_the_file(root, content, message):
    path = root / "trunk.pt"
    if content == "wider":
        torch.save(cifar_resnet(8, 1).state_dict(), path)
    elif content == "list":
        torch.save([torch.zeros(1)], path)
    elif content is not None:
        path.write_bytes(content)
    params = {"protocol": "finetune", "checkpoint": "trunk.pt", "source_eval_size": 2, **SMALL}
    with pytest.raises(DataError, match=f"^{path}: {message}"):
        get_task("transfer", root, **params).build_model()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"source": "imagenet"}, "source"),
        ({"protocol": "pretrain"}, "protocol"),
        ({"protocol": "finetune"}, "checkpoint"),
        ({"checkpoint": "trunk.pt"}, "checkpoint"),
        ({"val_fraction": 0}, "val_fraction"),
        ({"source_fraction": 1}, "source_fraction"),
        ({"width": 0}, "width"),
        ({"blocks": 1.5}, "blocks"),
        ({"augment": "yes"}, "augment"),
        ({"target_dir": ""}, "target_dir"),
        ({"source_eval_size": 0}, "source_eval_size"),
    ],
)
def test_bad_parameters_name_the_argument(params, message):
    with pytest.raises(ValueError, match=message):
        Transfer(**params)


def test_data_status_and_prepare(root):
    assert "--data-root" in Transfer.data_status(None)
    status = Transfer.data_status(root)
    assert f"CIFAR-100 present at {root / 'cifar-100-python'}" in status
    assert "imagefolder cache not prepared" in status
    folder = root / "imagenet" / "train"
    decoded = load_imagefolder(folder)  # no cache yet: decoded on the fly
    Transfer.prepare(root, workers=0)
    array, manifest = images.cache_files(root / "imagenet" / images.CACHE_FOLDER, "train_32x32")
    assert find_imagefolder_cache(folder) == array and manifest.is_file()
    assert f"imagefolder cache prepared: {array}" in Transfer.data_status(root)
    cached = get_task("transfer", root, source_eval_size=2, **SMALL)._source()[0]
    assert torch.equal(cached.images, decoded.images) and torch.equal(cached.labels, decoded.labels)
    assert cached.classes == decoded.classes == ("n01", "n02")
    with pytest.raises(DataError, match="folder not found"):
        Transfer.prepare(root / "cifar-10-batches-py", workers=0)


def test_a_stale_imagefolder_cache_is_ignored_and_rebuilt(root):
    folder = root / "imagenet" / "train"
    Transfer.prepare(root, workers=0)
    array = find_imagefolder_cache(folder)
    (folder / "n01" / "n01_0.JPEG").rename(folder / "n02" / "n02_9.JPEG")  # same sizes, other files
    assert find_imagefolder_cache(folder) is None
    moved = load_imagefolder(folder)  # decoded on the fly, not the stale rows
    assert moved.labels.tolist() == [0, 0, 1, 1, 1, 1]
    assert moved.images[5].float().mean((1, 2)).sub(torch.tensor([20.0, 180, 240])).abs().max() < 4
    Transfer.prepare(root, workers=0)
    assert find_imagefolder_cache(folder) == array
    assert torch.equal(load_imagefolder(folder).images, moved.images)
    (folder / "n03").mkdir()  # a class without images: the pixels stay current, the classes follow the tree
    assert find_imagefolder_cache(folder) == array and load_imagefolder(folder).classes[-1] == "n03"


# --- training through the engine --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("level", ["param", "feature"])
@pytest.mark.parametrize(
    ("source", "method"),
    [
        ("imagefolder", {"name": "graddrop", "params": {"marginalize_batch": True, "leak": [0.0, 1.0]}}),
        ("cifar10", "pcgrad"),
    ],
)
def test_trains_and_evaluates_through_the_engine(root, source, method, level):
    if level == "param" and isinstance(method, dict):
        method = {**method, "params": {"leak": [0.0, 1.0]}}  # no batch at the param level to marginalise
    params = {"source": source, "source_eval_size": 2, **SMALL}
    raw = {
        "train": {"steps": 2, "eval_every": 1, "batch_size": 8, "level": level, "jacobian": "loop"},
        "tasks": [{"name": "transfer", "params": params}],
        "methods": [method],
    }
    spec = dataclasses.replace(parse_suite(raw).runs[0], data_root=str(root))
    result = run(spec)
    assert result.status == "ok", result.error
    values = {(r.step, r.split, r.name): r.value for r in result.metrics}
    assert {
        (2, "val", "target_accuracy"),
        (2, "test", "source_accuracy"),
        (2, "train_loss", "source"),
    } <= set(values)
    assert all(math.isfinite(v) for v in values.values())
    assert values[(2, "val", "target_accuracy")] in {0.0, 1 / 3, 2 / 3, 1.0}  # 3 validation images


def test_paper_suite_parses_with_the_paper_graddrop():
    suite = load_suite(ROOT / "configs" / "paper" / "transfer.yaml")
    methods = {run.method.label: run.method for run in suite.runs}
    assert set(methods) == {"ew", "pcgrad", "mgda", "uw", "gradnorm", "random_graddrop", "graddrop"}
    for name in ("graddrop", "random_graddrop"):
        assert methods[name].params == {"marginalize_batch": True, "leak": [0.0, 1.0]}
    assert {run.task.name for run in suite.runs} == {"transfer"} and len({r.seed for r in suite.runs}) == 3
    assert "GradDrop" in suite.description
