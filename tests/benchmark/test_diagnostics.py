"""Gradient-conflict diagnostics: hand-computed values, the trainer hook, the store and the suite key."""

from __future__ import annotations

import math
import sqlite3

import pytest
import torch

import tests.benchmark.linear_task
import tests.benchmark.noisy_task  # noqa: F401  (registers "_linear" and "_noisy")
from benchmark.config import ConfigError, parse_suite
from benchmark.diagnostics import gradient_diagnostics, pair_of
from benchmark.store import SCHEMA, ResultsStore
from benchmark.trainer import run


def test_two_gradients_match_hand_computed_values() -> None:
    # g1 = (1, 0), g2 = (-1, 1): cos = -1/sqrt(2); norms 1 and sqrt(2): GMS = 2 sqrt(2) / 3;
    # Gramian [[1, -1], [-1, 2]] has eigenvalues (3 ± sqrt(5)) / 2.
    values = gradient_diagnostics(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
    assert values["cos_0_1"] == pytest.approx(-1 / math.sqrt(2))
    assert values["cos_mean"] == pytest.approx(-1 / math.sqrt(2))
    assert values["conflict_share"] == 1.0
    assert values["gms_mean"] == pytest.approx(2 * math.sqrt(2) / 3)
    assert values["norm_ratio"] == pytest.approx(math.sqrt(2))
    assert values["gram_cond"] == pytest.approx((3 + math.sqrt(5)) / (3 - math.sqrt(5)))
    # scalar 0: sum 0 -> purity 1/2 (bin 5); scalar 1: sum 1 = |sum| -> purity ~1 (bin 9)
    shares = [values[f"purity_{k}"] for k in range(10)]
    assert shares == [0, 0, 0, 0, 0, 0.5, 0, 0, 0, 0.5]


def test_three_tasks_share_of_conflicting_pairs() -> None:
    # cos(g1, g2) = 0, cos(g1, g3) = cos(g2, g3) = -1/sqrt(2): two conflicting pairs of three
    values = gradient_diagnostics(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    assert values["conflict_share"] == pytest.approx(2 / 3)
    assert values["cos_mean"] == pytest.approx(-math.sqrt(2) / 3)
    assert {pair_of(n) for n in values if pair_of(n)} == {(0, 1), (0, 2), (1, 2)}
    assert values["gram_cond"] > 1e12  # three vectors in the plane: a singular Gramian


def test_purity_histogram_is_a_distribution_and_matches_graddrop_example() -> None:
    # as GradDrop's Fig. 1: gradients (3, -1) on one scalar give purity 0.75 (bin 7), (3, 1) give 1 (bin 9)
    values = gradient_diagnostics(torch.tensor([[3.0, 3.0], [-1.0, 1.0]]))
    assert values["purity_7"] == 0.5 and values["purity_9"] == 0.5
    grads = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
    shares = [gradient_diagnostics(grads)[f"purity_{k}"] for k in range(10)]
    assert sum(shares) == pytest.approx(1.0)


def test_zero_and_single_gradients_are_defined() -> None:
    values = gradient_diagnostics(torch.tensor([[0.0, 0.0], [1.0, 2.0]]))
    assert values["cos_0_1"] == 0.0 and values["gms_mean"] == 0.0 and values["norm_ratio"] == math.inf
    assert gradient_diagnostics(torch.zeros(2, 3))["gms_mean"] == 1.0
    assert "cos_mean" not in gradient_diagnostics(torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"shape \(0, 3\)"):
        gradient_diagnostics(torch.zeros(0, 3))


def test_scaling_a_gradient_changes_magnitudes_not_directions() -> None:
    grads = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    scaled = grads * torch.tensor([[10.0], [1.0], [1.0]])
    base, other = gradient_diagnostics(grads), gradient_diagnostics(scaled)
    assert other["cos_mean"] == pytest.approx(base["cos_mean"])
    assert other["gms_mean"] < base["gms_mean"]


def spec(method: str, every: int, level: str | None = None, task: str = "_noisy"):
    raw = {
        "diagnostics": {"every": every},
        "train": {"jacobian": "loop", **({"level": level} if level else {})},
        "tasks": [task],
        "methods": [method],
    }
    return parse_suite(raw).runs[0]


@pytest.mark.parametrize(
    ("method", "level"), [("pcgrad", "param"), ("graddrop", "feature"), ("ew", "param"), ("uw", "feature")]
)
def test_diagnostics_are_logged_every_n_steps_and_leave_training_unchanged(method: str, level: str) -> None:
    plain, observed = run(spec(method, 0, level)), run(spec(method, 2, level))
    assert observed.status == plain.status == "ok"
    assert [(m.step, m.name, m.value) for m in observed.metrics] == [
        (m.step, m.name, m.value) for m in plain.metrics
    ]
    assert plain.diagnostics == []
    assert sorted({d.step for d in observed.diagnostics}) == [0, 2, 4]  # 6 steps
    names = {d.name for d in observed.diagnostics}
    assert {"cos_0_1", "cos_mean", "conflict_share", "gram_cond", "purity_0"} <= names


def test_suite_key_sets_the_setting_and_is_checked() -> None:
    assert spec("ew", 5).train.diagnostics_every == 5
    plain = parse_suite({"train": {"jacobian": "loop"}, "tasks": ["_noisy"], "methods": ["ew"]}).runs[0]
    assert spec("ew", 0).config_hash() == plain.config_hash() != spec("ew", 5).config_hash()
    with pytest.raises(ConfigError, match=r"diagnostics\.every: must be >= 0, got -1"):
        spec("ew", -1)
    with pytest.raises(ConfigError, match=r"diagnostics\.evry: unknown key \(did you mean 'every'\?\)"):
        parse_suite({"diagnostics": {"evry": 2}, "tasks": ["_noisy"], "methods": ["ew"]})


def test_store_keeps_diagnostics_and_replaces_them_with_the_run(tmp_path) -> None:
    store = ResultsStore(tmp_path / "s.sqlite")
    result = run(spec("pcgrad", 3))
    store.save(result)
    frame = store.diagnostics()
    assert len(frame) == len(result.diagnostics) and set(frame["method_label"]) == {"pcgrad"}
    store.save(result)  # same config hash: replaced, not duplicated
    assert len(store.diagnostics()) == len(result.diagnostics)


def test_a_version_2_store_is_migrated(tmp_path) -> None:
    path = tmp_path / "old.sqlite"
    old_schema = ";".join(
        part for part in SCHEMA.split(";") if "diagnostics" not in part and "suites" not in part
    )
    with sqlite3.connect(path) as conn:
        conn.executescript(old_schema)
        conn.execute("PRAGMA user_version = 2")
    store = ResultsStore(path)
    assert store.diagnostics().empty
    store.save_suite("s", "what it is", "s.yaml")
    assert store.suite_description("s") == "what it is" and store.suite_description("t") == ""
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
