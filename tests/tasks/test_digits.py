import numpy as np
import pytest
import torch

from benchmark.registry import TASKS
from tasks.digits import ATTRIBUTES, Digits, attribute_targets, load_splits, scores, split_indices
from tests.tasks.training import TRAIN_SETTINGS, train_with_defaults


def column(task: Digits, name: str) -> int:
    return task.task_names.index(name)


def test_registered_with_defaults():
    assert TASKS.get("digits") is Digits
    assert set(Digits.train_defaults) <= TRAIN_SETTINGS
    assert Digits.train_defaults["batch_size"] == 128
    assert Digits.eval_splits == ("val", "test") and Digits.selection_metric == "f1"
    assert Digits().num_tasks == len(ATTRIBUTES) == 17


def test_split_sizes_disjoint_and_complete():
    rows = split_indices(0)
    assert [len(rows[s]) for s in ("train", "val", "test")] == [1077, 360, 360]
    everything = np.concatenate(list(rows.values()))
    assert len(np.unique(everything)) == len(everything) == 1797
    images, labels = load_splits(0)["val"]
    assert images.shape == (360, 64) and labels.shape == (360,)
    assert images.min() >= 0 and images.max() <= 1


def test_split_is_stratified_deterministic_and_seeded():
    _, labels = load_splits(0)["test"]
    assert torch.bincount(labels, minlength=10).min() >= 34  # 20 % of the 174..183 images per digit
    split_indices.cache_clear()
    again = split_indices(0)
    assert all(np.array_equal(again[s], split_indices(0)[s]) for s in again)
    assert not np.array_equal(split_indices(1)["test"], again["test"])


def test_derived_attributes_of_each_digit():
    names = ["even", "ge5", "prime", "loop", "straight", "square", "mult3", "digit3"]
    table = attribute_targets(torch.arange(10), names).T.int().tolist()
    assert table == [
        [1, 0, 1, 0, 1, 0, 1, 0, 1, 0],  # even
        [0, 0, 0, 0, 0, 1, 1, 1, 1, 1],  # >= 5
        [0, 0, 1, 1, 0, 1, 0, 1, 0, 0],  # prime
        [1, 0, 0, 0, 0, 0, 1, 0, 1, 1],  # closed loop
        [0, 1, 0, 0, 1, 0, 0, 1, 0, 0],  # straight strokes only
        [1, 1, 0, 0, 1, 0, 0, 0, 0, 1],  # perfect square
        [1, 0, 0, 1, 0, 0, 1, 0, 0, 1],  # multiple of 3
        [0, 0, 0, 1, 0, 0, 0, 0, 0, 0],  # one-vs-rest
    ]


def test_task_targets_follow_the_labels():
    task = Digits()
    _, labels = load_splits(0)["train"]
    _, targets = task.data["train"]
    assert targets.shape == (1077, 17)
    assert torch.equal(targets[:, column(task, "even")].bool(), labels % 2 == 0)
    assert torch.equal(targets[:, column(task, "digit7")].bool(), labels == 7)
    assert torch.all(targets[:, :10].sum(1) == 1)


def test_model_outputs_and_losses():
    task = Digits(hidden=16)
    torch.manual_seed(0)
    model = task.build_model()
    batch = next(task.train_batches(32, torch.Generator().manual_seed(0)))
    assert batch.inputs.shape == (32, 64) and batch.targets.shape == (32, 17)
    z = model.trunk(batch.inputs)
    assert z.shape == (32, 16)
    outputs = model.forward_heads(z)
    assert len(outputs) == 17 and all(o.shape == (32,) for o in outputs)
    losses = task.losses(outputs, batch)
    assert losses.shape == (17,) and torch.all(torch.isfinite(losses)) and torch.all(losses > 0)


def test_train_batches_cover_each_epoch_once_and_repeat_with_the_seed():
    task = Digits()
    images, _ = task.data["train"]

    def first_epoch(seed: int) -> torch.Tensor:
        batches = task.train_batches(128, torch.Generator().manual_seed(seed))
        return torch.cat([next(batches).inputs for _ in range(task.steps_per_epoch(128))])

    epoch = first_epoch(0)
    assert epoch.shape == images.shape
    assert torch.equal(epoch.sum(0), images.sum(0))
    assert torch.equal(epoch, first_epoch(0)) and not torch.equal(epoch, first_epoch(1))
    whole = next(task.train_batches(None, torch.Generator()))
    assert len(whole.inputs) == 1077
    assert (task.steps_per_epoch(128), task.steps_per_epoch(None)) == (9, 1)  # ceil(1077 / 128) = 9


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluate_returns_every_metric_in_range(split):
    task = Digits(attributes=["even", "digit0"], hidden=8)
    values = task.evaluate(task.build_model(), split)
    assert {m.name for m in task.metrics()} <= set(values)
    assert set(values) == {"accuracy", "f1", "bce", "acc/even", "acc/digit0"}
    assert all(0 <= values[k] <= 1 for k in ("accuracy", "f1", "acc/even", "acc/digit0"))
    assert values["bce"] > 0
    assert values["accuracy"] == pytest.approx((values["acc/even"] + values["acc/digit0"]) / 2)


def test_scores_by_hand():
    logits = torch.tensor([[1.0, -1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    accuracy, f1, bce = scores(logits, targets)
    assert accuracy.tolist() == [0.5, 1.0]
    assert f1.tolist() == pytest.approx([0.5, 0.0])  # tp 1, fp 1, fn 1 -> 2 / 4; nothing to find -> 0
    assert bce.shape == (2,)


def test_attribute_subset():
    task = Digits(attributes=["prime", "loop"])
    assert task.task_names == ("prime", "loop")
    assert task.data["val"][1].shape == (360, 2)
    assert len(task.build_model().heads) == 2


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"attributes": ["evn"]}, r"attributes.*'evn'.*did you mean 'even'"),
        ({"attributes": []}, "attributes"),
        ({"attributes": "even"}, "attributes"),
        ({"attributes": ["even", "even"]}, "attributes"),
        ({"hidden": 0}, "hidden"),
        ({"hidden": 2.5}, "hidden"),
        ({"split_seed": -1}, "split_seed"),
    ],
)
def test_bad_parameters_name_the_argument(params, message):
    with pytest.raises(ValueError, match=message):
        Digits(**params)


def test_unknown_split():
    task = Digits(attributes=["even"], hidden=4)
    with pytest.raises(ValueError, match="split"):
        task.evaluate(task.build_model(), "validation")


@pytest.mark.slow
def test_default_training_beats_chance():
    task = Digits()
    assert task.evaluate(train_with_defaults(task), "val")["f1"] > 0.8
