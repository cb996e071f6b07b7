"""Step cost: the real training step (``Trainer._step``: model, method, optimiser, schedule) per method
and level, as a ratio to the summed-loss step (``ew``) of the same model, batch, settings and round.

Every case runs with the task's default training settings, and again with each variant of TrainSpec
settings asked for (``perf --step --variant batched_heads=true,optimizer_impl=fused``); a variant's
cases also get their ratio to the default-settings ``ew`` of the same model, so that what the settings
save reads off one column (the variant's ``ew`` at, say, 0.62× the default ``ew``).

Cases run in one process in interleaved rounds (round-robin over the cases, each round timing every
case ``repeats`` times and keeping the median), so that a slower or busier stretch of the machine hits
every case alike; the ratio of a round is against the baseline's time in that round, and the table
gives the median ratio with its spread (min–max) over rounds. Peak memory is measured per case in a
fresh subprocess, above its rest (model, batch and optimiser built, no step taken yet: the optimiser's
state and the Jacobian buffer count): on a CPU the
high-water mark of the resident set (``VmHWM`` of ``/proc/self/status``, reset at rest through
``/proc/self/clear_refs``, Linux ≥ 4.0) minus the resident set at rest (``VmRSS``), on a GPU
``torch.cuda.max_memory_allocated`` minus the allocation at rest. When TorchJD is installed, its
``mtl_backward`` + ``jac_to_grad(UPGrad)`` step on the same model and batch runs beside them
(``torchjd_upgrad``, param level).

The two synthetic trunks of DESIGN §7 (not registered tasks): ``mlp``, 1024 -> 512 -> 512 with ReLU
(787,456 shared parameters), batch 256; ``cnn``, four 3×3 convolutions (3 -> 32 -> 64 -> 64 -> 16
channels, stride 2 after the first; 65,552 shared parameters) on 64×64 inputs, batch 64. Both have T
heads ``LinearHead(z → 1)`` (one logit per row; the task declares ``linear_heads``, so that
``batched_heads`` applies) with a binary cross-entropy loss each. Absolute times depend on the machine;
this is a benchmark, not a test.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmark.config import check_execution
from benchmark.specs import Metric, PluginSpec, RunSpec, TrainSpec
from benchmark.task import Batch, LinearHead, MultiTaskModel, Task, get_task
from benchmark.trainer import Trainer

BASELINE = "ew"
TORCHJD = "torchjd_upgrad"


class SyntheticTask(Task):
    """A trunk of :data:`TRUNKS` with ``num_tasks`` binary heads (one logit per row) on one fixed random
    batch."""

    eval_splits = ()
    linear_heads = True

    def __init__(self, trunk: str, num_tasks: int) -> None:
        super().__init__([f"t{i}" for i in range(num_tasks)])
        self.trunk, (self.input_shape, batch_size, self.width) = trunk, TRUNKS[trunk]
        self.train_defaults = {"batch_size": batch_size}

    def build_model(self) -> MultiTaskModel:
        trunk = _mlp() if self.trunk == "mlp" else _cnn()
        return MultiTaskModel(trunk, [LinearHead(self.width, 1, squeeze=True) for _ in self.task_names])

    def train_batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        inputs = torch.randn(batch_size, *self.input_shape, generator=generator)
        targets = torch.randint(0, 2, (batch_size, self.num_tasks), generator=generator).float()
        while True:
            yield Batch(inputs, targets)

    def losses(self, outputs: list[Tensor], batch: Batch) -> Tensor:
        bce = nn.functional.binary_cross_entropy_with_logits
        return torch.stack([bce(out, batch.targets[:, i]) for i, out in enumerate(outputs)])

    def metrics(self) -> list[Metric]:
        return []


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU())


def _cnn() -> nn.Module:
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate([(3, 32), (32, 64), (64, 64), (64, 16)]):
        layers += [nn.Conv2d(cin, cout, 3, stride=2 if i else 1, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten())


TRUNKS: dict[str, tuple[tuple[int, ...], int, int]] = {
    "mlp": ((1024,), 256, 512),  # input shape, batch size, width of z
    "cnn": ((3, 64, 64), 64, 16 * 8 * 8),
}


Settings = tuple[tuple[str, object], ...]


@dataclass(frozen=True)
class StepCase:
    """One configuration: a synthetic ``trunk`` with ``num_tasks`` heads, or a registered ``task``;
    ``settings``: TrainSpec fields over the task's ``train_defaults`` (key/value pairs, kept sorted
    as tuples, also when given as the lists of a JSON round trip)."""

    method: str
    level: str
    trunk: str = ""
    num_tasks: int = 0
    task: str = ""
    settings: Settings = ()

    def __post_init__(self) -> None:
        pairs = sorted((tuple(pair) for pair in self.settings), key=lambda pair: pair[0])
        object.__setattr__(self, "settings", tuple(pairs))

    @property
    def model(self) -> tuple[str, int, str]:
        """The cases of one model and batch share this key (and their default-settings baseline)."""
        return (self.trunk, self.num_tasks, self.task)


def settings_label(settings: Settings) -> str:
    """``batched_heads=true, optimizer_impl=fused`` (values as YAML writes them); ``–`` for none."""
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in settings) or "–"


@dataclass
class StepResult:
    case: StepCase
    ms: list[float]  # median step time of each round
    ratios: list[float]  # to the time of the baseline with the same settings in the same round
    ratios_to_defaults: list[float]  # to the default-settings baseline's time of the same round
    peak_mib: float | None = None

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def ratio_to_defaults(self) -> float:
        return statistics.median(self.ratios_to_defaults)


def build_task(case: StepCase) -> Task:
    return get_task(case.task) if case.task else SyntheticTask(case.trunk, case.num_tasks)


def build_step(case: StepCase, device: str = "cpu") -> Callable[[], None]:
    """One training step of ``case`` as a call: the trainer's own (method, optimiser, schedule), or the
    TorchJD step on the trainer's model and batch."""
    task = build_task(case)
    method = BASELINE if case.method == TORCHJD else case.method
    settings = {**task.train_defaults, **dict(case.settings), "level": case.level, "jacobian": "auto"}
    train = TrainSpec(**{**settings, "device": device})
    check_execution(train, task, f"settings {settings_label(case.settings)}", case.task or case.trunk)
    spec = RunSpec("perf", PluginSpec(case.task or "synthetic"), PluginSpec(method), 0, train)
    trainer = Trainer(spec, task=task)
    batches = (b.to(trainer.device) for b in task.train_batches(train.batch_size, trainer.data_generator))
    first = next(batches)
    needs_jacobian = trainer.method.needs_grads and case.level == "param"
    strategy = trainer._strategy(first, {}) if needs_jacobian else "loop"
    if case.method == TORCHJD:
        return lambda: _torchjd_step(trainer, first)
    steps = iter(range(1 << 62))

    def step() -> None:
        extra = next(batches) if trainer.two_batches else None
        trainer._step(next(batches), next(steps), strategy, extra)
        trainer._sync()

    return step


