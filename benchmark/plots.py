"""PNG plots for the report: metrics with 95 % intervals, validation curves, trajectories over a toy
landscape and final points in loss space, gradient-conflict diagnostics, step times, per-attribute
values of many-task problems.

Figures are built with :class:`matplotlib.figure.Figure` and rendered by Agg, never through pyplot:
no window, no global figure state, nothing to close. The same input gives the same PNG bytes. Panels
have a fixed size and wrap into rows (at most ``MAX_COLS`` per row), so that a figure is at most
about 1,000 pixels wide and its labels stay readable in the HTML report.

Intervals are Student-t 95 % confidence intervals of a mean, ``mean ± t₀.₉₇₅,ₙ₋₁ · s / √n``
(:func:`t_interval`), clipped to a metric's declared range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats

from benchmark.task import Landscape

GRID = 200
LEVELS = 25
DPI = 100
MAX_COLS = 3
PANEL = (3.2, 2.6)
"""Width and height (inches) of one panel; at ``DPI`` three panels make about 1,000 pixels."""
Range = tuple[float | None, float | None]


@contextmanager
def _style() -> Iterator[None]:
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
        yield


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def _grid(count: int, max_cols: int) -> tuple[int, int]:
    cols = min(max_cols, count)
    return math.ceil(count / cols), cols


def _palette(names: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """A distinct colour per name: the colour-blind palette up to 10 names, evenly spaced hues beyond
    (a cycling palette would give two of 15 runs one colour)."""
    colors = sns.color_palette("colorblind" if len(names) <= 10 else "husl", len(names))
    return dict(zip(names, colors, strict=True))


def t_interval(mean: float, std: float, count: int, limits: Range = (None, None)) -> tuple[float, float]:
    """The 95 % Student-t interval of a mean over ``count`` values, clipped to ``limits``; the mean
    itself (no width) for a single value or an unknown spread."""
    if count < 2 or pd.isna(std):
        low, high = mean, mean
    else:
        half = float(stats.t.ppf(0.975, count - 1)) * std / math.sqrt(count)
        low, high = mean - half, mean + half
    lo, hi = limits
    return (low if lo is None else max(low, lo)), (high if hi is None else min(high, hi))


def _bars(ax: Axes, rows: pd.DataFrame, colors: Mapping[str, tuple[float, float, float]]) -> None:
    """Horizontal bars ``mean ± std`` per ``method_label``, first method on top."""
    y = np.arange(len(rows))
    colors_in_order = [colors[m] for m in rows["method_label"]]
    ax.barh(y, rows["mean"], xerr=rows["std"].fillna(0.0), color=colors_in_order, capsize=3)
    ax.set_yticks(y, rows["method_label"])
    ax.invert_yaxis()


def _points(
    ax: Axes,
    rows: pd.DataFrame,
    methods: Sequence[str],
    colors: Mapping[str, tuple[float, float, float]],
    limits: Range,
) -> None:
    """The mean per method (one row each, ``methods`` top to bottom) as a dot with its 95 % interval;
    the axis is fitted to the values (bars from zero would hide differences of a fraction of a percent)."""
    by_method = rows.set_index("method_label")
    for i, method in enumerate(methods):
        if method not in by_method.index:
            continue
        row = by_method.loc[method]
        low, high = t_interval(row["mean"], row["std"], int(row["count"]), limits)
        err = [[row["mean"] - low], [high - row["mean"]]]
        ax.errorbar(row["mean"], i, xerr=err, fmt="o", color=colors[method], capsize=3)
    ax.set_yticks(np.arange(len(methods)), methods)
    ax.set_ylim(len(methods) - 0.5, -0.5)
    ax.margins(x=0.15)


def metric_points(
    summary: pd.DataFrame, title: str, path: Path, ranges: Mapping[str, Range] | None = None
) -> Path:
    """One panel per metric of one task, wrapped ``MAX_COLS`` to a row; ``summary`` rows:
    method_label, name, mean, std, count, higher_is_better; ``ranges``: metric -> (low, high)."""
    names = list(dict.fromkeys(summary["name"]))
    methods = list(dict.fromkeys(summary["method_label"]))
    colors = _palette(methods)
    nrows, ncols = _grid(len(names), MAX_COLS)
    height = 0.25 * len(methods) + 0.9
    with _style():
        fig = Figure(figsize=(PANEL[0] * ncols + 1.2, height * nrows + 0.4), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
        for ax, name in zip(axes, names, strict=False):
            rows = summary[summary["name"] == name]
            _points(ax, rows, methods, colors, (ranges or {}).get(name, (None, None)))
            ax.set_title(f"{name}{_arrow(rows['higher_is_better'].iloc[0])}")
        for ax in axes[len(names) :]:
            ax.set_visible(False)
        fig.suptitle(f"{title}: mean and 95 % t-interval")
        return _save(fig, path)


def _arrow(higher_is_better: object) -> str:
    return "" if pd.isna(higher_is_better) else (" ↑" if higher_is_better else " ↓")


def validation_curves(
    curves: pd.DataFrame, metric: str, higher_is_better: object, title: str, path: Path
) -> Path:
    """``metric`` over steps per method: the mean over runs with its 95 % t-interval as a band;
    ``curves`` rows: method_label, run_id, step, value."""
    methods = list(dict.fromkeys(curves["method_label"]))
    colors = _palette(methods)
    with _style():
        fig = Figure(figsize=(PANEL[0] * 2, PANEL[1] * 1.3), layout="constrained")
        ax = fig.subplots()
        for method in methods:
            rows = curves[curves["method_label"] == method]
            per_step = rows.groupby("step")["value"].agg(["mean", "std", "count"])
            bands = [t_interval(m, s, int(n)) for m, s, n in per_step.itertuples(index=False)]
            ax.plot(per_step.index, per_step["mean"], color=colors[method], label=method, linewidth=1.3)
            ax.fill_between(per_step.index, *zip(*bands, strict=True), color=colors[method], alpha=0.2)
        ax.set(xlabel="step", ylabel=f"{metric}{_arrow(higher_is_better)}", title=title)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)
        return _save(fig, path)


def step_time_bars(times: pd.DataFrame, title: str, path: Path, baseline: str | None = None) -> Path:
    """Time per training step per method (``times`` rows: method_label, mean, std): in milliseconds,
    or, when the ``baseline`` method label is among them, as a multiple of its mean (1 = as fast)."""
    colors = _palette(list(times["method_label"]))
    base = times.loc[times["method_label"] == baseline, "mean"]
    if len(base) and float(base.iloc[0]) > 0:
        scale, unit = float(base.iloc[0]), f"step time / {baseline}'s"
        times = times.assign(mean=times["mean"] / scale, std=times["std"] / scale)
    else:
        unit = "ms per step"
    with _style():
        fig = Figure(figsize=(5.0, 0.28 * len(times) + 1.4), layout="constrained")
        ax = fig.subplots()
        _bars(ax, times, colors)
        if unit != "ms per step":
            ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xlabel(unit)
        ax.set_title(title)
        return _save(fig, path)


def _summed_loss(landscape: Landscape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sum of the task losses on a ``GRID`` × ``GRID`` mesh over ``landscape.bounds``."""
    x1_min, x1_max, x2_min, x2_max = landscape.bounds
    x1, x2 = np.meshgrid(np.linspace(x1_min, x1_max, GRID), np.linspace(x2_min, x2_max, GRID))
    points = torch.as_tensor(np.stack([x1.ravel(), x2.ravel()], axis=1), dtype=torch.float64)
    with torch.no_grad():
        total = landscape.losses(points).sum(dim=1)
    return x1, x2, total.double().numpy().reshape(x1.shape)


