"""transfer_digits, and the batch-separated mechanics it shares with transfer (tasks/_transfer.py)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.config import parse_suite
from benchmark.gradients import backward_step
from benchmark.method import Method, StepContext, get_method
from benchmark.registry import METHODS, TASKS
from benchmark.task import Batch
from benchmark.trainer import run
from methods.graddrop import sign_purity
from tasks._transfer import index_stream, rows_per_batch, separated_losses, separated_rows
from tasks.digits import load_splits
from tasks.transfer_digits import TransferDigits, few_labels
from tests.tasks.training import TRAIN_SETTINGS, train_with_defaults


def test_registered_as_a_proxy_with_defaults_and_metrics():
    assert TASKS.get("transfer_digits") is TransferDigits
    assert TransferDigits.description.startswith("Proxy:")
    assert "proxy" in TransferDigits.__doc__.lower()
    assert set(TransferDigits.train_defaults) <= TRAIN_SETTINGS
    task = TransferDigits()
    assert task.task_names == ("source", "target")
    assert [(m.name, m.higher_is_better) for m in task.metrics()] == [("target_accuracy", True)]
    assert task.selection_metric == "target_accuracy" and task.eval_splits == ("val", "test")
    assert not task.needs_data


def test_source_is_every_training_zero_to_four_and_target_has_few_labels():
    task = TransferDigits(labels_per_class=7)
    _, train_labels = load_splits(0)["train"]
    data = task.data
    assert len(data.source_train) == int((train_labels < 5).sum())
    assert torch.equal(
        torch.bincount(data.source_train.labels), torch.bincount(train_labels[train_labels < 5])
    )
    assert torch.bincount(data.target_train.labels).tolist() == [7] * 5  # digits 5..9 renumbered 0..4
    for split in ("val", "test"):
        _, labels = load_splits(0)[split]
        assert torch.equal(
            torch.bincount(data.target_eval[split].labels), torch.bincount(labels[labels >= 5] - 5)
        )
        assert torch.equal(torch.bincount(data.source_eval[split].labels), torch.bincount(labels[labels < 5]))
    assert data.num_classes == (5, 5)


def test_few_labels_is_seeded():
    task = TransferDigits()
    pool = task.data.target_eval["val"]
    first, again, other = few_labels(pool, 3, 0), few_labels(pool, 3, 0), few_labels(pool, 3, 1)
    assert torch.equal(first.inputs, again.inputs)
    assert not torch.equal(first.inputs, other.inputs)
    assert torch.bincount(first.labels).tolist() == [3] * 5


@pytest.mark.parametrize(
    ("batch_size", "fraction", "rows"),
    [(64, 0.5, (32, 32)), (10, 0.25, (2, 8)), (4, 0.01, (1, 3)), (4, 0.0, (0, 4)), (2, 0.9, (1, 1))],
)
def test_rows_per_batch(batch_size, fraction, rows):
    assert rows_per_batch(batch_size, fraction) == rows


def test_index_stream_visits_every_row_once_per_pass_across_batches():
    batches = index_stream(5, 3, torch.Generator().manual_seed(0))
    drawn = torch.cat([next(batches) for _ in range(10)])  # 30 indices = 6 passes
    assert all(len(next(batches)) == 3 for _ in range(3))
    for p in range(6):
        assert sorted(drawn[5 * p : 5 * p + 5].tolist()) == [0, 1, 2, 3, 4]


def test_batches_are_separated_and_repeat_with_the_seed():
    task = TransferDigits(source_fraction=0.25)
    batch = next(task.train_batches(16, torch.Generator().manual_seed(0)))
    assert batch.task_rows.tolist() == [[True] * 4 + [False] * 12, [False] * 4 + [True] * 12]
    source, target = task.data.source_train, task.data.target_train

    def rows_of(stored, inputs):  # each batch row is a row of ``stored``
        return all(bool((stored == row).all(1).any()) for row in inputs)

    assert rows_of(source.inputs, batch.inputs[:4]) and rows_of(target.inputs, batch.inputs[4:])
    again = next(task.train_batches(16, torch.Generator().manual_seed(0)))
    other = next(task.train_batches(16, torch.Generator().manual_seed(1)))
    assert torch.equal(batch.inputs, again.inputs) and not torch.equal(batch.inputs, other.inputs)
    assert task.steps_per_epoch(16) == math.ceil(50 / 12)


def test_separated_losses_by_hand():
    rows = separated_rows(1, 2)  # row 0: source, rows 1-2: target
    source_logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [5.0, -5.0]])
    target_logits = torch.tensor([[9.0, 9.0, 9.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    batch = Batch(torch.zeros(3, 1), torch.tensor([1, 0, 2]), task_rows=rows)
    losses = separated_losses([source_logits, target_logits], batch)
    source = -math.log(math.exp(0) / (math.exp(2) + 1))  # row 0, label 1
    target = (-math.log(math.e / (math.e + 2)) - math.log(math.exp(3) / (math.exp(3) + 2))) / 2
    torch.testing.assert_close(losses, torch.tensor([source, target]))
    with pytest.raises(ValueError, match="task_rows"):
        separated_losses([source_logits, target_logits], Batch(torch.zeros(3, 1), torch.tensor([1, 0, 2])))


class Spy(Method):
    """Records the gradients and context it is given; returns their sum."""

    def combine(self, grads, ctx=None):
        self.seen = (grads.clone(), ctx)
        return grads.sum(0)


def test_feature_level_gradients_are_zero_on_the_other_tasks_rows():
    task = TransferDigits(hidden=8, source_fraction=0.5)
    torch.manual_seed(0)
    model = task.build_model()
    batch = next(task.train_batches(8, torch.Generator().manual_seed(0)))
    spy = Spy(2)
    backward_step(model, task, batch, spy, StepContext(level="feature"))
    grads, ctx = spy.seen
    assert grads.shape == (2, 8, 8)
    assert torch.equal(ctx.task_rows, batch.task_rows)
    assert torch.all(grads[0, 4:] == 0) and torch.all(grads[1, :4] == 0)
    assert torch.all(grads[0, :4].abs().sum(1) > 0) and torch.all(grads[1, 4:].abs().sum(1) > 0)


def test_marginalised_graddrop_on_separated_gradients_by_hand():
    """Rows 0-1 are the source's, rows 2-3 the target's; leak 0 on the source, 1 on the target."""
    source = torch.tensor([[1.0, -2.0], [3.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 0.0], [-1.0, 4.0], [-1.0, -1.0]])
    activation = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    grads = torch.stack([source, target])
    # Signal summed over the batch after multiplying by sign(A): source (4, -1), target (-2, -5).
    signal = torch.tensor([[[4.0, -1.0]], [[-2.0, -5.0]]])
    torch.testing.assert_close((grads * activation.sign()).sum(1, keepdim=True), signal)
    purity = sign_purity(signal)  # ½(1 + Σ/Σ||): column 0: ½(1 + 2/6) = 2/3; column 1: ½(1 − 6/6) = 0
    torch.testing.assert_close(purity, torch.tensor([[2 / 3, 0.0]]), atol=1e-6, rtol=0)
    method = get_method("graddrop", num_tasks=2, marginalize_batch=True, leak=[0.0, 1.0])
    branches = set()
    for seed in range(12):
        ctx = StepContext(
            level="feature", activation=activation, generator=torch.Generator().manual_seed(seed)
        )
        update = method.combine(grads, ctx)
        draw = torch.rand((1, 2), generator=torch.Generator().manual_seed(seed))
        keep_positive = bool(draw[0, 0] < 2 / 3)  # column 0 keeps the positive sign (the source's)
        branches.add(keep_positive)
        # Column 1: both signals negative, nothing dropped. Column 0: the source is dropped when the
        # negative sign is kept; the target (leak 1) is never dropped.
        expected_col0 = source[:, 0] + target[:, 0] if keep_positive else target[:, 0]
        torch.testing.assert_close(update, torch.stack([expected_col0, source[:, 1] + target[:, 1]], 1))
    assert branches == {True, False}


@pytest.mark.parametrize("level", ["param", "feature"])
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_on_batch_separated_losses(name: str, level: str) -> None:
    raw = {
        "train": {"steps": 3, "eval_every": 3, "level": level, "jacobian": "loop", "batch_size": 16},
        "tasks": [{"name": "transfer_digits", "params": {"hidden": 8}}],
        "methods": [name],
    }
    result = run(parse_suite(raw).runs[0])
    assert result.status == "ok", result.error
    assert result.metrics and all(math.isfinite(row.value) for row in result.metrics)


def test_graddrop_as_the_paper_sets_it_trains_at_the_feature_level():
    raw = {
        "train": {"steps": 3, "eval_every": 3, "batch_size": 16},
        "tasks": [{"name": "transfer_digits", "params": {"hidden": 8}}],
        "methods": [{"name": "graddrop", "params": {"marginalize_batch": True, "leak": [0.0, 1.0]}}],
    }
    result = run(parse_suite(raw).runs[0])
    assert result.status == "ok", result.error
    names = {(r.split, r.name) for r in result.metrics}
    assert {("val", "target_accuracy"), ("test", "source_accuracy"), ("train_loss", "target")} <= names


def test_evaluate_is_in_range_and_counts_correct_rows():
    task = TransferDigits(hidden=8)
    torch.manual_seed(0)
    model = task.build_model()
    values = task.evaluate(model, "test")
    assert set(values) == {"target_accuracy", "source_accuracy"}
    examples = task.data.target_eval["test"]
    predicted = model.heads[1](model.trunk(examples.inputs)).argmax(1)
    assert values["target_accuracy"] == pytest.approx(float((predicted == examples.labels).float().mean()))
    with pytest.raises(ValueError, match="split"):
        task.evaluate(model, "train")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"labels_per_class": 0}, "labels_per_class"),
        ({"labels_per_class": 1000}, "labels_per_class"),
        ({"source_fraction": 1.0}, "source_fraction"),
        ({"source_fraction": -0.1}, "source_fraction"),
        ({"source_fraction": True}, "source_fraction"),
        ({"hidden": 0}, "hidden"),
        ({"split_seed": 1.5}, "split_seed"),
    ],
)
def test_bad_parameters_name_the_argument(params, message):
    with pytest.raises(ValueError, match=message):
        TransferDigits(**params)


def test_batch_size_must_hold_both_kinds_of_rows():
    with pytest.raises(ValueError, match="batch_size"):
        next(TransferDigits().train_batches(1, torch.Generator()))
    with pytest.raises(ValueError, match="batch_size"):
        TransferDigits().steps_per_epoch(None)


@pytest.mark.slow
def test_default_training_beats_chance_on_the_target():
    task = TransferDigits()
    values = task.evaluate(train_with_defaults(task), "val")
    assert values["target_accuracy"] > 0.6 and values["source_accuracy"] > 0.9
