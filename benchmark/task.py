"""The task interface: a model (shared trunk + one head per task), data, per-task losses and metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.amp import AMP_DTYPES, AutocastTrunk, GradScale
from benchmark.registry import TASKS, hyperparameters
from benchmark.specs import Metric, TaskInfo


@dataclass(frozen=True)
class Landscape:
    """A task whose shared parameters are a point in the plane, drawn with its trajectories.

    Attributes:
        bounds: ``(x1_min, x1_max, x2_min, x2_max)`` of the plot.
        losses: maps points ``[N, 2]`` to the task losses ``[N, T]``.
        pareto_set: points ``[M, 2]`` of the (numerically computed) Pareto set, in parameter space.
        trajectory: the names of the two values :meth:`Task.evaluate` logs as the current point.
    """

    bounds: tuple[float, float, float, float]
    losses: Callable[[Tensor], Tensor]
    pareto_set: Tensor
    trajectory: tuple[str, str] = ("x1", "x2")


class Batch:
    """One training batch: named tensors, and which rows each loss owns.

    ``inputs`` feeds the trunk (``None`` for tasks without data, such as the toys); ``targets`` and any
    other keyword (several targets, masks, boxes) are read by :meth:`Task.losses` as ``batch["name"]``
    or ``batch.targets``. ``task_rows`` ``[T, B]`` bool marks the rows each loss is computed on, for
    batch-separated losses (transfer learning: source rows for the source loss, target rows for the
    target loss); ``None`` means every loss reads every row. The engine passes it on as
    ``StepContext.task_rows``.
    """

    def __init__(
        self,
        inputs: Tensor | None = None,
        targets: Tensor | None = None,
        *,
        task_rows: Tensor | None = None,
        **tensors: Tensor,
    ) -> None:
        named = {"inputs": inputs, "targets": targets, **tensors}
        self.tensors: dict[str, Tensor] = {k: v for k, v in named.items() if v is not None}
        if task_rows is not None and task_rows.dtype != torch.bool:
            raise ValueError(f"task_rows must be a bool tensor [T, B], got dtype {task_rows.dtype}")
        self.task_rows = task_rows

    @property
    def inputs(self) -> Tensor | None:
        return self.tensors.get("inputs")

    @property
    def targets(self) -> Tensor | None:
        return self.tensors.get("targets")

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.tensors:
            raise KeyError(f"batch has no tensor {name!r}; it has {', '.join(self.tensors) or 'none'}")
        return self.tensors[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor (and ``task_rows``) on ``device``."""
        moved = {k: v.to(device, non_blocking=True) for k, v in self.tensors.items()}
        rows = None if self.task_rows is None else self.task_rows.to(device, non_blocking=True)
        return Batch(task_rows=rows, **moved)


