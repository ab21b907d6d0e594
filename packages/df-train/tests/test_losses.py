"""Tests of df_train.losses: hand references, masking, schedule invariants."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from df_train.losses import (
    aux_struct_loss,
    aux_weight,
    mouth_box_to_latent,
    mouth_weight_map,
    velocity_losses,
    weighted_frame_mse,
)

# ---------------------------------------------------------------- velocity and aux losses


def test_velocity_losses_equals_hand_loop_and_ignores_invalid_frames():
    g = torch.Generator().manual_seed(0)
    B, T = 2, 5
    pred = torch.randn(B, T, 3, 4, 4, generator=g)
    target = torch.randn(B, T, 3, 4, 4, generator=g)
    valid = torch.rand(B, T, generator=g) > 0.3
    valid[0, 0] = False
    weight = torch.rand(B, T, generator=g) + 0.1
    num = den = 0.0
    for b in range(B):
        for t in range(T):
            if valid[b, t]:
                num += float(weight[b, t]) * float(((pred[b, t] - target[b, t]) ** 2).mean())
                den += float(weight[b, t])
    loss = velocity_losses(pred, target, valid_BT=valid, weight_BT=weight)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert loss.item() == pytest.approx(num / den, rel=1e-5)

    pred_nan = pred.clone()
    pred_nan[~valid] = float("nan")
    loss_nan = velocity_losses(pred_nan, target, valid_BT=valid, weight_BT=weight)
    assert loss_nan.item() == pytest.approx(num / den, rel=1e-5)
    pred_g = pred.clone().requires_grad_(True)
    velocity_losses(pred_g, target, valid_BT=valid, weight_BT=weight).backward()
    assert (pred_g.grad[~valid] == 0).all() and (pred_g.grad[valid] != 0).any()

    plain = velocity_losses(pred[..., 0, 0, 0], target[..., 0, 0, 0])  # [B, T] structure-like
    assert plain.item() == pytest.approx(float(((pred - target)[..., 0, 0, 0] ** 2).mean()))
    none = velocity_losses(pred, target, valid_BT=torch.zeros(B, T, dtype=torch.bool))
    assert none.item() == 0.0


def test_aux_struct_loss_partial_masks():
    g = torch.Generator().manual_seed(1)
    B, T, Ds = 3, 4, 6
    s0 = torch.randn(B, T, Ds, generator=g, requires_grad=True)
    aux = torch.randn(B, T, Ds, generator=g)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0] = True  # a fully labelled clip
    mask[1, 1:3] = True  # a partly labelled clip; clip 2 has no labels
    aux_nan = torch.where(mask[..., None], aux, torch.full_like(aux, float("nan")))
    per_frame = ((s0.detach() - aux) ** 2).mean(-1)
    expected = per_frame[mask].mean()
    loss = aux_struct_loss(s0, aux_nan, mask)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(s0.grad).all()
    assert (s0.grad[~mask] == 0).all() and (s0.grad[mask] != 0).any()

    clip_mask = torch.tensor([True, False, True])
    expected_clip = per_frame[clip_mask].mean()
    assert aux_struct_loss(s0, aux, clip_mask).item() == pytest.approx(expected_clip.item())
    assert aux_struct_loss(s0, aux, torch.zeros(B, T, dtype=torch.bool)).item() == 0.0
    with pytest.raises(ValueError, match="aux_mask_BT"):
        aux_struct_loss(s0, aux, torch.ones(B, T))
    with pytest.raises(ValueError, match="s0_hat_BTDs"):
        aux_struct_loss(s0, aux[..., :3], mask)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_aux_weight_endpoints(schedule):
    assert aux_weight(0, 0.5, 100, schedule) == pytest.approx(0.5)
    assert aux_weight(50, 0.5, 100, schedule) == pytest.approx(0.25)
    assert aux_weight(100, 0.5, 100, schedule) == pytest.approx(0.0, abs=1e-12)
    assert aux_weight(10_000, 0.5, 100, schedule) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        aux_weight(-1, 0.5, 100, schedule)
    with pytest.raises(ValueError):
        aux_weight(0, 0.5, 0, schedule)
    with pytest.raises(ValueError):
        aux_weight(0, 0.5, 100, "step")


@settings(max_examples=60, deadline=None)
@given(
    a=st.integers(0, 3000),
    b=st.integers(0, 3000),
    decay=st.integers(1, 2000),
    lam=st.floats(0.0, 10.0),
    schedule=st.sampled_from(["cosine", "linear"]),
)
def test_aux_weight_monotone_and_bounded(a, b, decay, lam, schedule):
    lo, hi = min(a, b), max(a, b)
    w_lo, w_hi = aux_weight(lo, lam, decay, schedule), aux_weight(hi, lam, decay, schedule)
    assert 0.0 <= w_hi <= w_lo + 1e-12 <= lam + 1e-12


# ---------------------------------------------------------------- mouth boxes and crops


def test_mouth_box_to_latent_scales():
    box = torch.tensor([[[16.0, 32.0, 48.0, 56.0]]])
    assert torch.equal(mouth_box_to_latent(box, 64, 8), torch.tensor([[[2.0, 4.0, 6.0, 7.0]]]))
    out = mouth_box_to_latent(box.long(), (64, 128), (8, 32))  # (H, W): y / 8, x / 4
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([[[4.0, 4.0, 12.0, 7.0]]]))
    with pytest.raises(ValueError):
        mouth_box_to_latent(box[..., :3], 64, 8)


def test_mouth_weight_map_weights_only_the_box():
    # Box x in [1, 3), y in [2, 5) on a 6x6 latent: those 6 pixels get the weight, no others.
    w = mouth_weight_map(torch.tensor([[[1.0, 2.0, 3.0, 5.0]]]), 6, 6, 10.0)[0, 0]
    inside = torch.zeros(6, 6, dtype=torch.bool)
    inside[2:5, 1:3] = True
    assert torch.equal(w[inside], torch.full((6,), 10.0))
    assert torch.equal(w[~inside], torch.ones(30))
    # A box edge half-way through a pixel gives it half the extra weight.
    w = mouth_weight_map(torch.tensor([[[1.5, 2.0, 3.0, 3.0]]]), 6, 6, 10.0)[0, 0]
    assert w[2, 1] == pytest.approx(5.5) and w[2, 2] == 10.0 and w[1, 2] == 1.0
    # Weight 1 is the plain mean.
    assert torch.equal(
        mouth_weight_map(torch.tensor([[[0.0, 0, 6, 6]]]), 6, 6, 1.0), torch.ones(1, 1, 6, 6)
    )


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-3.0, 11.0), min_size=4, max_size=4),
    st.floats(1.0, 50.0),
)
def test_mouth_weight_map_extra_weight_is_the_box_area_in_the_image(coords, weight):
    x0, x1 = sorted(coords[:2])
    y0, y1 = sorted(coords[2:])
    H, W = 6, 8
    w = mouth_weight_map(torch.tensor([[[x0, y0, x1, y1]]], dtype=torch.float64), H, W, weight)
    area = max(0.0, min(x1, W) - max(x0, 0.0)) * max(0.0, min(y1, H) - max(y0, 0.0))
    assert float((w - 1).sum()) == pytest.approx((weight - 1) * area, abs=1e-9)
    assert float(w.min()) >= 1.0 and float(w.max()) <= weight + 1e-12


def test_weighted_frame_mse_equals_hand_loop_and_moves_the_loss_to_the_mouth():
    g = torch.Generator().manual_seed(0)
    B, T, C, H, W = 2, 3, 4, 5, 6
    pred = torch.randn(B, T, C, H, W, generator=g)
    target = torch.randn(B, T, C, H, W, generator=g)
    weight = torch.rand(B, T, H, W, generator=g) + 0.5
    out = weighted_frame_mse(pred, target, weight)
    for b in range(B):
        for t in range(T):
            err = ((pred[b, t] - target[b, t]) ** 2).mean(0)
            ref = (weight[b, t] * err).sum() / weight[b, t].sum()
            assert float(out[b, t]) == pytest.approx(float(ref), rel=1e-5)
    # Uniform weights: the plain per-frame mean.
    plain = ((pred - target) ** 2).flatten(2).mean(2)
    torch.testing.assert_close(weighted_frame_mse(pred, target, torch.ones(B, T, H, W)), plain)
    # An error outside the mouth costs less, and one inside it more, as the mouth weight grows.
    box = torch.tensor([1.0, 1.0, 3.0, 3.0]).expand(1, 1, 4)
    outside = torch.zeros(1, 1, 1, H, W)
    outside[..., 4, 5] = 1.0
    inside = torch.zeros(1, 1, 1, H, W)
    inside[..., 2, 2] = 1.0
    zero = torch.zeros(1, 1, 1, H, W)

    def loss(err, m):
        return float(weighted_frame_mse(err, zero, mouth_weight_map(box, H, W, m)))

    assert loss(outside, 1.0) == pytest.approx(1 / 30) and loss(inside, 1.0) == pytest.approx(
        1 / 30
    )
    assert loss(outside, 10.0) == pytest.approx(1 / (26 + 40))
    assert loss(inside, 10.0) == pytest.approx(10 / (26 + 40))


def test_mouth_weight_rejects_bad_arguments():
    box = torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match="mouth_weight"):
        mouth_weight_map(box, 4, 4, 0.5)
    with pytest.raises(ValueError, match="mouth_weight"):
        mouth_weight_map(box, 4, 4, math.inf)
    with pytest.raises(ValueError, match="box_BT4"):
        mouth_weight_map(torch.zeros(2, 4), 4, 4, 2.0)
    with pytest.raises(ValueError, match="weight_BTHW"):
        weighted_frame_mse(
            torch.zeros(1, 2, 3, 4, 4), torch.zeros(1, 2, 3, 4, 4), torch.ones(1, 2, 4, 5)
        )
