import math
import re

import numpy as np
import pytest
import torch

import tasks.digit_boxes
from benchmark.config import parse_suite
from benchmark.registry import TASKS
from benchmark.trainer import run
from tasks.digit_boxes import DigitBoxes, box_iou, box_targets, draw_boxes, paste
from tasks.digits import load_splits
from tests.tasks.training import TRAIN_SETTINGS, last_metrics


@pytest.fixture(scope="module")
def task() -> DigitBoxes:
    return DigitBoxes(channels=2, hidden=8)


def constant_heads(model: torch.nn.Module, label: int, centre: float, size: float) -> None:
    """Heads that always predict class ``label`` and the square box (centre, centre, size, size)."""
    for head, bias in zip(model.heads, [torch.eye(10)[label], [centre] * 2, [size] * 2], strict=True):
        torch.nn.init.zeros_(head.weight)
        head.bias.data = torch.as_tensor(bias, dtype=torch.float32)


def test_registered_and_labelled_a_proxy():
    assert TASKS.get("detection_proxy") is DigitBoxes
    assert DigitBoxes.description.startswith("Proxy:")
    assert "Waymo" in tasks.digit_boxes.__doc__ and "not comparable" in tasks.digit_boxes.__doc__
    assert set(DigitBoxes.train_defaults) <= TRAIN_SETTINGS
    assert DigitBoxes().task_names == ("class", "centre", "size")
    assert {m.name: m.higher_is_better for m in DigitBoxes().metrics()} == {"accuracy": True, "iou": True}


def test_iou_by_hand():
    def iou(a, b):
        a, b = torch.tensor([a]), torch.tensor([b])
        return float(box_iou(a[:, :2], a[:, 2:], b[:, :2], b[:, 2:])[0])

    box = [0.5, 0.5, 0.2, 0.2]
    assert iou(box, box) == pytest.approx(1.0)
    assert iou(box, [0.6, 0.5, 0.2, 0.2]) == pytest.approx(0.02 / 0.06)  # half overlap: 1/3
    assert iou(box, [0.5, 0.5, 0.4, 0.4]) == pytest.approx(0.04 / 0.16)  # nested
    assert iou([0.3, 0.3, 0.2, 0.4], [0.3, 0.3, 0.4, 0.2]) == pytest.approx(0.04 / 0.12)  # a cross
    assert iou([0.5, 0.5, 0.25, 0.25], [0.75, 0.5, 0.25, 0.25]) == 0.0  # edges touch
    assert iou(box, [0.5, 0.5, -0.2, 0.2]) == 0.0  # a negative size is an empty box
    assert iou([0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]) == 0.0
    assert iou([0.6, 0.5, 0.2, 0.2], box) == iou(box, [0.6, 0.5, 0.2, 0.2])


def test_boxes_fit_with_sides_in_the_scale_range():
    boxes = draw_boxes(2000, 32, (0.75, 2.0), np.random.default_rng(0))
    x0, y0, width, height = boxes.T
    assert width.min() == height.min() == 6 and width.max() == height.max() == 16  # round(8 * scale)
    assert x0.min() == 0 and y0.min() == 0 and (x0 + width).max() == 32 and (y0 + height).max() == 32
    assert not np.array_equal(width, height)  # one factor per axis
    assert np.array_equal(boxes, draw_boxes(2000, 32, (0.75, 2.0), np.random.default_rng(0)))
    assert np.all(draw_boxes(50, 12, (1.0, 1.0), np.random.default_rng(1))[:, 2:] == 8)


def test_paste_by_hand():
    digits = torch.stack([torch.arange(64.0).view(8, 8) / 64, torch.full((8, 8), 0.7)])
    boxes = np.array([[3, 5, 8, 8], [10, 2, 16, 12]])
    canvases = paste(digits, boxes, 32)
    assert canvases.shape == (2, 1, 32, 32)
    assert torch.equal(canvases[0, 0, 5:13, 3:11], digits[0])  # scale 1: the digit itself
    assert canvases[0].sum() == pytest.approx(float(digits[0].sum()))  # nothing outside its box
    assert torch.allclose(canvases[1, 0, 2:14, 10:26], torch.tensor(0.7))  # bilinear keeps a constant
    assert canvases[1].sum() == pytest.approx(0.7 * 16 * 12)


def test_box_targets_by_hand():
    centre, size = box_targets(np.array([[4, 8, 16, 8]]), 32)
    assert centre.tolist() == [[0.375, 0.375]] and size.tolist() == [[0.5, 0.25]]


