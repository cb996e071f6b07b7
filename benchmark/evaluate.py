"""From the store's frames to results: each run's evaluation step, aggregates over seeds, tuning
selection, confidence intervals, tests against a baseline, Δm% / Δp, ranks and claims.

Model selection is honest (DESIGN.md §6): when a task evaluates on ``"val"``, each run is read at the
step with the best validation score and reported on ``"test"`` there; a task without a validation split
is read at the last step of its first evaluation split. Runs whose status is not ``ok`` are left out of
the aggregates, and counted by :func:`status_counts`.

Everything works on the frames of :class:`benchmark.store.ResultsStore` alone, so it is testable
without models: each run carries its task's metric declarations (``runs.info``). Only runs stored by
a version-1 store lack them; :func:`run_infos` then builds their task once to learn them.

Tuned methods: a suite's ``tune:`` makes one run label per configuration, ``<method>[k=v, ...]``
(:func:`tune_parts`). Per task label and method, the configuration with the best mean *validation*
score over its ok runs is kept and relabelled ``<method>``; its *test* values are reported
(:func:`select_tuned`). The number of configurations is the method's budget.

Statistics (:mod:`benchmark.stats`): 95 % Student-t intervals over the runs of a label pair (seeds
and task instances); each method against the suite's baseline by a paired t-test where both ran on
the same seeds and task instances, Welch's otherwise, Holm-adjusted across the methods of a table
per metric. Δm% and Δp are taken against single-task runs (``stl``) where the suite has them, else
against the baseline (:func:`reference_means`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from benchmark import stats
from benchmark.registry import TASKS
from benchmark.specs import STATUSES, TaskInfo
from benchmark.task import Task

logger = logging.getLogger(__name__)

GROUP = ["task_label", "method_label"]
ON_FRONT = "on_front"
BASELINE = "ew"
STL = "stl"
ALL = "all"
TUNED_LABEL = re.compile(r"(?P<method>[^\[]+)\[(?P<config>.*)\]")
TEST_COLUMNS = ["test", "effect", "low", "high", "p", "n", "n_reference"]
TESTED = [*GROUP, "reference", "name"]


@dataclass(frozen=True)
class Claim:
    """"Method ``better`` is better than ``than`` (labels, or ``"all"``: every other method of the
    table but single-task runs) on ``metric`` of task label ``task`` (``None``: every task label that
    reports the metric)." """

    better: str
    than: tuple[str, ...] | str
    metric: str
    task: str | None = None

    @property
    def text(self) -> str:
        than = self.than if isinstance(self.than, str) else ", ".join(self.than)
        where = f" on {self.task}" if self.task else ""
        return f"{self.better} better than {than} in {self.metric}{where}"


@dataclass(frozen=True)
class Published:
    """A published number to show beside ours, with its source (paper, table, row)."""

    method: str
    task: str
    metric: str
    value: float
    paper: str
    table: str
    row: str


