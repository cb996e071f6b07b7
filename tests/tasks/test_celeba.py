import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.config import load_suite
from benchmark.data import DataError
from benchmark.registry import TASKS
from benchmark.specs import PluginSpec, RunSpec, TrainSpec
from benchmark.task import get_task
from benchmark.trainer import run
from tasks import _images as images
from tasks._celeba_lists import ATTRIBUTES, PROJECT_PAGE
from tasks.celeba import CelebA, attribute_scores, cache_stem
from tests.tasks.celeba_fixture import PARTITION, attribute_values, image_name, make_celeba, replace_line
from tests.tasks.training import TRAIN_SETTINGS

CONFIGS = Path(__file__).parents[2] / "configs" / "paper"
SMALL = {"image_size": 8, "attributes": ["Bald", "Male", "Young"]}


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))
    make_celeba(tmp_path / "data")
    return tmp_path / "data"


def batches(task: CelebA, seed: int, count: int) -> list[torch.Tensor]:
    stream = task.train_batches(8, torch.Generator().manual_seed(seed))
    return [next(stream).inputs for _ in range(count)]


def test_registered_with_metrics_and_defaults(root):
    assert TASKS.get("celeba") is CelebA and CelebA.needs_data
    task = get_task("celeba", root)
    assert task.num_tasks == 40 and task.task_names == ATTRIBUTES
    assert set(task.train_defaults) <= TRAIN_SETTINGS
    assert task.train_defaults["steps"] == 15 * 636  # 15 epochs of ceil(162,770 / 256) steps
    assert task.train_defaults["lr"] == 3e-4 and task.train_defaults["batch_size"] == 256
    assert CelebA(model="resnet18", data_root=root).train_defaults["lr"] == 5e-4
    directions = [(m.name, m.higher_is_better) for m in task.metrics()]
    assert directions == [("mean_error", False), ("mean_f1", True)]
    assert task.selection_metric == "mean_error" and task.eval_splits == ("val", "test")
    assert "data_root" not in CelebA.defaults()


def test_reads_the_official_layout(root):
    task = CelebA(attributes=["Bald", "Young"], image_size=8, data_root=root)
    values = attribute_values()
    val = task.dataset("val")
    assert [len(task.dataset(s)) for s in ("train", "val", "test")] == [20, 8, 8]
    first = 20  # the first val image
    pixels, target = val[0]
    jpeg = Image.open(root / "img_align_celeba" / image_name(first)).convert("RGB")
    expected = jpeg.resize((8, 8), Image.Resampling.BILINEAR)  # FAMO's Resize((64, 64)) on a PIL image
    assert pixels.shape == (3, 8, 8) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels * 255, torch.tensor(np.asarray(expected)).permute(2, 0, 1).float())
    columns = [ATTRIBUTES.index("Bald"), ATTRIBUTES.index("Young")]
    assert target.tolist() == (values[first, columns] == 1).astype(float).tolist()
    assert task.steps_per_epoch(8) == 3  # ceil(20 / 8)


@pytest.mark.parametrize("layout", ["torchvision", "csv"])
def test_other_layouts_read_the_same(tmp_path, layout):
    make_celeba(tmp_path / "official")
    make_celeba(tmp_path / layout, layout=layout)
    a, b = (CelebA(image_size=8, data_root=tmp_path / name) for name in ("official", layout))
    assert np.array_equal(a.annotations.images, b.annotations.images)
    assert torch.equal(a.targets, b.targets)
    assert np.array_equal(b.annotations.partition, PARTITION)
    assert torch.equal(a.dataset("test")[3][0], b.dataset("test")[3][0])


def test_no_data_root_or_no_lists(tmp_path, monkeypatch):
    monkeypatch.delenv("GSB_DATA", raising=False)
    with pytest.raises(DataError, match="--data-root"):
        CelebA()
    with pytest.raises(DataError, match=r"list_attr_celeba\.txt.*" + PROJECT_PAGE.replace(".", r"\.")):
        CelebA(data_root=tmp_path)