def _torchjd_step(trainer: Trainer, batch: Batch) -> None:
    """TorchJD's multi-task step: ``mtl_backward`` at the features, UPGrad on the shared Jacobian."""
    from torchjd.aggregation import UPGrad
    from torchjd.autojac import jac_to_grad, mtl_backward

    trainer.optimizer.zero_grad(set_to_none=True)
    z = trainer.model.trunk(batch.inputs)
    losses = trainer.task.losses(trainer.model.forward_heads(z), batch)
    mtl_backward(list(losses), features=z, retain_graph=True)  # the T losses share one stack node
    jac_to_grad(trainer.model.shared_parameters(), UPGrad())
    trainer.optimizer.step()
    trainer.scheduler.step()
    trainer._sync()


def step_cases(
    methods: Sequence[str],
    num_tasks: Sequence[int],
    trunks: Sequence[str],
    tasks: Sequence[str] = (),
    levels: Sequence[str] = ("param", "feature"),
    torchjd: bool | None = None,
    variants: Sequence[Settings] = (),
) -> list[StepCase]:
    """Every method at every one of ``levels`` on every model, the baseline first; loss weightings (one
    backward whatever the level) once. ``torchjd``: add TorchJD's step (default: if installed) where
    ``levels`` has ``"param"``.
    Each of ``variants`` (TrainSpec settings) adds every case of each model again, after its defaults'."""
    from benchmark.method import get_method

    torchjd = importlib.util.find_spec("torchjd") is not None if torchjd is None else torchjd
    models = [(t, n, "") for t in trunks for n in num_tasks] + [("", get_task(k).num_tasks, k) for k in tasks]
    cases = []
    for (trunk, count, task), settings in itertools.product(models, dict.fromkeys(((), *variants))):
        cases.append(StepCase(BASELINE, "param", trunk, count, task, settings))
        for name in methods:
            if name == BASELINE:
                continue
            one_level = not get_method(name, count).needs_grads
            levels_of = levels[:1] if one_level else levels
            cases += [StepCase(name, lv, trunk, count, task, settings) for lv in levels_of]
        if torchjd and "param" in levels:
            cases.append(StepCase(TORCHJD, "param", trunk, count, task, settings))
    return cases