def _landscape_panel(
    ax: Axes,
    landscape: Landscape,
    mesh: tuple[np.ndarray, ...],
    runs: Mapping[str, np.ndarray],
    colors: Mapping[str, tuple[float, float, float]],
    title: str,
) -> None:
    """Summed-loss contours, the Pareto set, and each run's path from start (o) to end (*), coloured
    by its run label.

    Contour levels are quantiles of the loss, so that regions of very different scale both show.
    """
    levels = np.unique(np.quantile(mesh[2], np.linspace(0.0, 1.0, LEVELS)))
    ax.contourf(*mesh, levels=levels, cmap="Greys_r")
    ax.contour(*mesh, levels=levels, colors="white", linewidths=0.3)
    front = landscape.pareto_set.detach().cpu().double().numpy()
    ax.plot(front[:, 0], front[:, 1], ".", color="black", markersize=1.5)
    for label, run in runs.items():
        ax.plot(run[:, 0], run[:, 1], color=colors[label], linewidth=1.5)
        ax.plot(*run[0], "o", color=colors[label], markeredgecolor="black", markersize=6)
        ax.plot(*run[-1], "*", color=colors[label], markeredgecolor="black", markersize=11)
    x1_min, x1_max, x2_min, x2_max = landscape.bounds
    ax.set(xlim=(x1_min, x1_max), ylim=(x2_min, x2_max), title=title)
    ax.set_aspect("equal", adjustable="box")
    ax.grid(False)


