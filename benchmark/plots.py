"""PNG plots for the report: metrics with error bars, trajectories over a toy landscape, step times.

Figures are built with :class:`matplotlib.figure.Figure` and rendered by Agg, never through pyplot:
no window, no global figure state, nothing to close. The same input gives the same PNG bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from benchmark.task import Landscape

GRID = 200
LEVELS = 25
DPI = 100


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


def _palette(methods: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    return dict(zip(methods, sns.color_palette("colorblind", len(methods)), strict=True))


def _bars(ax: Axes, rows: pd.DataFrame, colors: Mapping[str, tuple[float, float, float]]) -> None:
    """Horizontal bars ``mean ± std`` per ``method_label``, first method on top."""
    y = np.arange(len(rows))
    colors_in_order = [colors[m] for m in rows["method_label"]]
    ax.barh(y, rows["mean"], xerr=rows["std"].fillna(0.0), color=colors_in_order, capsize=3)
    ax.set_yticks(y, rows["method_label"])
    ax.invert_yaxis()


def _points(ax: Axes, rows: pd.DataFrame, colors: Mapping[str, tuple[float, float, float]]) -> None:
    """``mean ± std`` per ``method_label`` as a dot with error bars, first method on top; the axis is
    fitted to the values (bars from zero would hide differences of a fraction of a percent)."""
    y = np.arange(len(rows))
    for i, row in enumerate(rows.itertuples()):
        std = 0.0 if pd.isna(row.std) else row.std
        ax.errorbar(row.mean, i, xerr=std, fmt="o", color=colors[row.method_label], capsize=3)
    ax.set_yticks(y, rows["method_label"])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.margins(x=0.15)


def metric_points(summary: pd.DataFrame, title: str, path: Path) -> Path:
    """One panel per metric of one task; ``summary`` rows: method_label, name, mean, std, higher_is_better."""
    names = list(dict.fromkeys(summary["name"]))
    colors = _palette(list(dict.fromkeys(summary["method_label"])))
    n_methods = summary["method_label"].nunique()
    nrows, ncols = _grid(len(names), 4)
    with _style():
        fig = Figure(figsize=(3.4 * ncols, (0.28 * n_methods + 1.2) * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, name in zip(axes, names, strict=False):
            rows = summary[summary["name"] == name]
            better = rows["higher_is_better"].iloc[0]
            arrow = "" if pd.isna(better) else (" ↑" if better else " ↓")
            _points(ax, rows, colors)
            ax.set_title(f"{name}{arrow}")
        for ax in axes[len(names) :]:
            ax.set_visible(False)
        fig.suptitle(title)
        return _save(fig, path)


def step_time_bars(times: pd.DataFrame, title: str, path: Path) -> Path:
    """Milliseconds per training step per method (``times`` rows: method_label, mean, std)."""
    colors = _palette(list(times["method_label"]))
    with _style():
        fig = Figure(figsize=(5.0, 0.28 * len(times) + 1.4), layout="constrained")
        ax = fig.subplots()
        _bars(ax, times, colors)
        ax.set_xlabel("ms per step")
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
    ax: Axes, landscape: Landscape, mesh: tuple[np.ndarray, ...], runs: Sequence[np.ndarray], title: str
) -> None:
    """Summed-loss contours, the Pareto set, and each run's path from start (o) to end (*).

    Contour levels are quantiles of the loss, so that regions of very different scale both show.
    """
    levels = np.unique(np.quantile(mesh[2], np.linspace(0.0, 1.0, LEVELS)))
    ax.contourf(*mesh, levels=levels, cmap="Blues_r")
    ax.contour(*mesh, levels=levels, colors="white", linewidths=0.3)
    front = landscape.pareto_set.detach().cpu().double().numpy()
    ax.plot(front[:, 0], front[:, 1], ".", color="black", markersize=1.5)
    for color, run in zip(sns.color_palette("bright", len(runs)), runs, strict=True):
        ax.plot(run[:, 0], run[:, 1], color=color, linewidth=1.5)
        ax.plot(*run[0], "o", color=color, markeredgecolor="black", markersize=6)
        ax.plot(*run[-1], "*", color=color, markeredgecolor="black", markersize=11)
    x1_min, x1_max, x2_min, x2_max = landscape.bounds
    ax.set(xlim=(x1_min, x1_max), ylim=(x2_min, x2_max), title=title)
    ax.set_aspect("equal", adjustable="box")
    ax.grid(False)


def landscape_trajectories(
    landscape: Landscape, paths: Mapping[str, Sequence[np.ndarray]], title: str, path: Path
) -> Path:
    """One panel per method: its runs' ``paths`` (``[steps, 2]`` each) over the summed-loss contours."""
    mesh = _summed_loss(landscape)
    panels = list(paths.items()) or [("no runs", [])]
    nrows, ncols = _grid(len(panels), 3)
    with _style():
        fig = Figure(figsize=(3.6 * ncols, 3.4 * nrows + 0.4), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
        for ax, (method, runs) in zip(axes, panels, strict=False):
            _landscape_panel(ax, landscape, mesh, runs, method)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        names = landscape.trajectory
        fig.supxlabel(names[0])
        fig.supylabel(names[1])
        fig.suptitle(f"{title}: contours of the summed loss, Pareto set (black), start o, end *")
        return _save(fig, path)
