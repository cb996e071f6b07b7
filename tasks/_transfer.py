"""Batch-separated transfer learning, the setting of the GradDrop paper's transfer experiment.

Chen et al. 2020, "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout",
NeurIPS: source and target examples go through one shared trunk in the same batch; the source loss is
computed on the source rows only and the target loss on the target rows only (``Batch.task_rows`` and
:func:`benchmark.task.owned_mean`), so each loss's gradient at the shared representation is zero on the
other's rows. GradDrop then marginalises its sign signal over the batch (``marginalize_batch``) and
passes the target loss through unchanged (leak 1.0 on it).

:class:`TransferTask` holds what every transfer task shares (mixed batches, the two cross-entropy
losses, the metrics); a subclass supplies the data (:attr:`TransferTask.data`), the model and, for
stored images, the conversion to float inputs (:meth:`TransferTask.as_inputs`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.task import Batch, Metric, MultiTaskModel, Task, owned_mean
from tasks._checks import check_fraction, check_int

TASK_NAMES = ("source", "target")
SOURCE, TARGET = 0, 1
EVAL_CHUNK = 1024
"""Rows per forward pass in :meth:`TransferTask.evaluate`."""


@dataclass(frozen=True)
class Labelled:
    """Examples as stored (``inputs`` ``[N, ...]``, e.g. uint8 images) and their labels ``[N]``."""

    inputs: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class TransferData:
    """The source and target training sets, per evaluation split (``"val"``, ``"test"``) each's
    evaluation set, and the number of classes of each, ``(source, target)``."""

    source_train: Labelled
    target_train: Labelled
    source_eval: Mapping[str, Labelled]
    target_eval: Mapping[str, Labelled]
    num_classes: tuple[int, int]




def rows_per_batch(batch_size: int, source_fraction: float) -> tuple[int, int]:
    """``(source rows, target rows)`` of a batch: ``round(fraction × size)`` source rows, at least one of
    each kind when the fraction is positive (``batch_size`` >= 2), at least one target row always."""
    source = min(max(round(source_fraction * batch_size), int(source_fraction > 0)), batch_size - 1)
    return source, batch_size - source


def separated_rows(num_source: int, num_target: int) -> Tensor:
    """``task_rows`` ``[2, B]``: the first ``num_source`` rows are the source's, the rest the target's."""
    source = torch.arange(num_source + num_target) < num_source
    return torch.stack([source, ~source])


def index_stream(size: int, count: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless batches of ``count`` indices into ``range(size)``: shuffled passes, cut across passes so
    every batch has exactly ``count`` rows and every row appears once per pass."""
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while len(pending) < count:
            pending = torch.cat([pending, torch.randperm(size, generator=generator)])
        yield pending[:count]
        pending = pending[count:]


def separated_losses(outputs: list[Tensor], batch: Batch) -> Tensor:
    """Per loss, the cross-entropy of its head's logits averaged over the rows it owns -> ``[2]``.

    Labels of foreign rows are replaced by 0 before the cross-entropy (they may index the other task's
    classes); :func:`owned_mean` then masks those rows out.
    """
    rows = batch.task_rows
    if rows is None:
        raise ValueError("transfer losses need a batch with task_rows [2, B]")
    per_row = torch.stack(
        [
            F.cross_entropy(logits, torch.where(own, batch.targets, 0), reduction="none")
            for logits, own in zip(outputs, rows, strict=True)
        ],
        dim=1,
    )
    return owned_mean(per_row, rows)


class TransferTask(Task):
    """Two losses, ``source`` and ``target``, on batch-separated rows of one mixed batch.

    Each batch holds ``rows_per_batch(batch_size, source_fraction)`` source and target rows, drawn by
    two independent shuffled streams; an epoch is one pass over the target's training rows. Metric:
    target top-1 accuracy (the selection metric); source accuracy is reported as a diagnostic.
    """

    eval_splits = ("val", "test")
    selection_metric = "target_accuracy"

    def __init__(self, source_fraction: float) -> None:
        super().__init__(TASK_NAMES)
        self.source_fraction = check_fraction(self.name, "source_fraction", source_fraction)

    @property
    def data(self) -> TransferData:
        raise NotImplementedError

    def as_inputs(self, stored: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Stored examples -> the trunk's float inputs; ``generator`` is given for training batches
        (augmentation draws from it). The identity by default."""
        return stored

    def _rows(self, batch_size: int | None) -> tuple[int, int]:
        if batch_size is None:
            raise ValueError(f"{self.name}: needs a batch_size (a mixed batch of source and target rows)")
        return rows_per_batch(check_int(self.name, "batch_size", batch_size, 2), self.source_fraction)

    def steps_per_epoch(self, batch_size: int | None) -> int:
        return math.ceil(len(self.data.target_train) / self._rows(batch_size)[1])

    def train_batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        """Mixed batches without end: source rows first, then target rows, ``task_rows`` marking them."""
        num_source, num_target = self._rows(batch_size)
        source, target = self.data.source_train, self.data.target_train
        rows = separated_rows(num_source, num_target)
        sources = index_stream(len(source), num_source, generator)
        targets = index_stream(len(target), num_target, generator)
        for s, t in zip(sources, targets, strict=True):  # both endless
            stored = torch.cat([source.inputs[s], target.inputs[t]])
            labels = torch.cat([source.labels[s], target.labels[t]])
            yield Batch(self.as_inputs(stored, generator), labels, task_rows=rows)

    def losses(self, outputs: list[Tensor], batch: Batch) -> Tensor:
        return separated_losses(outputs, batch)

    def metrics(self) -> list[Metric]:
        return [Metric("target_accuracy", True, "top-1 accuracy on the target classes")]

    @torch.no_grad()
    def evaluate(self, model: MultiTaskModel, split: str) -> dict[str, float]:
        """``target_accuracy`` and the diagnostic ``source_accuracy`` on ``split``."""
        if split not in self.eval_splits:
            raise ValueError(f"{self.name}: unknown split {split!r}; one of {self.eval_splits}")
        data = self.data
        return {
            "target_accuracy": self._accuracy(model, TARGET, data.target_eval[split]),
            "source_accuracy": self._accuracy(model, SOURCE, data.source_eval[split]),
        }

    def _accuracy(self, model: MultiTaskModel, head: int, examples: Labelled) -> float:
        """Top-1 accuracy of ``head`` on ``examples``, in chunks of :data:`EVAL_CHUNK` rows."""
        device = next(model.parameters()).device
        correct = 0
        for start in range(0, len(examples), EVAL_CHUNK):
            part = slice(start, start + EVAL_CHUNK)
            logits = model.heads[head](model.trunk(self.as_inputs(examples.inputs[part]).to(device)))
            correct += int((logits.argmax(1).cpu() == examples.labels[part]).sum())
        return correct / len(examples)