def _run_legend(fig: Figure, colors: Mapping[str, tuple[float, float, float]]) -> None:
    handles = [
        Line2D([], [], color=c, marker="o", markeredgecolor="black", label=k) for k, c in colors.items()
    ]
    fig.legend(handles=handles, loc="outside right center", title="run", fontsize="small", frameon=False)


def landscape_trajectories(
    landscape: Landscape, paths: Mapping[str, Mapping[str, np.ndarray]], title: str, path: Path
) -> Path:
    """One panel per method: its runs' ``paths`` (run label -> ``[steps, 2]``) over the summed-loss
    contours; a run label (a start, a seed) has one colour in every panel, named in the legend."""
    mesh = _summed_loss(landscape)
    panels = list(paths.items()) or [("no runs", {})]
    colors = _palette(list(dict.fromkeys(label for runs in paths.values() for label in runs)))
    nrows, ncols = _grid(len(panels), MAX_COLS)
    with _style():
        fig = Figure(figsize=(PANEL[0] * ncols + 1.4, PANEL[0] * nrows + 0.4), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
        for ax, (method, runs) in zip(axes, panels, strict=False):
            _landscape_panel(ax, landscape, mesh, runs, colors, method)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        if colors:
            _run_legend(fig, colors)
        names = landscape.trajectory
        fig.supxlabel(names[0])
        fig.supylabel(names[1])
        fig.suptitle(f"{title}: contours of the summed loss, Pareto set (black), start o, end *")
        return _save(fig, path)


def hypervolume_2d(points: np.ndarray, reference: np.ndarray) -> float:
    """The area dominated by ``points`` ``[n, 2]`` (minimisation) and bounded by ``reference``: a sweep
    over the points sorted by the first loss (Zitzler & Thiele 1999, the S metric in two dimensions)."""
    inside = points[(points < reference).all(axis=1)]
    area, best = 0.0, float(reference[1])
    for f1, f2 in inside[np.argsort(inside[:, 0], kind="stable")]:
        if f2 < best:
            area += (reference[0] - f1) * (best - f2)
            best = float(f2)
    return area


def loss_space(
    front: np.ndarray, finals: Mapping[str, np.ndarray], names: tuple[str, str], title: str, path: Path
) -> Path:
    """Each method's final points ``[runs, 2]`` in the space of the two losses, over the Pareto front
    ``[n, 2]``; the legend gives each method's hypervolume as a share of the front's, both against the
    reference point 10 % beyond the worst value seen on each axis."""
    seen = np.concatenate([front, *finals.values()])
    reference = seen.max(axis=0) + 0.1 * np.ptp(seen, axis=0)
    whole = hypervolume_2d(front, reference)
    order = np.argsort(front[:, 0])
    with _style():
        fig = Figure(figsize=(PANEL[0] * 2, PANEL[1] * 1.6), layout="constrained")
        ax = fig.subplots()
        ax.plot(front[order, 0], front[order, 1], color="black", linewidth=1.0, label="Pareto front")
        _final_points(ax, finals, lambda p: hypervolume_2d(p, reference) / whole if whole > 0 else math.nan)
        ax.set(xlabel=names[0], ylabel=names[1], title=f"{title}: final points in loss space")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)
        return _save(fig, path)


def _final_points(ax: Axes, finals: Mapping[str, np.ndarray], share: Callable[[np.ndarray], float]) -> None:
    """Each method's points ``[runs, 2]``, labelled with the hypervolume ``share`` of its points."""
    colors = _palette(list(finals))
    for method, points in finals.items():
        label = f"{method} (HV {share(points):.2f})"
        ax.scatter(points[:, 0], points[:, 1], color=colors[method], edgecolor="black", s=30, label=label)


def loss_box(finals: Mapping[str, np.ndarray], names: tuple[str, str], title: str, path: Path) -> Path:
    """Each method's final points ``[runs, 2]`` as losses divided by the task's reference point, so
    that the reference box is the unit square whatever each run's reference; the legend gives each
    method's hypervolume (:func:`hypervolume_2d` against (1, 1)): the share of the box its points
    dominate, for one point the one-point hypervolume Πᵢ(1 − Lᵢ/rᵢ)₊. No Pareto front: drawing it
    needs the task built."""
    with _style():
        fig = Figure(figsize=(PANEL[0] * 2, PANEL[1] * 1.6), layout="constrained")
        ax = fig.subplots()
        ax.plot([0, 1, 1], [1, 1, 0], color="black", linestyle="--", linewidth=1.0, label="reference box")
        _final_points(ax, finals, lambda p: hypervolume_2d(p, np.ones(2)))
        ax.set_xlim(left=0.0)
        ax.set_ylim(bottom=0.0)
        ax.set(
            xlabel=f"{names[0]} / reference",
            ylabel=f"{names[1]} / reference",
            title=f"{title}: final losses ÷ reference point (Pareto front not drawn)",
        )
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)
        return _save(fig, path)


