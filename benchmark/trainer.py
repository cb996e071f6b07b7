"""One run = (task, method, seed, training settings) -> metrics at each evaluation and step timings."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import random
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from benchmark import checkpoint, distributed
from benchmark.diagnostics import gradient_diagnostics
from benchmark.gradients import (
    LOCAL,
    JacobianBuffer,
    Reducer,
    backward_step,
    batched_bytes_estimate,
    choose_strategy,
    side_effect_free,
)
from benchmark.method import StepContext, build_method
from benchmark.registry import load_plugin
from benchmark.specs import RunSpec, TaskInfo, TrainSpec
from benchmark.task import Batch, Task, get_task

log = logging.getLogger(__name__)


@dataclass
class MetricRow:
    step: int
    split: str
    name: str
    value: float


@dataclass
class DiagnosticRow:
    """One :mod:`benchmark.diagnostics` value of the per-task gradients at one step."""

    step: int
    name: str
    value: float


@dataclass
class RunResult:
    """What one run produced. ``status`` is ``ok``, ``diverged`` (a non-finite loss or metric, or the
    task's region left: ``error`` says which) or ``failed`` (an exception: ``error`` is its traceback)."""

    spec: RunSpec
    status: str
    metrics: list[MetricRow] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    started: float = 0.0
    ended: float = 0.0
    info: TaskInfo | None = None
    diagnostics: list[DiagnosticRow] = field(default_factory=list)


@dataclass
class Progress:
    """Where a run stands between two steps, besides its model, optimisers and RNGs: what a checkpoint
    saves to resume the loop (:meth:`Trainer.train`)."""

    step: int = 0  # the next step to train
    batches: int = 0  # batches the steps so far drew from the training stream
    strategy: str | None = None  # the param-level Jacobian strategy, once chosen
    metrics: list[MetricRow] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    loss_sum: Tensor | None = None  # summed train losses since the last evaluation, [T]
    last_eval: int = 0
    train_s: float = 0.0
    eval_s: float = 0.0
    interval_ms: list[float] = field(default_factory=list)
    diagnostics: list[DiagnosticRow] = field(default_factory=list)

    def to_state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # metric rows become dicts: tensors and plain values only

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        rows = {"metrics": [MetricRow(**r) for r in state["metrics"]]}
        rows["diagnostics"] = [DiagnosticRow(**r) for r in state.get("diagnostics", [])]
        return cls(**{**state, **rows})


def run(spec: RunSpec, progress: bool = False, checkpoint_dir: str | Path | None = None) -> RunResult:
    """Train one run. Never raises: an exception is recorded as a ``failed`` result with its traceback.

    With ``checkpoint_dir`` the run checkpoints there (``TrainSpec.checkpoint_every``) and, if that
    folder holds a usable checkpoint of the same run, resumes from it (:mod:`benchmark.checkpoint`).
    """
    started = time.time()
    try:
        if spec.train.distributed > 1:  # no checkpoints: a data-parallel run restarts from step 0
            result = distributed.launch(spec, train_process, progress)
        else:
            result = resume_or_start(spec, checkpoint_dir).train(progress)
    except Exception:  # a failing run is a result, it must not take the sweep down
        log.exception("run failed: %s", spec.title)
        result = RunResult(spec, "failed", error=traceback.format_exc())
    result.started, result.ended = started, time.time()
    return result


def resume_or_start(spec: RunSpec, checkpoint_dir: str | Path | None = None) -> Trainer:
    """The run's trainer, at its checkpoint in ``checkpoint_dir`` when there is a usable one; a
    checkpoint that does not fit the run is ignored with a warning (the run starts from step 0)."""
    trainer = Trainer(spec, checkpoint_dir)
    state = None if checkpoint_dir is None else checkpoint.load(trainer.checkpoint_path, spec)
    if state is None:
        return trainer
    try:
        trainer.restore(state)
    except Exception as err:  # a checkpoint of this config and code that still does not fit: corrupt
        where = trainer.checkpoint_path
        log.warning("%s: checkpoint ignored, %s starts from step 0: %s", where, spec.title, err)
        return Trainer(spec, checkpoint_dir)
    log.info("%s: resumed at step %d", spec.title, trainer.progress.step)
    return trainer


def train_process(spec: RunSpec, reducer: Reducer, progress: bool = False) -> RunResult:
    """One process's part of a data-parallel run (:func:`benchmark.distributed.launch`)."""
    return Trainer(spec, reducer=reducer).train(progress)


class Trainer:
    """Builds a run's task, model, method and optimizers; :meth:`train` runs it, from step 0 or from
    where :meth:`restore` put it. With ``checkpoint_dir`` it checkpoints there. ``reducer``: this
    process's part in a data-parallel run (:mod:`benchmark.distributed`); one process by default.
    ``task``: a built task instead of the spec's (the step benchmark's synthetic trunks,
    :mod:`benchmark.step_perf`)."""

    def __init__(
        self,
        spec: RunSpec,
        checkpoint_dir: str | Path | None = None,
        reducer: Reducer = LOCAL,
        task: Task | None = None,
    ) -> None:
        for plugin in spec.plugins:
            load_plugin(plugin)
        self.spec = spec
        cfg = spec.train
        self.device = torch.device(cfg.device)
        seed_everything(spec.seed)
        self.task = task or get_task(spec.task.name, spec.data_root, **spec.task.params)
        self.model = self.task.build_model().to(self.device)
        if cfg.batched_heads:
            self.model.batch_heads()
        self.grad_scale = None if cfg.amp is None else self.model.autocast(cfg.amp)
        if reducer is not LOCAL:
            self.model = distributed.sync_batchnorm(self.model, self.device)
        self.reducer = reducer
        self.method = build_method(spec.method, self.task.num_tasks).to(self.device)
        self.level = cfg.level or self.method.level
        self.steps_per_epoch = self.task.steps_per_epoch(cfg.batch_size)
        self.two_batches = (  # a second batch per step, for its gradients at the param level
            self.method.batches_per_step > 1 and self.method.needs_grads and self.level == "param"
        )
        self.optimizer = make_optimizer(list(self.model.parameters()), cfg, cfg.lr)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        method_params = [p for p in self.method.parameters() if p.requires_grad]
        self.method_optimizer = make_optimizer(method_params, cfg, self.method_lr) if method_params else None
        self.data_generator = torch.Generator().manual_seed(spec.seed)
        self.method_generator = torch.Generator(self.device).manual_seed(spec.seed)
        self.stream = self.task.train_batches(cfg.batch_size, self.data_generator)  # lazy: draws nothing yet
        self.progress = Progress()
        self.checkpoint_path = None if checkpoint_dir is None else checkpoint.path_for(checkpoint_dir, spec)
        self.schedule = checkpoint.Schedule(0 if checkpoint_dir is None else cfg.checkpoint_every, cfg.steps)
        self.jacobian_buffer = JacobianBuffer()  # the param level's [T, P], reused every step

    @property
    def method_lr(self) -> float:
        """The suite's ``method_lr``, else the method's own default, else the model's ``lr``."""
        cfg = self.spec.train
        return cfg.method_lr or self.method.default_method_lr or cfg.lr

    def train(self, progress: bool = False) -> RunResult:
        cfg = self.spec.train
        state = self.progress
        info = self.task.info(self.method.deterministic)
        result = RunResult(
            self.spec, "ok", state.metrics, state.timings, info=info, diagnostics=state.diagnostics
        )
        batches: Iterator[Batch] = (b.to(self.device) for b in self.stream)
        if state.strategy is None:
            first = next(batches)
            batches = itertools.chain([first], batches)
            needs_jacobian = self.method.needs_grads and self.level == "param"  # else no strategy is used
            state.strategy = self._strategy(first, result.timings) if needs_jacobian else "loop"
        if state.loss_sum is None:
            state.loss_sum = torch.zeros(self.task.num_tasks, device=self.device)
        resumed_at = state.step if state.step > 0 else None  # its evaluation is in the checkpoint
        tick = time.perf_counter()
        steps = range(state.step, cfg.steps + 1)
        for step in tqdm(steps, desc=self.spec.title, disable=not progress, leave=False, initial=state.step):
            evaluated = step != resumed_at and (step % cfg.eval_every == 0 or step == cfg.steps)
            if evaluated:
                self._sync()
                now = time.perf_counter()
                rows = []
                if step > state.last_eval:
                    state.train_s += now - tick
                    state.interval_ms.append((now - tick) / (step - state.last_eval) * 1e3)
                    rows += self._loss_rows(step, state.loss_sum / (step - state.last_eval))
                    state.loss_sum.zero_()
                rows += self._evaluate(step)
                state.metrics += rows
                state.last_eval, tick = step, time.perf_counter()
                state.eval_s += tick - now
                reason = self._divergence(rows)
                if reason is not None:
                    result.status, result.error = "diverged", f"step {step}: {reason}"
                    break
            if step != resumed_at and self.schedule.due(step, evaluated):
                tick += self._save_checkpoint(step)  # not training time
            if step == cfg.steps:
                break
            batch = next(batches)
            extra = next(batches) if self.two_batches else None
            state.batches += 1 if extra is None else 2
            observe = self._observer(step, state.diagnostics)
            state.loss_sum += self._step(batch, step, state.strategy, extra, observe)
        result.timings.update(
            step_ms_mean=state.train_s / max(state.last_eval, 1) * 1e3,
            step_ms_median=statistics.median(state.interval_ms) if state.interval_ms else math.nan,
            train_s=state.train_s,
            eval_s=state.eval_s,
        )
        return result

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything the run needs to continue exactly from :attr:`progress` (a checkpoint)."""
        return {
            **checkpoint.header(self.spec),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "method": self.method.state_dict(),
            "method_optimizer": None if self.method_optimizer is None else self.method_optimizer.state_dict(),
            "rng": checkpoint.rng_states(self.data_generator, self.method_generator),
            "progress": self.progress.to_state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`checkpoint_state` of this run: the state dicts are loaded, the training
        stream is drawn again up to where the run was (it must then stand where the checkpoint says,
        else :class:`~benchmark.checkpoint.CheckpointError`) and every RNG is set as it was."""
        progress = Progress.from_state(state["progress"])
        for _ in range(progress.batches):  # the stream's position: the same draws, from the same seed
            next(self.stream)
        if not torch.equal(self.data_generator.get_state(), state["rng"]["data"].cpu()):
            raise checkpoint.CheckpointError(
                f"the training stream of task {self.task.name!r} does not replay from its generator"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])
        if (self.method_optimizer is None) != (state["method_optimizer"] is None):
            raise checkpoint.CheckpointError("the method's optimiser does not match")
        if self.method_optimizer is not None:
            self.method_optimizer.load_state_dict(state["method_optimizer"])
        checkpoint.set_rng_states(state["rng"], self.data_generator, self.method_generator)
        progress.timings["resumed_step"] = progress.step
        self.progress = progress

    def _save_checkpoint(self, step: int) -> float:
        """Checkpoint before training ``step``; returns the seconds it took (also in ``checkpoint_s``)."""
        start = time.perf_counter()
        self.progress.step = step
        checkpoint.save(self.checkpoint_state(), self.checkpoint_path)
        self.schedule.written()
        elapsed = time.perf_counter() - start
        timings = self.progress.timings
        timings["checkpoint_s"] = timings.get("checkpoint_s", 0.0) + elapsed
        return elapsed

    def _observer(self, step: int, rows: list[DiagnosticRow]) -> Callable[[Tensor], None] | None:
        """On every ``diagnostics_every``-th step, what appends the per-task gradients' diagnostics
        to ``rows``; ``None`` (nothing computed) on the other steps or when diagnostics are off."""
        every = self.spec.train.diagnostics_every
        if not every or step % every:
            return None

        def observe(grads: Tensor) -> None:
            rows.extend(DiagnosticRow(step, k, v) for k, v in gradient_diagnostics(grads).items())

        return observe

    def _step(
        self,
        batch: Batch,
        step: int,
        strategy: str,
        extra: Batch | None = None,
        observe: Callable[[Tensor], None] | None = None,
    ) -> Tensor:
        """One optimisation step on ``batch`` (``extra``: the second batch of a two-batch method;
        ``observe``: handed the per-task gradients, see :func:`benchmark.gradients.backward_step`)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.method_optimizer is not None:
            self.method_optimizer.zero_grad(set_to_none=True)
        epoch = step // self.steps_per_epoch
        ctx = StepContext(step=step, generator=self.method_generator, level=self.level, epoch=epoch)
        losses = backward_step(
            self.model, self.task, batch, self.method, ctx, strategy, extra, self.reducer, observe,
            self.jacobian_buffer, self.spec.train.factored_heads,
        )
        if self.grad_scale is not None and not self.grad_scale.update(self.model.shared_parameters()):
            return losses  # fp16 overflow: the step is skipped, as GradScaler does
        if self.spec.train.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.train.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        if self.method.needs_losses_after_step:
            with torch.no_grad(), side_effect_free(self.model):
                self.method.losses_after_step(self.task.losses(self.model(batch.inputs), batch))
        if self.method_optimizer is not None:
            self.method_optimizer.step()
        return losses

    def _strategy(self, batch: Batch, timings: dict[str, float]) -> str:
        """The param-level Jacobian strategy of the config; ``auto`` follows the device and the batched
        call's memory estimate on this model and batch (recorded with the run)."""
        if self.spec.train.jacobian != "auto":
            return self.spec.train.jacobian
        shared = self.model.shared_parameters()
        with side_effect_free(self.model):
            estimate = batched_bytes_estimate(lambda: self.model(batch.inputs), shared, self.task.num_tasks)
        choice = choose_strategy(self.device, estimate)
        timings.update(jacobian_batched_mib=estimate / 2**20, jacobian_batched=float(choice == "batched"))
        return choice

    def _evaluate(self, step: int) -> list[MetricRow]:
        self.model.eval()
        rows = [
            MetricRow(step, split, name, float(value))
            for split in self.task.eval_splits
            for name, value in self.task.evaluate(self.model, split).items()
        ]
        self.model.train()
        return rows

    def _divergence(self, rows: list[MetricRow]) -> str | None:
        """Why an evaluation's ``rows`` show the run diverged: a non-finite value, or the task's
        :meth:`~benchmark.task.Task.check_region`; ``None`` when they do not."""
        bad = [f"{r.split}/{r.name}" for r in rows if not math.isfinite(r.value)]
        if bad:
            return f"non-finite loss or metric ({', '.join(bad[:5])})"
        return self.task.check_region({r.name: r.value for r in rows if r.split in self.task.eval_splits})

    def _loss_rows(self, step: int, mean_losses: Tensor) -> list[MetricRow]:
        pairs = zip(self.task.task_names, mean_losses.tolist(), strict=True)
        return [MetricRow(step, "train_loss", name, value) for name, value in pairs]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(params: list[nn.Parameter], cfg: TrainSpec, lr: float) -> torch.optim.Optimizer:
    """The configured optimiser; ``optimizer_impl`` picks torch's for-loop/foreach default, ``foreach``
    or ``fused`` kernels (the same update up to the order of floating-point operations)."""
    impl = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[cfg.optimizer_impl]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **impl)
    optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    return optimizer(params, lr=lr, weight_decay=cfg.weight_decay, **impl)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainSpec) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then the configured schedule, as one LR factor per step."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step / max(cfg.steps, 1), 1.0)))
        if cfg.schedule == "step":
            return cfg.lr_gamma ** (step // cfg.lr_step_size)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