def test_missing_partition_list_and_image_folder(root):
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(DataError, match=r"list_eval_partition\.txt: file not found"):
        CelebA(data_root=root)
    make_celeba(root.parent / "second")
    (root.parent / "second" / "img_align_celeba").rename(root.parent / "second" / "elsewhere")
    with pytest.raises(DataError, match=r"img_align_celeba: image folder not found"):
        CelebA(data_root=root.parent / "second")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("list_attr_celeba.txt", 1, "many"), r"list_attr_celeba\.txt:1: expected the number of images"),
        (("list_attr_celeba.txt", 2, "Bald Male"), r"list_attr_celeba\.txt:2: expected the header"),
        (("list_attr_celeba.txt", 5, "000003.jpg 1 2"), r"list_attr_celeba\.txt:5: expected an image name"),
        (("list_attr_celeba.txt", 7, "000005.jpg" + " 1" * 41), r"list_attr_celeba\.txt:7: more than 41"),
        (("list_attr_celeba.txt", 9, None), r"list_attr_celeba\.txt:1: declares 36 images but lists 35"),
        (("list_attr_celeba.txt", 6, "000003.jpg" + " 1" * 40), r"celeba\.txt:6: 000003.jpg .*twice"),
        (("list_eval_partition.txt", 4, "000004.jpg 3"), r"partition\.txt:4: expected .* 0, 1 or 2"),
        (("list_eval_partition.txt", 4, None), r"list_eval_partition\.txt: no entry for 000004\.jpg"),
    ],
)
def test_malformed_lists_name_the_file_and_line(root, edit, message):
    name, line, text = edit
    replace_line(root / name, line, text)
    with pytest.raises(DataError, match=message):
        CelebA(data_root=root)


def test_truncated_attribute_list_names_the_last_line(root):
    path = root / "list_attr_celeba.txt"
    path.write_text(path.read_text()[:-40])  # cut inside the last record, line 38
    with pytest.raises(DataError, match=r"list_attr_celeba\.txt:38: expected an image name and 40 values"):
        CelebA(data_root=root)


def test_malformed_csv_names_the_file_and_line(tmp_path):
    folder = make_celeba(tmp_path, layout="csv")
    replace_line(folder / "list_attr_celeba.csv", 3, "000002.jpg" + ",0" * 40)
    with pytest.raises(DataError, match=r"list_attr_celeba\.csv:3: expected an image name"):
        CelebA(data_root=tmp_path)
    replace_line(folder / "list_eval_partition.csv", 1, "image,partition")
    replace_line(folder / "list_attr_celeba.csv", 3, "000002.jpg" + ",1" * 40)
    with pytest.raises(DataError, match=r"list_eval_partition\.csv:1: expected the header"):
        CelebA(data_root=tmp_path)


def test_corrupt_or_missing_image_names_the_file(root):
    task = CelebA(image_size=8, data_root=root)
    (root / "img_align_celeba" / image_name(0)).write_bytes(b"not a jpeg")
    (root / "img_align_celeba" / image_name(1)).unlink()
    with pytest.raises(DataError, match=r"000001\.jpg: cannot decode"):
        task.dataset("train")[0]
    with pytest.raises(DataError, match=r"000002\.jpg: image file not found"):
        task.dataset("train")[1]


def test_prepare_writes_a_complete_cache_that_gives_the_same_batches(root):
    on_the_fly = CelebA(image_size=8, data_root=root)
    assert on_the_fly.cache is None
    CelebA.prepare(root, workers=0, image_size=8)
    array_file, manifest_file = images.cache_files(root / images.CACHE_FOLDER, cache_stem(8))
    array = np.load(array_file)
    assert array.shape == (36, 3, 8, 8) and array.dtype == np.uint8
    assert np.array_equal(array[5], images.decode_image(root / "img_align_celeba" / image_name(5), 8))
    manifest = json.loads(manifest_file.read_text())
    assert manifest["images"] == 36 and manifest["size"] == 8
    assert set(manifest["sources"]) == {"list_attr_celeba.txt", "list_eval_partition.txt"}
    cached = CelebA(image_size=8, data_root=root)
    assert cached.cache == array_file
    for a, b in zip(batches(on_the_fly, 3, 4), batches(cached, 3, 4), strict=True):
        assert torch.equal(a, b)
    model = on_the_fly.build_model().eval()
    assert on_the_fly.evaluate(model, "test") == cached.evaluate(model, "test")


