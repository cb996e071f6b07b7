"""One run = (task, method, seed, training settings) -> metrics at each evaluation and step timings."""

from __future__ import annotations

import itertools
import logging
import math
import random
import statistics
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from benchmark.gradients import (
    JacobianBuffer,
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


def run(spec: RunSpec, progress: bool = False) -> RunResult:
    """Train one run. Never raises: an exception is recorded as a ``failed`` result with its traceback."""
    started = time.time()
    try:
        result = Trainer(spec).train(progress)
    except Exception:  # a failing run is a result, it must not take the sweep down
        log.exception("run failed: %s", spec.title)
        result = RunResult(spec, "failed", error=traceback.format_exc())
    result.started, result.ended = started, time.time()
    return result


class Trainer:
    """Builds a run's task, model, method and optimizers; :meth:`train` runs it. ``task``: a built task
    instead of the spec's (the step benchmark's synthetic trunks, :mod:`benchmark.step_perf`)."""

    def __init__(self, spec: RunSpec, task: Task | None = None) -> None:
        for plugin in spec.plugins:
            load_plugin(plugin)
        self.spec = spec
        cfg = spec.train
        self.device = torch.device(cfg.device)
        seed_everything(spec.seed)
        self.task = task or get_task(spec.task.name, spec.data_root, **spec.task.params)
        self.model = self.task.build_model().to(self.device)
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
        self.jacobian_buffer = JacobianBuffer()  # the param level's [T, P], reused every step

    @property
    def method_lr(self) -> float:
        """The suite's ``method_lr``, else the method's own default, else the model's ``lr``."""
        cfg = self.spec.train
        return cfg.method_lr or self.method.default_method_lr or cfg.lr

    def train(self, progress: bool = False) -> RunResult:
        cfg = self.spec.train
        result = RunResult(self.spec, "ok", info=self.task.info(self.method.deterministic))
        batches = (b.to(self.device) for b in self.task.train_batches(cfg.batch_size, self.data_generator))
        first = next(batches)
        batches = itertools.chain([first], batches)
        needs_jacobian = self.method.needs_grads and self.level == "param"  # else no strategy is used
        strategy = self._strategy(first, result.timings) if needs_jacobian else "loop"
        loss_sum = torch.zeros(self.task.num_tasks, device=self.device)
        train_s = eval_s = 0.0
        interval_ms: list[float] = []
        last_eval, tick = 0, time.perf_counter()
        for step in tqdm(range(cfg.steps + 1), desc=self.spec.title, disable=not progress, leave=False):
            if step % cfg.eval_every == 0 or step == cfg.steps:
                self._sync()
                now = time.perf_counter()
                rows = []
                if step > last_eval:
                    train_s += now - tick
                    interval_ms.append((now - tick) / (step - last_eval) * 1e3)
                    rows += self._loss_rows(step, loss_sum / (step - last_eval))
                    loss_sum.zero_()
                rows += self._evaluate(step)
                result.metrics += rows
                last_eval, tick = step, time.perf_counter()
                eval_s += tick - now
                reason = self._divergence(rows)
                if reason is not None:
                    result.status, result.error = "diverged", f"step {step}: {reason}"
                    break
            if step == cfg.steps:
                break
            batch = next(batches)
            extra = next(batches) if self.two_batches else None
            loss_sum += self._step(batch, step, strategy, extra)
        result.timings.update(
            step_ms_mean=train_s / max(last_eval, 1) * 1e3,
            step_ms_median=statistics.median(interval_ms) if interval_ms else math.nan,
            train_s=train_s,
            eval_s=eval_s,
        )
        return result

    def _step(self, batch: Batch, step: int, strategy: str, extra: Batch | None = None) -> Tensor:
        """One optimisation step on ``batch`` (``extra``: the second batch of a two-batch method)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.method_optimizer is not None:
            self.method_optimizer.zero_grad(set_to_none=True)
        epoch = step // self.steps_per_epoch
        ctx = StepContext(step=step, generator=self.method_generator, level=self.level, epoch=epoch)
        losses = backward_step(
            self.model, self.task, batch, self.method, ctx, strategy, extra, buffer=self.jacobian_buffer
        )
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
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    return optimizer(params, lr=lr, weight_decay=cfg.weight_decay)


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
