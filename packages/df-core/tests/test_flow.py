"""Rectified-flow algebra with per-frame noise levels: exact recovery, straight paths, the Euler
update and the per-frame loss reduction.

Legend: B batch, T frames, C channels, H W height/width, Ds structure dimension.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from df_core.flow import (
    add_noise,
    eps_from_velocity,
    euler_update,
    expand_sigma,
    frame_mse,
    reduce_frame_loss,
    velocity_target,
    x0_from_velocity,
)

levels = st.floats(0.0, 1.0)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6, rtol: float = 1e-6) -> bool:
    """``torch.allclose`` after a shape check (cheaper than ``assert_close`` in property tests
    that run hundreds of examples)."""
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=rtol)


@st.composite
def clips(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x0, eps, sigma_BT, sigma_next_BT)`` for a tiny video ``[B, T, C, H, W]`` or structure
    ``[B, T, Ds]`` clip, with one level per frame and ``sigma_next <= sigma`` (often equal, as
    for the frames a staggered sampler leaves alone)."""
    B, T = draw(st.integers(1, 2), label="B"), draw(st.integers(1, 3), label="T")
    if draw(st.booleans(), label="video"):
        rest = (draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    else:
        rest = (draw(st.integers(1, 5)),)
    sigma = draw(st.lists(levels, min_size=B * T, max_size=B * T), label="sigma")
    keep_bits = draw(st.integers(0, 2 ** (B * T) - 1), label="frames that keep their level")
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1), label="seed"))
    x0 = torch.randn(B, T, *rest, generator=g)
    eps = torch.randn(B, T, *rest, generator=g)
    sigma_BT = torch.tensor(sigma).reshape(B, T)
    keep_BT = ((keep_bits >> torch.arange(B * T)) & 1).bool().reshape(B, T)
    frac_BT = torch.where(keep_BT, 1.0, torch.rand(B, T, generator=g))
    sigma_next_BT = sigma_BT * frac_BT
    return x0, eps, sigma_BT, sigma_next_BT


def euler(v_fn, x: torch.Tensor, sigma_BT: torch.Tensor, sigma_next_BT: torch.Tensor):
    """One Euler step with per-frame levels, the velocity ``v_fn(x, sigma_BT)``."""
    s, s_next = expand_sigma(sigma_BT, x), expand_sigma(sigma_next_BT, x)
    return euler_update(x, v_fn(x, sigma_BT), s, s_next)


def per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """Velocity field ``v = fn(sigma)`` that is the same for every element of a frame."""
    return lambda _x, sigma_BT: fn(expand_sigma(sigma_BT, x)).expand_as(x)


# --- the algebra -----------------------------------------------------------------------------


@given(clip=clips())
def test_true_velocity_recovers_x0_and_eps_and_euler_follows_the_straight_path(clip) -> None:
    x0, eps, sigma_BT, sigma_next_BT = clip
    x = add_noise(x0, eps, sigma_BT)
    v = velocity_target(x0, eps)

    # Step 1: noising is the per-frame interpolation (1 - sigma) x0 + sigma eps.
    s_BT1 = sigma_BT[:, :, None]
    x_ref = (1 - s_BT1) * x0.flatten(2) + s_BT1 * eps.flatten(2)
    assert close(x.flatten(2), x_ref)

    # Step 2: the true velocity recovers x0 and eps from x_sigma.
    assert close(x0_from_velocity(x, v, sigma_BT), x0)
    assert close(eps_from_velocity(x, v, sigma_BT), eps)

    # Step 3: paths are straight, so Euler with the true velocity lands exactly on
    # x_sigma_next, and one step from any level to 0 lands on x0.
    true_v = lambda _x, _s: v  # noqa: E731
    x_next = add_noise(x0, eps, sigma_next_BT)
    zeros_BT = torch.zeros_like(sigma_BT)
    assert close(euler(true_v, x, sigma_BT, sigma_next_BT), x_next)
    assert close(euler(true_v, x, sigma_BT, zeros_BT), x0)

    # Step 4: with any velocity field, a frame whose level does not change is left bit for bit.
    model = lambda x_, s: torch.sin(3 * x_) + expand_sigma(s, x_) + 1.0  # noqa: E731
    keep_BT = sigma_next_BT == sigma_BT
    out = euler(model, x, sigma_BT, sigma_next_BT)
    assert torch.equal(out[keep_BT], x[keep_BT])
    # ... while a frame that steps by a visible amount does move (v >= sigma > 0 here).
    moves_BT = (sigma_BT - sigma_next_BT) > 1e-3
    assert bool(((out - x).abs().flatten(2).amax(dim=2)[moves_BT] > 0).all())