def test_splits_carry_named_targets_of_their_own_digits(task):
    assert {s: len(task.data[s]["inputs"]) for s in ("train", "val", "test")} == {
        "train": 2 * 1077,
        "val": 2 * 360,
        "test": 2 * 360,
    }
    _, labels = load_splits(0)["val"]
    val = task.data["val"]
    assert torch.equal(val["labels"], labels.repeat(2))
    corner = ((val["centre"] - val["size"] / 2) * 32).round().long()
    side = (val["size"] * 32).round().long()
    for image, (x0, y0), (w, h) in zip(val["inputs"], corner.tolist(), side.tolist(), strict=True):
        assert image[0, y0 : y0 + h, x0 : x0 + w].sum() == pytest.approx(float(image.sum()))
    assert not torch.equal(DigitBoxes(split_seed=1).data["val"]["centre"], val["centre"])


def test_batches_and_untrained_losses(task):
    batch = next(task.train_batches(32, torch.Generator().manual_seed(0)))
    assert batch.inputs.shape == (32, 1, 32, 32) and batch.targets is None
    assert batch["labels"].shape == (32,) and batch["centre"].shape == batch["size"].shape == (32, 2)
    model = task.build_model()
    assert model.trunk(batch.inputs).shape == (32, 8)
    constant_heads(model, 0, 0.0, 0.0)
    with torch.no_grad():
        model.heads[0].bias.zero_()
    losses = task.losses(model(batch.inputs), batch)
    # every target is at least 6 pixels from 0, in the linear part of smooth L1: |d| - beta / 2
    expected = [math.log(10), float(batch["centre"].mean()) - 1 / 64, float(batch["size"].mean()) - 1 / 64]
    torch.testing.assert_close(losses, torch.tensor(expected))
    assert (task.steps_per_epoch(128), task.steps_per_epoch(None)) == (17, 1)  # ceil(2154 / 128)


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluate_a_model_that_boxes_the_whole_canvas(task, split):
    model = task.build_model()
    constant_heads(model, 3, 0.5, 1.0)
    values = task.evaluate(model, split)
    data = task.data[split]
    assert values["accuracy"] == pytest.approx(float((data["labels"] == 3).float().mean()))
    assert values["iou"] == pytest.approx(float(data["size"].prod(-1).mean()))  # box area / canvas area
    assert values["iou50"] == 0.0  # the largest box covers a quarter of the canvas
    assert set(values) == {"accuracy", "iou", "iou50", "loss/class", "loss/centre", "loss/size"}


@pytest.mark.parametrize("level", ["param", "feature"])
@pytest.mark.parametrize("method", ["pcgrad", "graddrop"])
@pytest.mark.usefixtures("one_torch_thread")
def test_trains_at_both_levels(method, level):
    raw = {
        "train": {"steps": 3, "eval_every": 2, "batch_size": 16, "level": level, "jacobian": "loop"},
        "tasks": [{"name": "detection_proxy", "params": {"channels": 2, "hidden": 8}}],
        "methods": [method],
    }
    result = run(parse_suite(raw).runs[0])
    assert result.status == "ok", result.error
    names = {(row.split, row.name) for row in result.metrics if row.step == 3}
    assert {(s, m) for s in ("val", "test") for m in ("accuracy", "iou")} <= names
    assert all(math.isfinite(row.value) for row in result.metrics)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"min_scale": 0}, "min_scale=0"),
        ({"max_scale": math.nan}, "max_scale=nan"),
        ({"max_scale": True}, "max_scale=True"),
        ({"min_scale": 1.5, "max_scale": 1.0}, "min_scale=1.5 must be at most max_scale=1.0"),
        ({"canvas": 15}, "canvas=15"),  # the largest digit is 16 pixels wide
        ({"copies": 0}, "copies=0"),
        ({"channels": 1.5}, "channels=1.5"),
        ({"split_seed": -1}, "split_seed=-1"),
    ],
)
def test_bad_parameters_name_the_argument(params, message):
    with pytest.raises(ValueError, match=f"detection_proxy: {re.escape(message)}"):
        DigitBoxes(**params)


def test_unknown_split(task):
    with pytest.raises(ValueError, match="detection_proxy: unknown split 'train2'"):
        task.evaluate(task.build_model(), "train2")


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_default_settings_learn_both_class_and_box():
    values = last_metrics("detection_proxy", steps=400)
    assert values["accuracy"] > 0.3 and values["iou"] > 0.4  # chance 0.1; whole-canvas box ~0.11