def time_interleaved(
    steps: dict[StepCase, Callable[[], None]], rounds: int, repeats: int
) -> dict[StepCase, list[float]]:
    """Per case, the median of ``repeats`` timed calls in each of ``rounds`` round-robin rounds (ms),
    after one warm-up call each."""
    for step in steps.values():
        step()
    times: dict[StepCase, list[float]] = {case: [] for case in steps}
    for _ in range(rounds):
        for case, step in steps.items():
            calls = []
            for _ in range(repeats):
                start = time.perf_counter()
                step()
                calls.append((time.perf_counter() - start) * 1e3)
            times[case].append(statistics.median(calls))
    return times


def with_ratios(times: dict[StepCase, list[float]]) -> list[StepResult]:
    """Each case's round times over the same rounds' times of its model's baseline with the same
    settings, and of its model's baseline with the default settings."""
    baselines = {(case.model, case.settings): ms for case, ms in times.items() if case.method == BASELINE}

    def over(ms: list[float], base: list[float]) -> list[float]:
        return [t / b for t, b in zip(ms, base, strict=True)]

    return [
        StepResult(
            case, ms, over(ms, baselines[case.model, case.settings]), over(ms, baselines[case.model, ()])
        )
        for case, ms in times.items()
    ]


def peak_memory_mib(case: StepCase, device: str = "cpu", steps: int = 2) -> float:
    """The case's peak memory above rest in a fresh subprocess (see the module docstring)."""
    call = f"_report_peak({json.dumps(asdict(case))!r}, {device!r}, {steps})"
    threads = f"import torch; torch.set_num_threads({torch.get_num_threads()})"
    code = f"{threads}; from benchmark.step_perf import _report_peak; {call}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _report_peak(case_json: str, device: str, steps: int) -> None:
    """Subprocess side of :func:`peak_memory_mib`: print the peak above rest in MiB."""
    step = build_step(StepCase(**json.loads(case_json)), device)
    if device.startswith("cuda"):
        rest = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(steps):
            step()
        peak = torch.cuda.max_memory_allocated() - rest
    else:
        rest = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark VmHWM restarts from VmRSS
        for _ in range(steps):
            step()
        peak = (_status_kib("VmHWM") - rest) * 1024
    sys.stdout.write(f"{max(peak, 0) / 2**20:.1f}\n")


def _status_kib(key: str) -> int:
    """A ``kB`` field of ``/proc/self/status``."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(f"{key}:"))
    return int(line.split()[1])


def step_benchmark(
    cases: Sequence[StepCase], rounds: int, repeats: int, device: str = "cpu", memory: bool = True
) -> list[StepResult]:
    """Time ``cases`` interleaved, then (``memory``) measure each one's peak in its own subprocess."""
    steps = {case: build_step(case, device) for case in cases}
    results = with_ratios(time_interleaved(steps, rounds, repeats))
    if memory:
        for result in results:
            result.peak_mib = peak_memory_mib(result.case, device)
    return results


def step_table(results: Sequence[StepResult]) -> str:
    """Markdown: one row per case with its median time, ratio to the ``ew`` of its settings, spread over
    rounds and ratio to the default-settings ``ew``."""
    lines = [
        "| model | T | settings | method | level | ms | × ew | spread (min–max) | × ew defaults | peak MiB |",
        "|---|---:|---|---|---|---:|---:|---|---:|---:|",
    ]
    for r in results:
        c = r.case
        model = c.task or c.trunk
        peak = "–" if r.peak_mib is None else f"{r.peak_mib:.0f}"
        level = c.level if c.method != BASELINE else "–"
        lines.append(
            f"| {model} | {c.num_tasks or '–'} | {settings_label(c.settings)} | {c.method} | {level} | "
            f"{statistics.median(r.ms):.1f} | {r.ratio:.2f} | {min(r.ratios):.2f}–{max(r.ratios):.2f} | "
            f"{r.ratio_to_defaults:.2f} | {peak} |"
        )
    return "\n".join(lines)


def step_json(results: Sequence[StepResult]) -> str:
    rows = [
        {
            **asdict(r.case), "settings": dict(r.case.settings), "ms": r.ms, "ratios": r.ratios,
            "ratio": r.ratio, "ratios_to_defaults": r.ratios_to_defaults,
            "ratio_to_defaults": r.ratio_to_defaults, "peak_mib": r.peak_mib,
        }
        for r in results
    ]
    return json.dumps(rows, indent=1)
