"""Plots: intervals and their clipping, hypervolume, distinct colours, and that every figure renders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from benchmark import plots


def test_t_interval_matches_scipy_and_is_clipped() -> None:
    values = [0.2, 0.4, 0.9]
    mean, std = float(np.mean(values)), float(np.std(values, ddof=1))
    expected = stats.t.interval(0.95, 2, loc=mean, scale=stats.sem(values))
    assert plots.t_interval(mean, std, 3) == pytest.approx(expected)
    low, high = plots.t_interval(mean, std, 3, (0.0, 1.0))
    assert expected[0] < 0 and low == 0.0 and high == 1.0  # an on_front-like share stays in [0, 1]
    assert plots.t_interval(0.5, math.nan, 1) == (0.5, 0.5)


def test_hypervolume_2d_by_hand() -> None:
    # points (1, 3), (2, 2), (3, 1) against (4, 4): 3·1 + 2·1 + 1·1 = 6; a dominated point adds nothing
    points = np.array([[2.0, 2.0], [1.0, 3.0], [3.0, 1.0], [3.0, 3.0]])
    assert plots.hypervolume_2d(points, np.array([4.0, 4.0])) == pytest.approx(6.0)
    assert plots.hypervolume_2d(np.array([[5.0, 0.0]]), np.array([4.0, 4.0])) == 0.0


def test_palette_gives_fifteen_runs_fifteen_colours() -> None:
    colours = plots._palette([f"run {i}" for i in range(15)])
    assert len(set(colours.values())) == 15


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_metric_strip_wraps_into_rows_of_fixed_width(tmp_path: Path) -> None:
    rows = [
        {
            "method_label": m,
            "name": f"metric{k}",
            "mean": 0.5,
            "std": 0.1,
            "count": 3,
            "higher_is_better": True,
        }
        for m in ("ew", "graddrop")
        for k in range(4)
    ]
    path = plots.metric_points(pd.DataFrame(rows), "task", tmp_path / "m.png", {"metric0": (0.0, 1.0)})
    width, height = _size(path)
    assert width <= 1100  # three panels a row: readable in a 1,100-pixel page without shrinking
    one_row = plots.metric_points(pd.DataFrame(rows[:3] + rows[4:7]), "task", tmp_path / "one.png")
    assert _size(one_row)[0] == width and height > _size(one_row)[1]  # the fourth panel wrapped


def test_every_plot_renders_a_non_blank_png(tmp_path: Path) -> None:
    curves = pd.DataFrame(
        [
            {"method_label": m, "run_id": r, "step": s, "value": s * 0.1 + r}
            for m in ("a", "b")
            for r in (1, 2)
            for s in (0, 10, 20)
        ]
    )
    diagnostics = pd.DataFrame(
        [
            {"method_label": m, "run_id": 1, "step": s, "name": n, "value": v}
            for m in ("a", "b")
            for s in (0, 10)
            for n, v in (("cos_mean", -0.2), ("conflict_share", 0.5))
        ]
    )
    front = np.stack([np.linspace(0, 1, 20), 1 - np.linspace(0, 1, 20)], axis=1)
    paths = [
        plots.validation_curves(curves, "acc", True, "t", tmp_path / "c.png"),
        plots.conflict_trajectories(diagnostics, "t", tmp_path / "d.png"),
        plots.conflict_heatmaps(
            {"a": np.array([[1.0, -0.5], [-0.5, 1.0]])}, ["x", "y"], "t", tmp_path / "h.png"
        ),
        plots.loss_space(front, {"a": np.array([[0.6, 0.6]])}, ("L1", "L2"), "t", tmp_path / "l.png"),
        plots.loss_box({"a": np.array([[0.2, 0.5], [1.2, 0.1]])}, ("L1", "L2"), "t", tmp_path / "b.png"),
        plots.step_time_bars(
            pd.DataFrame({"method_label": ["ew", "pcgrad"], "mean": [2.0, 5.0], "std": [0.1, 0.2]}),
            "t",
            tmp_path / "s.png",
            "ew",
        ),
    ]
    for path in paths:
        with Image.open(path) as image:
            assert len(np.unique(np.asarray(image.convert("L")))) > 10, path.name


def _attribute_values(methods: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"method_label": m, "attribute": f"attr{i}", "mean": v}
            for m, values in methods.items()
            for i, v in enumerate(values)
        ]
    )


def test_attributes_sort_by_the_baseline_else_by_the_mean_over_methods() -> None:
    values = _attribute_values({"pcgrad": [0.1, 0.9, 0.5], "ew": [0.3, 0.2, 0.1]})
    by_baseline = plots.sorted_attributes(values, "ew")
    assert list(by_baseline.index) == ["attr2", "attr1", "attr0"]
    assert list(by_baseline.columns) == ["pcgrad", "ew"]
    assert by_baseline.loc["attr1", "pcgrad"] == 0.9
    # without ew: means 0.2, 0.55, 0.3
    assert list(plots.sorted_attributes(values, "mgda").index) == ["attr0", "attr2", "attr1"]


def test_attribute_plot_has_a_fixed_size_for_forty_attributes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    many = _attribute_values({m: list(rng.uniform(0, 0.3, 40)) for m in ("ew", "graddrop", "mgda")})
    few = _attribute_values({"ew": [0.1, 0.2, 0.3, 0.4]})
    path = plots.attribute_points(many, "error", "celeba", tmp_path / "a.png", "ew")
    assert _size(path) == _size(plots.attribute_points(few, "error", "t", tmp_path / "b.png")) == (1000, 420)
    with Image.open(path) as image:
        assert len(np.unique(np.asarray(image.convert("L")))) > 10