def test_add_noise_endpoints_are_exact() -> None:
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    assert torch.equal(add_noise(x0, eps, torch.zeros(2, 3)), x0)
    assert torch.equal(add_noise(x0, eps, torch.ones(2, 3)), eps)


def test_velocity_target_is_eps_minus_x0() -> None:
    x0, eps = torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.5, -1.0]]])
    assert torch.equal(velocity_target(x0, eps), torch.tensor([[[-0.5, -3.0]]]))


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4), (2, 3, 4, 5, 6)])
def test_expand_sigma_shape_and_dtype(shape: tuple[int, ...]) -> None:
    x = torch.zeros(shape, dtype=torch.float64)
    sigma_BT = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    s = expand_sigma(sigma_BT, x)
    assert s.shape == (2, 3) + (1,) * (len(shape) - 2)
    assert s.dtype == torch.float64
    assert torch.equal(s.reshape(2, 3), sigma_BT.double())


def test_add_noise_keeps_the_dtype_of_the_data() -> None:
    x0 = torch.zeros(1, 2, 3, dtype=torch.bfloat16)
    assert add_noise(x0, torch.ones_like(x0), torch.full((1, 2), 0.5)).dtype == torch.bfloat16


# --- samplers --------------------------------------------------------------------------------


def test_euler_update_is_the_documented_expression_bit_for_bit() -> None:
    # The samplers' results depend on the exact operation order: x + (sigma_next - sigma) * v,
    # with 0-d float32 levels and float32 state (what refactors must not change).
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    sigma, sigma_next = torch.tensor(0.7310586), torch.tensor(0.2689414)
    assert torch.equal(euler_update(x, v, sigma, sigma_next), x + (sigma_next - sigma) * v)
    assert not torch.equal(euler_update(x, v, sigma, sigma_next), x + sigma_next * v - sigma * v)


def test_euler_error_on_curved_fields() -> None:
    # Levels are per frame, so one call checks a whole grid of (sigma, sigma_next) pairs.
    sigma_S = torch.linspace(0.02, 1.0, 50, dtype=torch.float64)
    frac_F = torch.cat([torch.zeros(1), torch.linspace(0.01, 0.99, 49)]).double()
    sigma_BT = sigma_S[:, None].expand(50, 50).reshape(1, -1)
    sigma_next_BT = (sigma_S[:, None] * frac_F[None, :]).reshape(1, -1)
    h_BT = sigma_BT - sigma_next_BT
    x = torch.randn(1, 2500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # dx/dsigma = sigma: x(sigma_next) = x(sigma) + (sigma_next^2 - sigma^2) / 2, and Euler's
    # error is -h^2 / 2 (first order).
    exact = x + expand_sigma((sigma_next_BT**2 - sigma_BT**2) / 2, x)
    err = euler(per_frame(lambda s: s, x), x, sigma_BT, sigma_next_BT) - exact
    assert close(err, expand_sigma(-(h_BT**2) / 2, x).expand_as(x), 1e-12, 1e-9)
    # dx/dsigma = sigma^2: the error is -h^2 (2 sigma + sigma_next) / 3.
    exact = x + expand_sigma((sigma_next_BT**3 - sigma_BT**3) / 3, x)
    err = euler(per_frame(lambda s: s**2, x), x, sigma_BT, sigma_next_BT) - exact
    expected = expand_sigma(-(h_BT**2) * (2 * sigma_BT + sigma_next_BT) / 3, x).expand_as(x)
    assert close(err, expected, atol=1e-12, rtol=1e-9)


def test_many_euler_steps_converge_on_a_curved_field() -> None:
    # A sanity check of the sign convention: integrating from sigma 1 to 0 in K steps.
    x = torch.zeros(1, 1, 1, dtype=torch.float64)
    model = per_frame(lambda s: s, x)
    errors = []
    for K in (4, 16):
        levels_K1 = torch.linspace(1.0, 0.0, K + 1, dtype=torch.float64)
        y = x.clone()
        for i in range(K):
            y = euler(model, y, levels_K1[i].reshape(1, 1), levels_K1[i + 1].reshape(1, 1))
        errors.append(abs(y.item() - (-0.5)))
    assert errors[1] < errors[0] / 3


# --- losses ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 4), (1, 4, 2, 3, 3)])
def test_frame_mse_is_the_mean_over_each_frame(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    mse_BT = frame_mse(pred, target)
    B, T = shape[:2]
    assert mse_BT.shape == (B, T) and mse_BT.dtype == torch.float32
    for b in range(B):
        for t in range(T):
            expected = ((pred[b, t].double() - target[b, t].double()) ** 2).mean().item()
            assert mse_BT[b, t].item() == pytest.approx(expected, rel=1e-5)


def test_frame_mse_known_values_and_low_precision_inputs() -> None:
    pred = torch.zeros(1, 2, 2, 2, dtype=torch.bfloat16)
    target = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 0.0]]]]).bfloat16()
    mse_BT = frame_mse(pred, target)
    assert mse_BT.dtype == torch.float32
    assert mse_BT.tolist() == [[1.0, 1.0]]