@dataclass(frozen=True)
class ReportSettings:
    """What a suite file says about its report: the baseline label, claims and published numbers."""

    baseline: str = BASELINE
    claims: tuple[Claim, ...] = ()
    published: tuple[Published, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReportSettings:
        claims = tuple(
            Claim(**{**c, "than": c["than"] if isinstance(c["than"], str) else tuple(c["than"])})
            for c in data.get("claims", ())
        )
        published = tuple(Published(**p) for p in data.get("published", ()))
        return cls(data.get("baseline", BASELINE), claims, published)


@dataclass
class Evaluation:
    """The results of one suite.

    Attributes:
        runs: the store's runs frame.
        infos: ``run_id`` -> the run's :class:`TaskInfo`.
        values: per run, every value logged at its evaluation point (one row per run and name), with
            a nullable ``higher_is_better`` (NA: a diagnostic value, not a declared metric).
        summary: :func:`aggregate` of ``values``.
        ranks: :func:`ranks` of ``summary``.
        counts: :func:`status_counts` of ``runs``.
        delta_m: :func:`deltas` of ``summary`` (Δm% and Δp) against :func:`reference_means`.
        tuning: :func:`select_tuned`'s table of every configuration and its validation score.
        significance: :func:`significance` against the baseline.
        near_best: :func:`near_best`.
        claims: :func:`evaluate_claims` of the settings' claims.
        settings: the suite's report settings.

    ``runs`` and ``values`` hold, of each tuned method, the selected configuration only, relabelled
    with the method's label; ``all_runs`` holds every run as stored.
    """

    runs: pd.DataFrame
    infos: dict[int, TaskInfo]
    values: pd.DataFrame
    summary: pd.DataFrame
    ranks: pd.DataFrame
    counts: pd.DataFrame
    delta_m: pd.DataFrame
    tuning: pd.DataFrame = field(default_factory=pd.DataFrame)
    significance: pd.DataFrame = field(default_factory=pd.DataFrame)
    near_best: pd.DataFrame = field(default_factory=pd.DataFrame)
    claims: pd.DataFrame = field(default_factory=pd.DataFrame)
    settings: ReportSettings = field(default_factory=ReportSettings)
    all_runs: pd.DataFrame = field(default_factory=pd.DataFrame)


def build_task(name: str, params: Mapping[str, Any]) -> Task:
    """The registered task ``name`` built with the run spec's ``params``."""
    return TASKS.create(name, **params)


def task_info(name: str, params: Mapping[str, Any]) -> TaskInfo:
    """The task's metrics and splits; an empty :class:`TaskInfo` (logged) if it cannot be built."""
    try:
        task = build_task(name, params)
        info = task.info(method_deterministic=False)
    except Exception as exc:
        logger.warning("task %r %s cannot be built (%s): values shown without directions", name, params, exc)
        return TaskInfo()
    if info.selection_metric is not None and info.selection_metric not in info.directions:
        logger.warning("task %r: selection metric %r is not one of its metrics", name, info.selection_metric)
    return info


def run_infos(runs: pd.DataFrame) -> dict[int, TaskInfo]:
    """``run_id`` -> :class:`TaskInfo`: the stored one, else (old runs) from the task, built once per
    distinct (task, params)."""
    cache: dict[tuple[str, str], TaskInfo] = {}
    infos: dict[int, TaskInfo] = {}
    columns = (runs["run_id"], runs["task"], runs["spec"], runs["info"])
    for run_id, task, spec, stored in zip(*columns, strict=True):
        if stored is not None:
            infos[int(run_id)] = stored
            continue
        params = spec["task"]["params"]
        key = (task, json.dumps(params, sort_keys=True, default=str))
        if key not in cache:
            cache[key] = task_info(task, params)
        infos[int(run_id)] = cache[key]
    return infos


def selection_score(wide: pd.DataFrame, info: TaskInfo) -> pd.Series | None:
    """Per step (rows of ``wide``, one column per metric), a score where higher is better.

    The selection metric, negated when lower is better; without one, the mean of the higher-is-better
    metrics. ``None`` when neither is available.
    """
    directions = info.directions
    if info.selection_metric is not None:
        if info.selection_metric not in wide:
            return None
        sign = 1.0 if directions.get(info.selection_metric, True) else -1.0
        return sign * wide[info.selection_metric]
    higher = [name for name, better in directions.items() if better and name in wide]
    return wide[higher].mean(axis=1) if higher else None


def selected_step(val: pd.DataFrame, info: TaskInfo) -> int:
    """The step of the best validation score (the earliest on ties); the last step if none is scored."""
    wide = val.groupby(["step", "name"])["value"].last().unstack()
    score = selection_score(wide, info)
    if score is None or score.isna().all():
        return int(wide.index.max())
    return int(score.idxmax())


def evaluation_point(rows: pd.DataFrame, info: TaskInfo) -> tuple[int, str]:
    """``(step, split)`` at which one run's metric ``rows`` are read.

    With a ``"val"`` split: the validation-selected step, on ``"test"`` (on ``"val"`` if there is no
    test split). Without: the last step of the first evaluation split. Splits the task does not declare
    (or all logged splits, for an unknown task) are ignored.
    """
    logged = list(dict.fromkeys(rows["split"]))
    splits = [s for s in info.eval_splits if s in logged] or logged
    if "val" in splits:
        report = "test" if "test" in splits else "val"
        return selected_step(rows[rows["split"] == "val"], info), report
    return int(rows.loc[rows["split"] == splits[0], "step"].max()), splits[0]


def validation_score(rows: pd.DataFrame, info: TaskInfo, step: int) -> float:
    """The run's :func:`selection_score` on ``"val"`` at ``step`` (NaN without one)."""
    val = rows[rows["split"] == "val"]
    if val.empty:
        return float("nan")
    score = selection_score(val.groupby(["step", "name"])["value"].last().unstack(), info)
    return float("nan") if score is None else float(score.get(step, float("nan")))


def evaluated_values(metrics: pd.DataFrame, infos: Mapping[int, TaskInfo]) -> pd.DataFrame:
    """Per run, every value logged at its :func:`evaluation_point`, declared metrics first.

    Adds a nullable boolean ``higher_is_better`` column (NA for values that are not declared metrics)
    and ``val_score``, the run's :func:`validation_score` at that step (what tuning selects on).
    """
    parts = []
    for run_id, rows in metrics.groupby("run_id", sort=False):
        info = infos.get(int(run_id), TaskInfo())
        step, split = evaluation_point(rows, info)
        part = rows[(rows["step"] == step) & (rows["split"] == split)]
        order = {name: i for i, name in enumerate(info.directions)}
        part = part.sort_values("name", key=lambda n: n.map(order).fillna(len(order)), kind="stable")
        score = validation_score(rows, info, step)
        parts.append(part.assign(higher_is_better=part["name"].map(info.directions), val_score=score))
    if not parts:
        return metrics.assign(higher_is_better=pd.Series(dtype="boolean"), val_score=pd.Series(dtype=float))
    values = pd.concat(parts, ignore_index=True)
    return values.astype({"higher_is_better": "boolean"})


def tune_parts(label: str) -> tuple[str, str]:
    """``("graddrop", "lr=0.01, k=0.5")`` for the tuned run label ``graddrop[lr=0.01, k=0.5]``;
    ``(label, "")`` for a label that is not a tuning configuration."""
    match = TUNED_LABEL.fullmatch(label)
    return (match["method"], match["config"]) if match else (label, "")


def _with_config(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its ``method_label`` split into ``method`` and ``config`` (:func:`tune_parts`)."""
    parts = frame["method_label"].map(tune_parts)
    return frame.assign(method=parts.str[0], config=parts.str[1])


def select_tuned(runs: pd.DataFrame, values: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Keep, per task label and tuned method, the configuration with the best mean validation score.

    The mean is over the configuration's ``ok`` runs (each run's :func:`validation_score`); ties go to
    the configuration that comes first; a configuration without a score ranks last. Test values never
    enter the choice. Returns ``runs`` and ``values`` of the kept configurations relabelled by their
    method (the others dropped) and a table of every configuration: ``task_label``, ``method_label``,
    ``config``, ``val_score``, ``budget`` (configurations of the method) and ``selected``.
    """
    keys = ["task_label", "method", "config"]
    runs, values = _with_config(runs), _with_config(values)
    ok = values[values["status"] == "ok"].drop_duplicates("run_id")
    scores = ok.groupby(keys, sort=False)["val_score"].mean()
    table = runs[keys].drop_duplicates().join(scores, on=keys)
    table["budget"] = table.groupby(["task_label", "method"])["config"].transform("size")
    ranked = table["val_score"].fillna(-np.inf)
    by_method = [table["task_label"], table["method"]]
    best = ranked == ranked.groupby(by_method, sort=False).transform("max")
    table["selected"] = best & (best.groupby(by_method, sort=False).cumsum() == 1)
    kept = table.loc[table["selected"], keys]

    def relabel(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.reset_index(drop=True).merge(kept, on=keys)
        return frame.assign(method_label=frame["method"]).drop(columns=["method", "config"])

    table = table.rename(columns={"method": "method_label"}).reset_index(drop=True)
    return relabel(runs), relabel(values), table


def aggregate(values: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for one run), count and ``half_width`` of the 95 % Student-t interval
    (:func:`benchmark.stats.t_interval`) of each value over the ``ok`` runs per label pair.

    Runs sharing a task label and a method label are pooled: seeds, and e.g. the starting points of a
    toy task. Rows keep the order of first appearance.
    """
    ok = values[values["status"] == "ok"]
    grouped = ok.groupby([*GROUP, "name"], sort=False)
    summary = grouped["value"].agg(["mean", "std", "count"])
    summary["half_width"] = grouped["value"].agg(lambda v: stats.t_interval(v).half_width)
    summary["higher_is_better"] = grouped["higher_is_better"].first()
    return summary.reset_index()


def ranks(summary: pd.DataFrame) -> pd.DataFrame:
    """Per task label, each method's rank (1 = best, ties averaged) averaged over the declared metrics."""
    scored = summary[summary["higher_is_better"].notna()]
    signed = scored["mean"] * np.where(scored["higher_is_better"].astype(bool), -1.0, 1.0)
    per_metric = signed.groupby([scored["task_label"], scored["name"]]).rank(method="average")
    mean_rank = per_metric.groupby([scored["task_label"], scored["method_label"]], sort=False).mean()
    return mean_rank.rename("rank").reset_index()


def metric_task(name: str, info: TaskInfo) -> int | None:
    """The loss a metric belongs to, by the naming convention ``<stat>/<task name>`` (``acc/left``,
    ``error/Smiling``): the index of that name in ``info.task_names``; ``None`` for any other metric
    (an average over tasks such as ``mean_error``, or a task that did not store its names)."""
    _, sep, task = name.rpartition("/")
    return info.task_names.index(task) if sep and task in info.task_names else None


def metric_tasks(info: TaskInfo) -> dict[str, int]:
    """Each declared metric that belongs to one loss (:func:`metric_task`) -> that loss."""
    found = {m.name: metric_task(m.name, info) for m in info.metrics}
    return {name: task for name, task in found.items() if task is not None}


def stl_task(spec: Mapping[str, Any]) -> int | None:
    """The loss a single-task run (method ``stl``, no weighting) trains on; ``None`` for other runs."""
    method = spec.get("method") or {}
    if method.get("name") != STL or method.get("weighting"):
        return None
    return int(method.get("params", {}).get("task", 0))


def stl_reference(runs: pd.DataFrame, metrics: pd.DataFrame, infos: Mapping[int, TaskInfo]) -> pd.DataFrame:
    """Single-task reference values, stitched per metric (``task_label``, ``name``, ``mean``).

    A metric of loss k (:func:`metric_task`) is taken from the ``ok`` runs ``stl(task=k)``, each read
    at the step selected on loss k's own first declared metric on validation (as
    :func:`evaluation_point` reads every run), and averaged over their seeds. Metrics of no single
    loss get no single-task reference.
    """
    parts = []
    for run in runs[runs["status"] == "ok"].itertuples():
        k = stl_task(run.spec)
        info = infos.get(int(run.run_id), TaskInfo())
        own = [m.name for m in info.metrics if metric_task(m.name, info) == k]
        if k is None or not own:
            continue
        rows = metrics[metrics["run_id"] == run.run_id]
        selection = TaskInfo(info.metrics, info.eval_splits, own[0], task_names=info.task_names)
        step, split = evaluation_point(rows, selection)
        at = rows[(rows["step"] == step) & (rows["split"] == split) & rows["name"].isin(own)]
        parts.append(at.assign(task_label=run.task_label)[["task_label", "name", "value"]])
    if not parts:
        return pd.DataFrame(columns=["task_label", "name", "mean"])
    stitched = pd.concat(parts).groupby(["task_label", "name"], sort=False)["value"].mean()
    return stitched.rename("mean").reset_index()


def reference_means(summary: pd.DataFrame, baseline: str, stl: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per task label, the reference of Δm% and Δp (``task_label``, ``name``, ``mean``, ``reference``):
    the single-task values (:func:`stl_reference`) where the label has any, else the ``baseline``
    method's means."""
    base = summary[summary["method_label"] == baseline][["task_label", "name", "mean"]]
    base = base.assign(reference=baseline)
    if stl is None or stl.empty:
        return base
    stl = stl.assign(reference=STL)
    return pd.concat([base[~base["task_label"].isin(stl["task_label"])], stl], ignore_index=True)


def deltas(
    summary: pd.DataFrame, reference: pd.DataFrame, tasks: Mapping[str, Mapping[str, int]] | None = None
) -> pd.DataFrame:
    """Per task label and method, Δm% (:func:`benchmark.stats.delta_m`) and Δp
    (:func:`benchmark.stats.delta_p`, metrics grouped by ``tasks[task_label]``) against ``reference``
    (:func:`reference_means`), over the declared metrics the reference has; lower is better.

    Defined only where the method has every one of them and every reference value is positive (a
    relative change of a negative or zero value means nothing, as for the toys' losses).
    """
    scored = summary[summary["higher_is_better"].notna()]
    rows = []
    for label, table in scored.groupby("task_label", sort=False):
        ref = reference[reference["task_label"] == label].set_index("name")
        ref = ref[ref.index.isin(table["name"])]
        if ref.empty or not (ref["mean"] > 0).all():
            continue
        for method, part in table.groupby("method_label", sort=False):
            part = part.set_index("name")
            if not set(ref.index) <= set(part.index):
                continue
            part = part.loc[ref.index]
            changes = stats.relative_changes(part["mean"], ref["mean"], part["higher_is_better"])
            grouping = (tasks or {}).get(label, {})
            kind = str(ref["reference"].iloc[0])
            rows.append((label, method, stats.delta_m(changes), stats.delta_p(changes, grouping), kind))
    return pd.DataFrame(rows, columns=[*GROUP, "delta_m", "delta_p", "reference"])


def delta_m(summary: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """:func:`deltas` against the ``baseline`` method label (Maninis et al. 2019; the form of Navon et
    al. 2022): ``100/K Σₖ (−1)^{hₖ} (M_m,k − M_b,k) / M_b,k`` over the K declared metrics, hₖ = 1 where
    higher is better, so lower is better and the baseline scores 0; Δp with each metric its own task."""
    return deltas(summary, reference_means(summary, baseline))


def pair_keys(runs: pd.DataFrame) -> pd.Series:
    """``run_id`` -> what pairs two runs of different methods: the seed and the task instance."""
    keys = [
        f"{seed} {json.dumps(spec['task'].get('params', {}), sort_keys=True, default=str)}"
        for seed, spec in zip(runs["seed"], runs["spec"], strict=True)
    ]
    return pd.Series(keys, index=runs["run_id"].astype(int), dtype=object)


def samples(values: pd.DataFrame, label: str, method: str, name: str) -> pd.Series:
    """One ``ok`` run's value per pairing key (``values["pair"]``) of a label pair and metric."""
    rows = values[
        (values["task_label"] == label) & (values["method_label"] == method) & (values["name"] == name)
    ]
    rows = rows[rows["status"] == "ok"]
    return pd.Series(rows["value"].to_numpy(float), index=rows["pair"].to_numpy())


def _tests(
    values: pd.DataFrame, label: str, name: str, higher: bool, pairs: Sequence[tuple[str, str]]
) -> pd.DataFrame:
    """:func:`benchmark.stats.compare` of each ``(method, reference)`` pair of one table and metric,
    Holm-adjusted across the pairs (``p_holm``)."""
    rows = []
    for method, reference in pairs:
        test = stats.compare(
            samples(values, label, method, name), samples(values, label, reference, name), higher
        )
        rows.append((label, method, reference, name, *asdict(test).values()))
    table = pd.DataFrame(rows, columns=[*TESTED, *TEST_COLUMNS])
    return table.assign(p_holm=stats.holm(table["p"].to_numpy(float)))


def _declared(summary: pd.DataFrame) -> list[tuple[str, str, bool, list[str]]]:
    """``(task label, metric, higher is better, methods)`` for every declared metric of every table."""
    scored = summary[summary["higher_is_better"].notna()]
    return [
        (str(label), str(name), bool(part["higher_is_better"].iloc[0]), list(part["method_label"]))
        for (label, name), part in scored.groupby(["task_label", "name"], sort=False)
    ]


def significance(values: pd.DataFrame, summary: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Every method against ``baseline`` on every declared metric (:func:`benchmark.stats.compare`),
    Holm-adjusted across the methods of a table per metric (``p_holm``)."""
    parts = [
        _tests(values, label, name, higher, [(m, baseline) for m in methods if m != baseline])
        for label, name, higher, methods in _declared(summary)
        if baseline in methods and len(methods) > 1
    ]
    empty = pd.DataFrame(columns=[*TESTED, *TEST_COLUMNS, "p_holm"])
    return pd.concat(parts, ignore_index=True) if parts else empty


def near_best(values: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per table and declared metric, every method tested against the best mean's (``reference``),
    Holm-adjusted; ``near`` is true where the difference is not significant (a method without a
    p-value, e.g. with one run, is not marked)."""
    parts = []
    for label, name, higher, methods in _declared(summary):
        part = summary[(summary["task_label"] == label) & (summary["name"] == name)]
        means = part.set_index("method_label")["mean"]
        best = means.idxmax() if higher else means.idxmin()
        table = _tests(values, label, name, higher, [(m, best) for m in methods if m != best])
        parts.append(table.assign(near=table["p_holm"] >= stats.ALPHA))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*TESTED, "near"])


def evaluate_claims(values: pd.DataFrame, summary: pd.DataFrame, claims: Sequence[Claim]) -> pd.DataFrame:
    """Each claim on each task label it concerns: one row per method it is compared with (``than``:
    the ``reference`` column), the effect of ``better`` over it with its interval, the p-values (Holm
    across the claim's comparisons) and the claim's :func:`benchmark.stats.verdict` (one per claim
    and label; ``note`` says when a method of the claim has no runs there)."""
    parts = []
    for i, claim in enumerate(claims):
        for label, name, higher, methods in _declared(summary):
            if name != claim.metric or claim.task not in (None, label):
                continue
            others = [m for m in methods if m != claim.better and stl_label(m) is None]
            than = others if claim.than == ALL else list(claim.than)
            if claim.better not in methods or not set(than) <= set(methods) or not than:
                parts.append(pd.DataFrame([(i, claim.text, label, stats.INCONCLUSIVE, "no runs")],
                                          columns=["claim", "text", "task_label", "verdict", "note"]))
                continue
            table = _tests(values, label, name, higher, [(claim.better, other) for other in than])
            comparisons = [stats.Comparison(*row) for row in table[TEST_COLUMNS].itertuples(index=False)]
            verdict = stats.verdict(comparisons, list(table["p_holm"]))
            parts.append(table.assign(claim=i, text=claim.text, verdict=verdict, note=""))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["claim", "verdict"])


def stl_label(method_label: str) -> int | None:
    """The loss of a single-task run label ``stl(task=k)``; ``None`` for any other label."""
    match = re.fullmatch(r"stl\(task=(\d+)\)", method_label)
    return int(match[1]) if match else None


def status_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """Number of runs per task and method label (rows, in run order) and status (columns)."""
    counts = runs.groupby(GROUP, sort=False)["status"].value_counts().unstack(fill_value=0)
    return counts.reindex(columns=list(STATUSES), fill_value=0)


def front_counts(values: pd.DataFrame) -> pd.DataFrame:
    """Per label pair, how many ``ok`` runs log ``on_front`` and how many of them are on the front.

    Read at the evaluation point: the end of training for tasks without a validation split.
    """
    logged = values[(values["status"] == "ok") & (values["name"] == ON_FRONT)]
    on_front = (logged["value"] >= 0.5).groupby([logged[c] for c in GROUP], sort=False)
    return pd.DataFrame({"on_front": on_front.sum(), "runs": on_front.size()}).reset_index()


def trajectories(metrics: pd.DataFrame, names: tuple[str, str], split: str) -> dict[str, list[np.ndarray]]:
    """Per method label, each run's path ``[steps, 2]`` through the two ``names`` on ``split``, by step."""
    rows = metrics[(metrics["split"] == split) & metrics["name"].isin(names)]
    paths: dict[str, list[np.ndarray]] = {}
    for (method, _), run in rows.groupby(["method_label", "run_id"], sort=False):
        wide = run.groupby(["step", "name"])["value"].last().unstack().reindex(columns=list(names))
        paths.setdefault(str(method), []).append(wide.to_numpy(dtype=float))
    return paths


def step_times(timings: pd.DataFrame, name: str = "step_ms_mean") -> pd.DataFrame:
    """Mean, std and count of the timing ``name`` over the ``ok`` runs per task and method label."""
    rows = timings[(timings["status"] == "ok") & (timings["name"] == name)]
    return rows.groupby(GROUP, sort=False)["value"].agg(["mean", "std", "count"]).reset_index()


def evaluate(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    infos: Mapping[int, TaskInfo] | None = None,
    settings: ReportSettings | None = None,
) -> Evaluation:
    """Evaluate a suite from the store's ``runs`` and ``metrics`` frames (``infos`` default: the
    registry; ``settings``: the suite's baseline, claims and published numbers)."""
    settings = settings or ReportSettings()
    infos = run_infos(runs) if infos is None else dict(infos)
    values = evaluated_values(metrics, infos)
    values = values.assign(pair=values["run_id"].map(pair_keys(runs)))
    kept, values, tuning = select_tuned(runs, values)
    summary = aggregate(values)
    first_info = {
        str(label): infos.get(int(run_id), TaskInfo())
        for label, run_id in zip(kept["task_label"], kept["run_id"], strict=True)
    }
    grouping = {label: metric_tasks(info) for label, info in first_info.items()}
    reference = reference_means(summary, settings.baseline, stl_reference(runs, metrics, infos))
    return Evaluation(
        kept, infos, values, summary, ranks(summary), status_counts(kept),
        deltas(summary, reference, grouping), tuning,
        significance(values, summary, settings.baseline), near_best(values, summary),
        evaluate_claims(values, summary, settings.claims), settings, runs,
    )