def sorted_attributes(values: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """``values`` (rows: method_label, attribute, mean) as attributes × methods, the attributes in
    ascending order of the ``baseline`` method's value when it is among the methods, else of the mean
    over methods (ties keep their order)."""
    wide = values.pivot_table(index="attribute", columns="method_label", values="mean", sort=False)
    key = wide[baseline] if baseline in wide.columns else wide.mean(axis=1)
    return wide.loc[key.sort_values(kind="stable").index, list(dict.fromkeys(values["method_label"]))]


def attribute_points(
    values: pd.DataFrame, metric: str, title: str, path: Path, baseline: str | None = None
) -> Path:
    """Per attribute, each method's value of ``metric`` (``values`` rows: method_label, attribute,
    mean) as points joined by thin lines, sorted by :func:`sorted_attributes`. A fixed size: 40
    attributes fit with their labels turned upright."""
    wide = sorted_attributes(values, baseline)
    methods = list(wide.columns)
    colors = _palette(methods)
    x = np.arange(len(wide))
    with _style():
        fig = Figure(figsize=(10.0, 4.2), layout="constrained")
        ax = fig.subplots()
        for method in methods:
            line = {"marker": "o", "markersize": 4, "linewidth": 0.6, "color": colors[method]}
            ax.plot(x, wide[method], label=method, **line)
        ax.set_xticks(x, wide.index, rotation=90, fontsize="x-small")
        ax.set_xlim(-0.5, len(wide) - 0.5)
        order = f"{baseline}'s value" if baseline in methods else "the mean over methods"
        ax.set(ylabel=metric, title=f"{title}: {metric} per attribute, sorted by {order}")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)
        return _save(fig, path)


def conflict_heatmaps(
    matrices: Mapping[str, np.ndarray], task_names: Sequence[str], title: str, path: Path
) -> Path:
    """Per method, the mean pairwise cosine ``[T, T]`` of the task gradients (diagonal 1), red where
    gradients conflict (cos < 0), on one colour scale from −1 to 1."""
    panels = list(matrices.items())
    nrows, ncols = _grid(len(panels), MAX_COLS)
    annotate = len(task_names) <= 6
    with _style():
        fig = Figure(figsize=(PANEL[0] * ncols + 0.8, PANEL[0] * nrows + 0.4), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, (method, matrix) in zip(axes, panels, strict=False):
            sns.heatmap(
                matrix,
                ax=ax,
                vmin=-1,
                vmax=1,
                cmap="RdBu",
                center=0,
                square=True,
                cbar=False,
                annot=annotate,
                fmt=".2f",
                xticklabels=task_names,
                yticklabels=task_names,
            )
            ax.set_title(method)
            ax.tick_params(labelsize="x-small")
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        fig.colorbar(axes[0].collections[0], ax=axes[: len(panels)].tolist(), shrink=0.6, label="cosine")
        fig.suptitle(f"{title}: mean cosine between task gradients")
        return _save(fig, path)


def conflict_trajectories(diagnostics: pd.DataFrame, title: str, path: Path) -> Path:
    """``cos_mean`` and ``conflict_share`` over steps per method, the mean over runs with its 95 %
    t-interval as a band; ``diagnostics`` rows: method_label, run_id, step, name, value."""
    methods = list(dict.fromkeys(diagnostics["method_label"]))
    colors = _palette(methods)
    panels = (
        ("cos_mean", "mean cosine", (-1.0, 1.0)),
        ("conflict_share", "share of conflicting pairs", (0.0, 1.0)),
    )
    with _style():
        fig = Figure(figsize=(PANEL[0] * 2 + 1.4, PANEL[1]), layout="constrained")
        axes = fig.subplots(1, 2, sharex=True)
        for ax, (name, label, limits) in zip(axes, panels, strict=True):
            for method in methods:
                rows = diagnostics[(diagnostics["method_label"] == method) & (diagnostics["name"] == name)]
                per_step = rows.groupby("step")["value"].agg(["mean", "std", "count"])
                bands = [t_interval(m, s, int(n), limits) for m, s, n in per_step.itertuples(index=False)]
                ax.plot(per_step.index, per_step["mean"], color=colors[method], label=method, linewidth=1.2)
                if bands:
                    ax.fill_between(
                        per_step.index, *zip(*bands, strict=True), color=colors[method], alpha=0.2
                    )
            ax.set(xlabel="step", title=label)
        axes[1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)
        fig.suptitle(f"{title}: gradient conflict during training")
        return _save(fig, path)