def test_stale_or_partial_cache_is_ignored_and_rebuilt(root):
    CelebA.prepare(root, workers=0, image_size=8)
    array_file, manifest_file = images.cache_files(root / images.CACHE_FOLDER, cache_stem(8))
    replace_line(root / "list_eval_partition.txt", 1, "000001.jpg 1")  # the lists changed: stale
    assert CelebA(image_size=8, data_root=root).cache is None
    CelebA.prepare(root, workers=0, image_size=8)
    assert CelebA(image_size=8, data_root=root).cache == array_file
    manifest_file.unlink()  # an interrupted prepare: the manifest is written last
    assert CelebA(image_size=8, data_root=root).cache is None
    CelebA.prepare(root, workers=0, image_size=8)
    with array_file.open("r+b") as stream:  # a truncated array
        stream.truncate(array_file.stat().st_size // 2)
    assert CelebA(image_size=8, data_root=root).cache is None
    CelebA.prepare(root, workers=0, image_size=8)
    assert CelebA(image_size=8, data_root=root).cache == array_file
    assert np.load(array_file).shape == (36, 3, 8, 8)


def test_cache_goes_to_the_user_cache_when_the_data_is_read_only(root, monkeypatch):
    monkeypatch.setattr(images, "writable", lambda folder: not str(folder).startswith(str(root)))
    CelebA.prepare(root, workers=0, image_size=8)
    assert not (root / images.CACHE_FOLDER).exists()
    cached = CelebA(image_size=8, data_root=root).cache
    assert cached is not None and cached.parent.parent.name == "gradient-surgery-bench"


def test_prepare_in_parallel_matches_in_process(root, tmp_path):
    CelebA.prepare(root, workers=2, image_size=8)
    parallel = np.load(images.cache_files(root / images.CACHE_FOLDER, cache_stem(8))[0])
    files = [root / "img_align_celeba" / image_name(i) for i in range(36)]
    assert np.array_equal(parallel, np.stack([images.decode_image(f, 8) for f in files]))


def test_batches_repeat_with_the_seed_and_cover_an_epoch(root):
    task = CelebA(image_size=8, data_root=root)
    first = batches(task, 0, 3)
    assert all(torch.equal(a, b) for a, b in zip(first, batches(task, 0, 3), strict=True))
    assert not torch.equal(first[0], batches(task, 1, 1)[0])
    assert [len(b) for b in first] == [8, 8, 4]
    train = torch.stack([task.dataset("train")[i][0] for i in range(20)])
    torch.testing.assert_close(torch.cat(first).sum(0), train.sum(0))


def test_data_status(root, tmp_path, monkeypatch):
    monkeypatch.delenv("GSB_DATA", raising=False)
    assert "no data root" in CelebA.data_status(None)
    assert "not ready" in CelebA.data_status(tmp_path / "empty_but_missing")
    status = CelebA.data_status(root)
    assert f"36 images listed in {root}" in status and "not prepared" in status


def test_scores_by_hand():
    predicted = torch.tensor([[True, False], [True, False], [False, False], [False, True]])
    actual = torch.tensor([[True, False], [False, False], [True, False], [False, False]])
    error, f1 = attribute_scores(predicted, actual)
    assert error.tolist() == [0.5, 0.25]
    assert f1.tolist() == pytest.approx([0.5, 0.0])  # tp 1, fp 1, fn 1 -> 2 / 4; tp 0 -> 0


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluate_gives_every_metric(root, split):
    task = CelebA(**SMALL, data_root=root)
    torch.manual_seed(0)
    values = task.evaluate(task.build_model().eval(), split)
    names = {"mean_error", "mean_f1"} | {f"{k}/{a}" for k in ("error", "f1") for a in SMALL["attributes"]}
    assert set(values) == names
    assert values["mean_error"] == pytest.approx(sum(values[f"error/{a}"] for a in SMALL["attributes"]) / 3)
    assert all(0 <= v <= 1 for v in values.values())
    assert all(values[f"error/{a}"] * 8 == round(values[f"error/{a}"] * 8) for a in SMALL["attributes"])


def test_models_parameter_counts_and_features(root):
    famo = CelebA(data_root=root).build_model()
    # FAMO's CNN: 7 convolutions (3x3, no bias), 2 linear 512x512 (no bias), their batch norms
    convs = 9 * (3 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 256 * 256 + 256 * 512 + 512 * 512)
    norms = 2 * (64 + 128 + 128 + 256 + 256 + 512 + 512 + 512 + 512)
    assert sum(p.numel() for p in famo.trunk.parameters()) == convs + 2 * 512 * 512 + norms
    assert len(famo.heads) == 40 and famo.heads[0].in_features == 512
    resnet = CelebA(model="resnet18", data_root=root).build_model()
    assert sum(p.numel() for p in resnet.trunk.parameters()) == 11_168_832  # CIFAR ResNet-18 without fc
    assert resnet.trunk(torch.zeros(2, 3, 64, 64)).shape == (2, 2048)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"model": "resnet"}, r"model.*'resnet'.*did you mean 'resnet18'"),
        ({"attributes": ["bald"]}, r"attributes.*'bald'.*did you mean 'Bald'"),
        ({"attributes": []}, "attributes"),
        ({"attributes": ["Bald", "Bald"]}, "twice"),
        ({"image_size": 4}, "image_size"),
        ({"workers": -1}, "workers"),
        ({"pin_memory": "yes"}, "pin_memory"),
    ],
)
def test_bad_parameters_name_the_argument(root, params, message):
    with pytest.raises(ValueError, match=message):
        CelebA(**params, data_root=root)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["famo_cnn", "resnet18"])
