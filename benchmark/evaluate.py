"""From the store's frames to results: each run's evaluation step, aggregates over seeds, ranks.

Model selection is honest (DESIGN.md §6): when a task evaluates on ``"val"``, each run is read at the
step with the best validation score and reported on ``"test"`` there; a task without a validation split
is read at the last step of its first evaluation split. Runs whose status is not ``ok`` are left out of
the aggregates, and counted by :func:`status_counts`.

Everything works on the frames of :class:`benchmark.store.ResultsStore` alone, so it is testable
without models: each run carries its task's metric declarations (``runs.info``). Only runs stored by
a version-1 store lack them; :func:`run_infos` then builds their task once to learn them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from benchmark.registry import TASKS
from benchmark.specs import STATUSES, TaskInfo
from benchmark.task import Task

logger = logging.getLogger(__name__)

GROUP = ["task_label", "method_label"]
ON_FRONT = "on_front"
BASELINE = "ew"


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
        delta_m: :func:`delta_m` of ``summary`` against equal weighting.
        counts: :func:`status_counts` of ``runs``.
    """

    runs: pd.DataFrame
    infos: dict[int, TaskInfo]
    values: pd.DataFrame
    summary: pd.DataFrame
    ranks: pd.DataFrame
    counts: pd.DataFrame
    delta_m: pd.DataFrame


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


def evaluated_values(metrics: pd.DataFrame, infos: Mapping[int, TaskInfo]) -> pd.DataFrame:
    """Per run, every value logged at its :func:`evaluation_point`, declared metrics first.

    Adds a nullable boolean ``higher_is_better`` column (NA for values that are not declared metrics).
    """
    parts = []
    for run_id, rows in metrics.groupby("run_id", sort=False):
        info = infos.get(int(run_id), TaskInfo())
        step, split = evaluation_point(rows, info)
        part = rows[(rows["step"] == step) & (rows["split"] == split)]
        order = {name: i for i, name in enumerate(info.directions)}
        part = part.sort_values("name", key=lambda n: n.map(order).fillna(len(order)), kind="stable")
        parts.append(part.assign(higher_is_better=part["name"].map(info.directions)))
    if not parts:
        return metrics.assign(higher_is_better=pd.Series(dtype="boolean"))
    values = pd.concat(parts, ignore_index=True)
    return values.astype({"higher_is_better": "boolean"})


def aggregate(values: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for one run) and count of each value over the ``ok`` runs per label pair.

    Runs sharing a task label and a method label are pooled: seeds, and e.g. the starting points of a
    toy task. Rows keep the order of first appearance.
    """
    ok = values[values["status"] == "ok"]
    grouped = ok.groupby([*GROUP, "name"], sort=False)
    summary = grouped["value"].agg(["mean", "std", "count"])
    summary["higher_is_better"] = grouped["higher_is_better"].first()
    return summary.reset_index()


def ranks(summary: pd.DataFrame) -> pd.DataFrame:
    """Per task label, each method's rank (1 = best, ties averaged) averaged over the declared metrics."""
    scored = summary[summary["higher_is_better"].notna()]
    signed = scored["mean"] * np.where(scored["higher_is_better"].astype(bool), -1.0, 1.0)
    per_metric = signed.groupby([scored["task_label"], scored["name"]]).rank(method="average")
    mean_rank = per_metric.groupby([scored["task_label"], scored["method_label"]], sort=False).mean()
    return mean_rank.rename("rank").reset_index()


def delta_m(summary: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Per task label, each method's Δm% against the ``baseline`` method label (Maninis et al. 2019;
    the form of Navon et al. 2022): ``100/K Σₖ (−1)^{hₖ} (M_m,k − M_b,k) / M_b,k`` over the K declared
    metrics, hₖ = 1 where higher is better, so lower is better and the baseline scores 0.

    Defined only where the baseline is present and every declared metric's baseline mean is positive
    (a relative change of a negative or zero value means nothing, as for the toys' losses).
    """
    scored = summary[summary["higher_is_better"].notna()]
    rows = []
    for label, task in scored.groupby("task_label", sort=False):
        base = task[task["method_label"] == baseline].set_index("name")["mean"]
        if base.empty or not (base > 0).all():
            continue
        for method, part in task.groupby("method_label", sort=False):
            part = part.set_index("name")
            if set(part.index) != set(base.index):
                continue
            sign = np.where(part["higher_is_better"].astype(bool), -1.0, 1.0)
            change = sign * (part["mean"] - base[part.index]) / base[part.index]
            rows.append((label, method, 100.0 * float(change.mean())))
    return pd.DataFrame(rows, columns=[*GROUP, "delta_m"])


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
    runs: pd.DataFrame, metrics: pd.DataFrame, infos: Mapping[int, TaskInfo] | None = None
) -> Evaluation:
    """Evaluate a suite from the store's ``runs`` and ``metrics`` frames (``infos`` default: the registry)."""
    infos = run_infos(runs) if infos is None else dict(infos)
    values = evaluated_values(metrics, infos)
    summary = aggregate(values)
    return Evaluation(runs, infos, values, summary, ranks(summary), status_counts(runs), delta_m(summary))