def owned_mean(values: Tensor, task_rows: Tensor | None) -> Tensor:
    """Per-task means of per-row ``values`` ``[B, T]`` over each task's own rows -> ``[T]``.

    With ``task_rows`` ``None`` this is ``values.mean(0)``. A task's loss then has a zero gradient on
    every row it does not own, whatever the value there (NaN included: foreign rows are masked out,
    not multiplied by zero). A task that owns no row of the batch gets a zero loss.
    """
    if task_rows is None:
        return values.mean(0)
    rows = task_rows.T.to(values.device)  # [B, T]
    total = torch.where(rows, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum(0)
    return total / rows.sum(0).clamp(min=1).to(values.dtype)


class LinearHead(nn.Linear):
    """A linear head ``Linear(in_features, out_features)``; with ``squeeze`` (``out_features == 1``) the
    last dimension is dropped: one logit per row. A task whose heads are all ``LinearHead`` s of one
    shape declares ``linear_heads``: they can then be computed as one :class:`StackedLinearHeads`."""

    def __init__(self, in_features: int, out_features: int, squeeze: bool = False) -> None:
        if squeeze and out_features != 1:
            raise ValueError(f"LinearHead: squeeze needs out_features == 1, got {out_features}")
        super().__init__(in_features, out_features)
        self.squeeze = squeeze

    def forward(self, z: Tensor) -> Tensor:
        out = super().forward(z)
        return out.squeeze(-1) if self.squeeze else out


class StackedLinearHeads(nn.Module):
    """T linear heads ``D -> k`` as one module: weight ``[T, k, D]``, bias ``[T, k]``.

    On z the heads are one ``F.linear`` with the ``[T k, D]`` weight. The outputs equal the separate
    heads' to float tolerance, not bit for bit (other summation orders), hence
    ``train: {batched_heads: true}``. The engine never needs head i on its own alias of z: their
    gradients at z follow from their factors (:mod:`benchmark.factored`).
    """

    def __init__(self, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("heads cannot be stacked: there are none")
        first = heads[0]
        for i, head in enumerate(heads):
            if not isinstance(head, LinearHead) or (head.weight.shape, head.squeeze) != (
                first.weight.shape, first.squeeze
            ):
                raise ValueError(
                    f"heads cannot be stacked: head {i} is {head!r}, expected a LinearHead like {first!r}"
                )
        self.squeeze = first.squeeze
        self.weight = nn.Parameter(torch.stack([h.weight.detach() for h in heads]))
        self.bias = nn.Parameter(torch.stack([h.bias.detach() for h in heads]))

    def __len__(self) -> int:
        return self.weight.shape[0]

    def forward(self, z: Tensor) -> list[Tensor]:
        """Every head on ``z`` ``[..., D]`` -> T outputs ``[..., k]`` (``[...]`` with ``squeeze``)."""
        out = F.linear(z, self.weight.flatten(0, 1), self.bias.flatten())
        out = out.unflatten(-1, self.bias.shape).movedim(-2, 0)
        return list((out.squeeze(-1) if self.squeeze else out).unbind(0))


class MultiTaskModel(nn.Module):
    """``trunk(inputs) -> z``; ``heads[i](z) -> output_i``. Only the trunk's parameters are shared.

    Loss i must depend on output i alone: the engine then gets every task's gradient w.r.t. z from
    one backward, each head reading its own alias of z (:meth:`forward_each`). ``batched``: the heads
    (``LinearHead`` s of one shape) are computed as one :class:`StackedLinearHeads`, initialised with
    their weights.
    """

    def __init__(self, trunk: nn.Module, heads: Sequence[nn.Module], batched: bool = False) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads: nn.Module = StackedLinearHeads(heads) if batched else nn.ModuleList(heads)

    def forward(self, inputs: Tensor | None) -> list[Tensor]:
        return self.forward_heads(self.trunk(inputs))

    def forward_heads(self, z: Tensor) -> list[Tensor]:
        if self.batched:
            return self.heads(z)
        return [head(z) for head in self.heads]

    def forward_each(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        """Head i applied to ``inputs[i]`` (separate heads; stacked ones are linear in z, and the engine
        takes their gradients at z from their factors instead, :mod:`benchmark.factored`)."""
        if self.batched:
            raise ValueError("forward_each needs separate heads; these are stacked")
        return [head(z) for head, z in zip(self.heads, inputs, strict=True)]

    @property
    def batched(self) -> bool:
        """Whether the heads are one :class:`StackedLinearHeads`."""
        return isinstance(self.heads, StackedLinearHeads)

    def linear_head_weights(self) -> Tensor | None:
        """The heads' weights ``[T, k, D]`` (detached) when every head is linear in z (``LinearHead`` s
        of one shape, separate or stacked), else ``None``: ``∇_z Lᵢ = ∂Lᵢ/∂outᵢ Wᵢ``
        (:mod:`benchmark.factored`)."""
        if self.batched:
            return self.heads.weight.detach()
        heads = list(self.heads)
        if not all(isinstance(h, LinearHead) for h in heads):
            return None
        if len({(h.weight.shape, h.squeeze) for h in heads}) > 1:
            return None
        return torch.stack([h.weight.detach() for h in heads])

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.trunk.parameters() if p.requires_grad]

    def batch_heads(self) -> None:
        """Replace the separate heads by one :class:`StackedLinearHeads` with the same parameters."""
        if not self.batched:
            self.heads = StackedLinearHeads(list(self.heads))

    def autocast(self, amp: str) -> GradScale | None:
        """Run the trunk under ``torch.autocast`` with ``amp`` (``"bf16"`` or ``"fp16"``,
        :mod:`benchmark.amp`); returns the gradient scale the trainer must update (fp16), else ``None``.
        Call after moving the model to its device."""
        if amp not in AMP_DTYPES:
            raise ValueError(f"amp={amp!r}: expected one of {', '.join(AMP_DTYPES)}")
        device_type = next(self.parameters()).device.type
        scale = GradScale() if amp == "fp16" else None
        self.trunk = AutocastTrunk(self.trunk, device_type, AMP_DTYPES[amp], scale)
        return scale


class Task:
    """Base class of every task. Subclasses register with ``@TASKS.register("key")``.

    Class attributes:
        name: the registry key (set by the decorator).
        description: one line for ``run_all.py list``.
        train_defaults: training settings this task is meant to run with (keys of ``TrainSpec``);
            a suite may override each. A task may set it per instance in ``__init__``.
        eval_splits: the splits :meth:`evaluate` is called on. With a ``"val"`` split, the report
            selects the evaluation step on validation (``selection_metric``) and reads test there.
        selection_metric: the validation metric used for model selection (its direction is taken
            from :meth:`metrics`); ``None`` averages all higher-is-better metrics.
        deterministic: the run's seed cannot change a result (no data order, no random initialisation,
            as in the toys). A run of a deterministic task with a deterministic method is trained once
            whatever the suite's seeds.
        needs_data: the task reads a dataset from disk. Its constructor then takes ``data_root`` (the
            folder given by ``--data-root``, a suite's ``data_root:`` or ``$GSB_DATA``; see
            :mod:`benchmark.data`), which is not a hyperparameter: it does not enter a run's identity.
        linear_heads: every model's heads are :class:`LinearHead` s of one shape (linear in z), so that
            ``train: {batched_heads: true}`` may compute them as one module (:class:`StackedLinearHeads`)
            and ``train: {factored_heads: true}`` may keep their gradients at z as factors.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    train_defaults: Mapping[str, Any] = MappingProxyType({})
    eval_splits: ClassVar[tuple[str, ...]] = ("val", "test")
    selection_metric: ClassVar[str | None] = None
    deterministic: ClassVar[bool] = False
    needs_data: ClassVar[bool] = False
    linear_heads: ClassVar[bool] = False

    def __init__(self, task_names: Sequence[str]) -> None:
        if not task_names:
            raise ValueError(f"{type(self).__name__}: a task needs at least one loss")
        self.task_names = tuple(task_names)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def build_model(self) -> MultiTaskModel:
        """A freshly initialised model; the trainer seeds torch's RNG before calling it."""
        raise NotImplementedError

    def train_batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        """An endless stream of training batches drawn with ``generator``."""
        raise NotImplementedError

    def steps_per_epoch(self, batch_size: int | None) -> int:
        """Training steps per pass over the training data (``ctx.epoch`` counts these); 1 for tasks
        without a finite training set, such as the toys."""
        return 1

    def losses(self, outputs: list[Tensor], batch: Batch) -> Tensor:
        """The T task losses ``[T]`` for the heads' ``outputs`` on ``batch``; loss i reads
        ``outputs[i]`` only."""
        raise NotImplementedError

    def metrics(self) -> list[Metric]:
        """The metrics a report tables, with their directions."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: MultiTaskModel, split: str) -> dict[str, float]:
        """Every metric of :meth:`metrics` on ``split``; extra diagnostic values may be added.

        Runs under ``torch.no_grad()``: code that needs autograd wraps itself in ``torch.enable_grad()``.
        Data goes to the model's device (``next(model.parameters()).device``).
        """
        raise NotImplementedError

    def check_region(self, values: Mapping[str, float]) -> str | None:
        """Why the values of one evaluation show that training left the task's sensible region (the
        run is then stored ``diverged`` with this reason), or ``None``. Non-finite values are always
        divergence; a task adds its own bounds (the toy's point far outside its plotted square)."""
        return None

    def landscape(self) -> Landscape | None:
        """For 2-D toy problems: what a report needs to draw trajectories over the loss contours."""
        return None

    def info(self, method_deterministic: bool) -> TaskInfo:
        """What a report needs of this task, stored with each run (so reports never build tasks)."""
        return TaskInfo(
            tuple(self.metrics()), tuple(self.eval_splits), self.selection_metric,
            self.deterministic and method_deterministic, self.landscape() is not None, self.task_names,
        )

    @classmethod
    def data_status(cls, data_root: Path | None) -> str:
        """For ``run_all.py list tasks``: whether this task's data is present under ``data_root`` and
        where it looks; tasks without data files say so."""
        return "no data files needed"

    @classmethod
    def prepare(cls, data_root: Path, workers: int) -> None:
        """``run_all.py prepare NAME``: convert the dataset once into the cache training reads."""
        raise ValueError(f"task {cls.name!r} has nothing to prepare")

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Hyperparameters and their defaults, from the constructor signature (``data_root`` is not
        one)."""
        return hyperparameters(cls, skip=("data_root",))


def get_task(name: str, data_root: str | Path | None = None, **params: Any) -> Task:
    """The task ``name`` with its hyperparameters; ``data_root`` reaches tasks that read data."""
    cls = TASKS.get(name)
    if cls.needs_data:
        params["data_root"] = None if data_root is None else Path(data_root)
    return cls(**params)