def test_reduce_frame_loss_is_a_weighted_mean_over_valid_frames() -> None:
    loss_BT = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert reduce_frame_loss(loss_BT).item() == pytest.approx(3.5)
    weight_BT = torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    assert reduce_frame_loss(loss_BT, weight_BT).item() == pytest.approx((1 + 3 + 10) / 4)
    valid_BT = torch.tensor([[True, True, False], [False, True, True]])
    assert reduce_frame_loss(loss_BT, valid_BT=valid_BT).item() == pytest.approx(14 / 4)
    assert reduce_frame_loss(loss_BT, weight_BT, valid_BT).item() == pytest.approx((1 + 10) / 3)


def test_reduce_frame_loss_matches_a_loop_and_ignores_invalid_frames() -> None:
    g = torch.Generator().manual_seed(0)
    for case in range(300):
        loss_BT = 10 * torch.rand(2, 3, generator=g, dtype=torch.float64)
        weight_BT = 5 * torch.rand(2, 3, generator=g, dtype=torch.float64)
        weight_BT[torch.rand(2, 3, generator=g) < 0.3] = 0.0
        valid_BT = torch.rand(2, 3, generator=g) < (0.5 if case % 2 else 0.1)
        out = reduce_frame_loss(loss_BT, weight_BT, valid_BT).item()
        num = den = 0.0
        for w, loss, ok in zip(
            weight_BT.flatten(), loss_BT.flatten(), valid_BT.flatten(), strict=True
        ):
            if ok:
                num, den = num + float(w * loss), den + float(w)
        expected = num / den if den > 0 else 0.0
        assert math.isclose(out, expected, rel_tol=1e-9, abs_tol=1e-12), (case, out, expected)
        # Changing the loss of an invalid frame changes nothing.
        junk_BT = torch.where(valid_BT, loss_BT, -1e3 * torch.rand(2, 3, generator=g).double())
        assert math.isclose(
            reduce_frame_loss(junk_BT, weight_BT, valid_BT).item(), out, rel_tol=1e-9, abs_tol=1e-12
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_reduce_frame_loss_all_invalid_is_zero_not_nan(dtype: torch.dtype) -> None:
    loss_BT = torch.ones(2, 3, dtype=dtype)
    out = reduce_frame_loss(loss_BT, valid_BT=torch.zeros(2, 3, dtype=torch.bool))
    assert out.item() == 0.0
    assert reduce_frame_loss(loss_BT, torch.zeros(2, 3)).item() == 0.0


# --- shape checks ----------------------------------------------------------------------------


def test_mismatched_shapes_raise() -> None:
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="sigma_BT"):
        add_noise(x, x, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="sigma_BT"):
        x0_from_velocity(x, x, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="sigma_BT"):
        eps_from_velocity(x, x, torch.zeros(2))
    with pytest.raises(ValueError, match="pred"):
        frame_mse(x, torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="weight_BT"):
        reduce_frame_loss(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="valid_BT"):
        reduce_frame_loss(torch.zeros(2, 3), valid_BT=torch.zeros(2, 4, dtype=torch.bool))


# --- regressions of fixed bugs --------------------------------------------------------------------------


def test_reduce_frame_loss_is_finite_when_excluded_frames_are_not() -> None:
    loss_BT = torch.tensor([[1.0, 2.0]])
    sigma_BT = torch.tensor([[0.5, 0.0]])  # the second frame is clean context
    weight_BT = 1.0 / sigma_BT  # a per-sigma weight, infinite at sigma 0
    valid_BT = sigma_BT > 0
    assert reduce_frame_loss(loss_BT, weight_BT, valid_BT).item() == 1.0


def test_frame_mse_accepts_per_frame_scalars() -> None:
    assert frame_mse(torch.ones(2, 3), torch.zeros(2, 3)).tolist() == [[1.0] * 3] * 2


def test_reduce_frame_loss_small_weights_in_float16() -> None:
    loss_BT = torch.ones(1, 2, dtype=torch.float16)
    assert reduce_frame_loss(loss_BT, torch.full((1, 2), 1e-5)).item() == pytest.approx(1.0)
