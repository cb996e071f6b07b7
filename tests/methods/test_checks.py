"""The shared hyperparameter checks: accepted values, bounds, and messages that name method and key."""

from __future__ import annotations

import pytest
import torch

from methods._checks import check_choice, check_flag, check_integer, check_number, task_vector


def test_numbers_within_open_and_closed_bounds() -> None:
    assert check_number("m", "k", 0) == 0.0 and isinstance(check_number("m", "k", 2), float)
    assert check_number("m", "beta", 1.0, high=1.0) == 1.0
    for value, bounds, message in [
        (0.0, {"low_open": True}, "m: k must be a finite number > 0, got 0.0"),
        (1.0, {"high": 1.0, "high_open": True}, "m: k must be a finite number in [0, 1), got 1.0"),
        (float("nan"), {}, "m: k must be a finite number >= 0, got nan"),
        (True, {}, "m: k must be a finite number >= 0, got True"),
        ("1", {}, "m: k must be a finite number >= 0, got '1'"),
    ]:
        with pytest.raises(ValueError) as err:
            check_number("m", "k", value, **bounds)
        assert str(err.value) == message


def test_integers_reject_floats_and_bools() -> None:
    assert check_integer("m", "n", 3, low=1, high=3) == 3
    for value in (2.0, False, 0, 4):
        with pytest.raises(ValueError, match=r"m: n must be an integer in \[1, 3\]"):
            check_integer("m", "n", value, low=1, high=3)


def test_choices_must_match_in_type() -> None:
    assert check_choice("m", "mode", 1, (0, 1, 2)) == 1
    for value in (1.0, True, "1", 3):
        with pytest.raises(ValueError, match=r"m: mode must be one of \(0, 1, 2\)"):
            check_choice("m", "mode", value, (0, 1, 2))


def test_flags_are_bools_only() -> None:
    assert check_flag("m", "on", True) is True and check_flag("m", "on", False) is False
    for value in ("false", "true", 0, 1, None):
        with pytest.raises(ValueError) as err:
            check_flag("m", "on", value)
        assert str(err.value) == f"m: on must be true or false, got {value!r}"


def test_task_vectors_broadcast_and_check_their_range() -> None:
    assert torch.equal(
        task_vector("m", "w", None, 2, default=0.5), torch.tensor([0.5, 0.5], dtype=torch.float64)
    )
    assert torch.equal(
        task_vector("m", "w", [1, 2], 2, default=0.0), torch.tensor([1.0, 2.0], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match=r"m: w must be a finite number in \[0, 1\] or 2 of them"):
        task_vector("m", "w", [0.5, 1.5], 2, default=0.0, low=0.0, high=1.0)
    with pytest.raises(ValueError, match="m: w must be a finite number or 2 of them"):
        task_vector("m", "w", [1.0], 2, default=0.0)


@pytest.mark.parametrize("values", ["12", True, [True, 1.0], ["1", "2"], (1.0, float("nan")), None])
def test_task_vectors_reject_strings_bools_and_a_missing_default(values: object) -> None:
    with pytest.raises(ValueError, match=r"m: w must be a finite number or 2 of them, got "):
        task_vector("m", "w", values, 2)