@pytest.mark.parametrize(("level", "method"), [("param", "mgda"), ("feature", "graddrop")])
def test_trains_at_both_levels(root, model, level, method):
    train = TrainSpec(steps=2, batch_size=8, eval_every=2, level=level, jacobian="loop")
    task = PluginSpec("celeba", {**SMALL, "model": model})
    result = run(RunSpec("t", task, PluginSpec(method), 0, train, data_root=str(root)))
    assert result.status == "ok", result.error
    splits = {row.split for row in result.metrics}
    assert splits == {"val", "test", "train_loss"}
    assert all(math.isfinite(row.value) for row in result.metrics)
    losses = [row.value for row in result.metrics if row.split == "train_loss"]
    assert len(losses) == 3 and all(0 < v < 5 for v in losses)


@pytest.mark.parametrize("suite", ["celeba.yaml", "celeba_famo.yaml"])
def test_paper_suites_load(root, monkeypatch, suite):
    monkeypatch.setenv("GSB_DATA", str(root))
    loaded = load_suite(CONFIGS / suite)
    assert loaded.description and loaded.runs
    assert {r.task.name for r in loaded.runs} == {"celeba"}
    assert all(r.train.batch_size == 256 and r.train.device == "cpu" for r in loaded.runs)


@pytest.mark.slow
def test_loader_workers_give_the_same_batches(root):
    CelebA.prepare(root, workers=0, image_size=8)
    in_process = CelebA(image_size=8, data_root=root)
    with_worker = CelebA(image_size=8, workers=1, data_root=root)
    assert with_worker.cache is not None
    for a, b in zip(batches(in_process, 5, 3), batches(with_worker, 5, 3), strict=True):
        assert torch.equal(a, b)
