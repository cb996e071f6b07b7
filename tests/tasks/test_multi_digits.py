import math

import numpy as np
import pytest
import torch

from benchmark.config import parse_suite
from benchmark.registry import TASKS
from benchmark.trainer import run
from tasks.digits import load_splits
from tasks.multi_digits import MultiDigits, draw_pairs, overlay
from tests.tasks.training import TRAIN_SETTINGS, last_metrics


@pytest.fixture(scope="module")
def task() -> MultiDigits:
    return MultiDigits(channels=2, hidden=8)


def test_registered_with_defaults():
    assert TASKS.get("multi_digits") is MultiDigits
    assert set(MultiDigits.train_defaults) <= TRAIN_SETTINGS
    assert MultiDigits().task_names == ("left", "right")
    assert MultiDigits.eval_splits == ("val", "test")
    assert MultiDigits.selection_metric in {m.name for m in MultiDigits().metrics()}
    assert all(m.higher_is_better for m in MultiDigits().metrics())


def test_pairs_use_every_image_equally_with_another_partner():
    left, right = draw_pairs(5, 3, np.random.default_rng(0))
    assert np.bincount(left).tolist() == [3, 3, 3, 3, 3]
    assert np.all(left != right) and right.min() >= 0 and right.max() < 5
    again, _ = draw_pairs(5, 3, np.random.default_rng(0))
    other, _ = draw_pairs(5, 3, np.random.default_rng(1))
    assert np.array_equal(left, again) and not np.array_equal(left, other)


def test_overlay_by_hand():
    left, right = torch.full((1, 8, 8), 0.5), torch.full((1, 8, 8), 0.25)
    image = overlay(left, right, canvas=10)[0, 0]
    assert image.shape == (10, 10)
    assert image[0, 0] == 0.5 and image[9, 9] == 0.25  # only the left digit / only the right one
    assert image[2, 2] == 0.5 and image[7, 7] == 0.5  # the 6x6 overlap: the maximum
    assert image[0, 9] == 0 and image[9, 0] == 0  # the corners neither digit covers
    assert image.sum() == pytest.approx(0.5 * 64 + 0.25 * (100 - 64 - 4 - 4))


def test_splits_are_pairs_of_their_own_digits(task):
    sizes = {split: len(task.data[split]["inputs"]) for split in ("train", "val", "test")}
    assert sizes == {"train": 3 * 1077, "val": 3 * 360, "test": 3 * 360}
    images, labels = load_splits(0)["val"]
    left, right = draw_pairs(360, 3, np.random.default_rng([0, 1]))  # split seed 0, split "val"
    val = task.data["val"]
    expected = overlay(images.view(-1, 8, 8)[left], images.view(-1, 8, 8)[right], 12)
    assert torch.equal(val["inputs"], expected)
    assert torch.equal(val["targets"], torch.stack([labels[left], labels[right]], dim=1))


def test_data_is_seeded_by_the_split_seed(task):
    same, other = MultiDigits(split_seed=0), MultiDigits(split_seed=1)
    assert torch.equal(same.data["test"]["inputs"], task.data["test"]["inputs"])
    assert not torch.equal(other.data["test"]["inputs"], task.data["test"]["inputs"])


def test_batches_and_untrained_losses(task):
    batches = task.train_batches(32, torch.Generator().manual_seed(0))
    batch = next(batches)
    assert batch.inputs.shape == (32, 1, 12, 12) and batch.targets.shape == (32, 2)
    model = task.build_model()
    assert model.trunk(batch.inputs).shape == (32, 8)
    for head in model.heads:
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    torch.testing.assert_close(task.losses(model(batch.inputs), batch), torch.full((2,), math.log(10)))
    assert (task.steps_per_epoch(128), task.steps_per_epoch(None)) == (26, 1)  # ceil(3231 / 128)


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluate_a_model_that_always_says_zero(task, split):
    model = task.build_model()
    for head in model.heads:
        torch.nn.init.zeros_(head.weight)
        head.bias.data = torch.tensor([1.0] + [0.0] * 9)
    values = task.evaluate(model, split)
    targets = task.data[split]["targets"]
    share = (targets == 0).float().mean(0)
    assert values["acc/left"] == pytest.approx(float(share[0]))
    assert values["acc/right"] == pytest.approx(float(share[1]))
    assert values["accuracy"] == pytest.approx(float(share.mean()))
    ce_zero, ce_other = -math.log(math.e / (math.e + 9)), -math.log(1 / (math.e + 9))
    assert values["ce/left"] == pytest.approx(float(share[0] * ce_zero + (1 - share[0]) * ce_other), rel=1e-5)


@pytest.mark.parametrize("level", ["param", "feature"])
@pytest.mark.parametrize("method", ["pcgrad", "graddrop"])
@pytest.mark.usefixtures("one_torch_thread")
def test_trains_at_both_levels(method, level):
    raw = {
        "train": {"steps": 3, "eval_every": 2, "batch_size": 16, "level": level, "jacobian": "loop"},
        "tasks": [{"name": "multi_digits", "params": {"channels": 2, "hidden": 8}}],
        "methods": [method],
    }
    result = run(parse_suite(raw).runs[0])
    assert result.status == "ok", result.error
    names = {(row.split, row.name) for row in result.metrics if row.step == 3}
    assert {(s, m.name) for s in ("val", "test") for m in MultiDigits().metrics()} <= names
    assert all(math.isfinite(row.value) for row in result.metrics)


@pytest.mark.parametrize(
    "params",
    [
        {"canvas": 8},
        {"canvas": True},
        {"pairs_per_image": 0},
        {"channels": 0},
        {"hidden": 2.5},
        {"split_seed": -1},
    ],
)
def test_bad_parameters_name_the_argument(params):
    (key,) = params
    with pytest.raises(ValueError, match=f"multi_digits: {key}="):
        MultiDigits(**params)


def test_unknown_split(task):
    with pytest.raises(ValueError, match="multi_digits: unknown split 'validation'"):
        task.evaluate(task.build_model(), "validation")


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_default_settings_train_well_beyond_chance():
    values = last_metrics("multi_digits", steps=400)
    assert values["acc/left"] > 0.8 and values["acc/right"] > 0.8  # chance: 0.1
