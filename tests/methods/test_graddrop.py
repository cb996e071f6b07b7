"""GradDrop: the paper's purity examples, the expectation claims, and every option of DESIGN §4."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from benchmark.factored import FactoredGradients
from benchmark.method import StepContext, get_method
from methods.graddrop import activation_sign, keep_probability, sign_purity

DRAWS = 20_000


def seeded(seed: int = 0, **fields: object) -> StepContext:
    return StepContext(generator=torch.Generator().manual_seed(seed), **fields)


def random_grads(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def monte_carlo(grads: Tensor, **hparams: object) -> tuple[Tensor, Tensor]:
    """Mean and standard error of the update over DRAWS draws of the masks.

    The draws are rows of one feature-level call: the gradients ``[T, D]`` are repeated over a batch
    of DRAWS rows and every scalar gets its own U, so each row is an independent draw.
    """
    method = get_method("graddrop", num_tasks=grads.shape[0], **hparams)
    updates = method.combine(grads[:, None].expand(-1, DRAWS, -1), seeded(level="feature"))
    return updates.mean(0), updates.std(0) / DRAWS**0.5


def test_purity_matches_figure_1() -> None:
    assert sign_purity(torch.tensor([[3.0], [1.0]], dtype=torch.float64)).item() == pytest.approx(1.0)
    assert sign_purity(torch.tensor([[7.0], [-3.0]], dtype=torch.float64)).item() == pytest.approx(0.7)


def test_keep_probability_functions() -> None:
    purity = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(keep_probability(purity, "linear", 1.0), purity)
    torch.testing.assert_close(keep_probability(purity, "linear", 0.0), torch.full_like(purity, 0.5))
    torch.testing.assert_close(keep_probability(purity, "linear", 2.0), 2 * purity - 0.5)
    torch.testing.assert_close(keep_probability(purity, "sigmoid", 1.0), torch.sigmoid(4 * (purity - 0.5)))


def test_activation_sign_guard() -> None:
    activation = torch.tensor([-2.0, 3.0, 0.0, 1e-9], dtype=torch.float64)
    expected = torch.tensor([-1.0, 1.0, 0.0, 1e-9 / (1 + 1e-9)], dtype=torch.float64)  # ≈ A where |A| ≤ ε
    torch.testing.assert_close(activation_sign(activation), expected)


def test_identity_keep_function_is_unbiased() -> None:
    grads = random_grads(3, 6)
    mean, stderr = monte_carlo(grads)  # linear, k = 1: f(P) = P
    assert (mean - grads.sum(0)).abs().le(4 * stderr + 1e-9).all()


def test_random_graddrop_halves_the_expected_gradient() -> None:
    grads = random_grads(3, 6, seed=1)
    mean, stderr = monte_carlo(grads, k=0.0)
    assert (mean - grads.sum(0) / 2).abs().le(4 * stderr + 1e-9).all()


def test_full_leak_returns_the_sum() -> None:
    grads = random_grads(3, 4, 5)
    update = get_method("graddrop", num_tasks=3, leak=1.0).combine(grads, seeded())
    assert torch.equal(update, grads.sum(0))


def test_leak_one_passes_that_loss_through() -> None:
    # Loss 2 opposes loss 1 with twice its size, so it survives sometimes and loss 1 would not always.
    g1 = random_grads(1, 2000)
    grads = torch.cat([g1, -2 * g1])
    update = get_method("graddrop", num_tasks=2, leak=[1.0, 0.0]).combine(grads, seeded())
    rest = update - grads[0]
    dropped, kept = rest == 0, torch.isclose(rest, grads[1])
    assert (dropped | kept).all()
    assert dropped.any() and kept.any()


def test_marginalize_batch_tiles_one_mask_over_the_batch() -> None:
    g1 = random_grads(8, 50).abs()  # loss 1 pushes every scalar up, loss 2 down: one of them survives
    grads = torch.stack([g1, -random_grads(8, 50, seed=1).abs()])
    method = get_method("graddrop", num_tasks=2, marginalize_batch=True)
    update = method.combine(grads, seeded(level="feature"))
    kept_first = torch.isclose(update, grads[0])
    assert (kept_first ^ torch.isclose(update, grads[1])).all()
    assert (kept_first == kept_first[:1]).all(), "every row must share the mask"
    assert kept_first.any() and not kept_first.all()


def test_marginalize_batch_refuses_the_param_level() -> None:
    method = get_method("graddrop", num_tasks=2, marginalize_batch=True)
    with pytest.raises(ValueError, match="marginalize_batch"):
        method.combine(random_grads(2, 5))


def hard_update(grads: Tensor, activation: Tensor, input: str) -> Tensor:
    """Marginalised GradDrop with a steep f (k = 10), so that a purity away from ½ decides for sure."""
    method = get_method("graddrop", num_tasks=2, k=10.0, input=input, marginalize_batch=True)
    return method.combine(grads, seeded(level="feature", activation=activation))


def test_input_modes() -> None:
    # Batch-separated: loss 1 lives on row 0, loss 2 on row 1.
    grads = torch.tensor([[[2.0], [0.0]], [[0.0], [1.0]]], dtype=torch.float64)
    activation = torch.tensor([[1.0], [-3.0]], dtype=torch.float64)
    # none: G = (2, 1), both positive, both kept.
    torch.testing.assert_close(hard_update(grads, activation, "none"), grads.sum(0))
    # sign: the negative activation flips loss 2's vote, G = (2, -1), P = 2/3: loss 1 wins.
    torch.testing.assert_close(hard_update(grads, activation, "sign"), grads[0])
    # value: G = (2, -3), P = 0.4: loss 2 wins.
    torch.testing.assert_close(hard_update(grads, activation, "value"), grads[1])


def test_zero_activation_keeps_every_gradient() -> None:
    grads = random_grads(3, 4, 5)
    ctx = seeded(level="feature", activation=torch.zeros(4, 5, dtype=torch.float64))
    update = get_method("graddrop", num_tasks=3).combine(grads, ctx)
    torch.testing.assert_close(update, grads.sum(0))


def test_keep_gradnorm_constant() -> None:
    grads = random_grads(3, 4, 5)
    update = get_method("graddrop", num_tasks=3, keep_gradnorm_constant=True).combine(grads, seeded())
    torch.testing.assert_close(torch.linalg.vector_norm(update), torch.linalg.vector_norm(grads.sum(0)))


def test_moves_where_only_the_sum_is_stationary() -> None:
    g = random_grads(1, 10)
    update = get_method("graddrop", num_tasks=2).combine(torch.cat([g, -g]), seeded())
    assert (update.abs() == g[0].abs()).all()  # every scalar keeps one of the two gradients


@pytest.mark.parametrize(
    ("hparams", "argument"),
    [
        ({"leak": 1.5}, "leak"),
        ({"leak": [0.0, 1.0]}, "leak"),
        ({"leak": "high"}, "leak"),
        ({"purity_fn": "cubic"}, "purity_fn"),
        ({"k": -1.0}, "k"),
        ({"k": float("nan")}, "k"),
        ({"k": "1"}, "k"),
        ({"input": "abs"}, "input"),
        ({"eps": 0.0}, "eps"),
    ],
)
def test_bad_hyperparameters_raise(hparams: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        get_method("graddrop", num_tasks=3, **hparams)


def test_activation_shape_is_checked() -> None:
    ctx = StepContext(activation=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="activation"):
        get_method("graddrop", num_tasks=2).combine(random_grads(2, 5), ctx)


def reference_graddrop(grads: Tensor, activation: Tensor, generator: torch.Generator, **options) -> Tensor:
    """DESIGN §4 step by step, with every intermediate tensor built (the method computes less)."""
    leak = torch.as_tensor(options["leak"], dtype=grads.dtype).expand(grads.shape[0])
    leak = leak.view(-1, *[1] * (grads.dim() - 1))
    factor = {"sign": activation_sign(activation), "value": activation, "none": torch.ones_like(activation)}
    signal = grads * factor[options["input"]]
    if options["marginalize_batch"]:
        signal = signal.sum(1, keepdim=True)
    purity = sign_purity(signal)
    keep = keep_probability(purity, options["purity_fn"], options["k"])
    draw = torch.rand(keep.shape, generator=generator, dtype=keep.dtype)
    masks = ((keep > draw) & (signal > 0)) | ((keep <= draw) & (signal < 0)) | (signal == 0)
    return ((leak + (1 - leak) * masks.to(grads.dtype)) * grads).sum(0)


@pytest.mark.parametrize("input_mode", ["sign", "value", "none"])
@pytest.mark.parametrize("marginalize_batch", [False, True])
@pytest.mark.parametrize(("purity_fn", "k"), [("linear", 1.0), ("linear", 0.0), ("sigmoid", 2.0)])
@pytest.mark.parametrize("leak", [0.0, [0.3, 0.0, 1.0]])
def test_matches_a_step_by_step_reference(
    input_mode: str, marginalize_batch: bool, purity_fn: str, k: float, leak: float | list[float]
) -> None:
    options = dict(input=input_mode, marginalize_batch=marginalize_batch, purity_fn=purity_fn, k=k, leak=leak)
    data = torch.Generator().manual_seed(7)
    grads = torch.randn(3, 6, 5, generator=data, dtype=torch.float64)
    grads[1, 0, :2] = 0.0  # exact zeros are kept
    activation = torch.randn(6, 5, generator=data, dtype=torch.float64)
    activation[2, 3] = 0.0
    method = get_method("graddrop", num_tasks=3, **options)
    ctx = StepContext(level="feature", activation=activation, generator=torch.Generator().manual_seed(1))
    expected = reference_graddrop(grads, activation, torch.Generator().manual_seed(1), **options)
    torch.testing.assert_close(method.combine(grads, ctx), expected)


@pytest.mark.parametrize("leak", [0.0, [0.3, 0.0, 1.0, 0.5]])
def test_matches_torchjd_graddrop_given_the_same_uniform_draws(leak: float | list[float]) -> None:
    """TorchJD draws U from torch's global generator; seeding it like ours gives the same U. Their purity
    has no ε, so ours is given a negligible one."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    grads = torch.randn(4, 1000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    leaks = torch.as_tensor(leak, dtype=torch.float64).expand(4).clone()
    ours = get_method("graddrop", num_tasks=4, leak=leak, eps=1e-300)
    update = ours.combine(grads, StepContext(generator=torch.Generator().manual_seed(5)))
    torch.manual_seed(5)
    expected = aggregation.GradDrop(leak=leaks)(grads)
    torch.testing.assert_close(update, expected)


@pytest.mark.parametrize(
    "hparams",
    [
        {},
        {"leak": [0.0, 0.3, 1.0]},
        {"keep_gradnorm_constant": True},
        {"input": "value", "purity_fn": "sigmoid", "k": 2.0},
        {"input": "none"},
        {"marginalize_batch": True},
    ],
    ids=lambda h: ",".join(h) or "defaults",
)
@pytest.mark.parametrize("outputs", [1, 2])
def test_factored_gradients_give_the_dense_update_with_every_option(hparams: dict, outputs: int) -> None:
    """The sums from the heads' factors (one output) or their dense expansion (two, and batch
    marginalisation) give the update of the dense gradients, draw for draw."""
    factored = FactoredGradients(random_grads(3, 8, outputs, seed=1), random_grads(3, outputs, 5, seed=2))
    activation = random_grads(8, 5, seed=3)
    updates = [
        get_method("graddrop", num_tasks=3, **hparams).combine(
            grads, seeded(level="feature", activation=activation)
        )
        for grads in (factored, factored.dense())
    ]
    torch.testing.assert_close(*updates)
