"""Tests of df_train.losses: hand references, masking, schedule invariants, and a synthetic
task showing that the lip-sync loss can measure audio-mouth correspondence."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from df_train.losses import (
    LipSyncLoss,
    UncertaintyWeighting,
    aux_struct_loss,
    aux_weight,
    crop_and_resize,
    mouth_box_to_latent,
    mouth_weight_map,
    velocity_losses,
    weighted_frame_mse,
    weighted_sum,
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


def test_crop_and_resize_samples_box_exactly():
    H, W, S = 8, 10, 4
    xs = torch.arange(W).float() + 0.5  # pixel k has its centre at k + 0.5
    ys = torch.arange(H).float() + 0.5
    z = torch.stack([xs[None, :].expand(H, W), ys[:, None].expand(H, W)])[None]  # [1, 2, H, W]
    box = torch.tensor([[2.0, 1.5, 6.0, 5.5]])
    crop = crop_and_resize(z, box, S)
    frac = (torch.arange(S).float() + 0.5) / S
    assert torch.allclose(crop[0, 0], (2.0 + 4.0 * frac)[None, :].expand(S, S), atol=1e-5)
    assert torch.allclose(crop[0, 1], (1.5 + 4.0 * frac)[:, None].expand(S, S), atol=1e-5)


# ---------------------------------------------------------------- lip-sync loss

C, H, W, LA, DA, K = 4, 8, 8, 4, 12, 8  # K: dimension of the per-frame "phoneme" code


def _sync_batch(g: torch.Generator, proj: tuple, B: int = 4, T: int = 16, shuffle=False):
    """Clips with a per-clip background and mouth position; the 2 x 3 mouth region of each
    frame shows a random per-frame code ``[K]`` (through ``proj[0]``) that also drives the
    centre token of that frame's audio (through ``proj[1]``). Audio has a per-clip "voice"
    offset and noise. ``shuffle`` permutes audio over all frames of the batch, which breaks
    the correspondence."""
    to_mouth, to_audio = proj
    z = torch.randn(B, 1, C, H, W, generator=g).expand(B, T, C, H, W).clone()
    code = torch.randn(B, T, K, generator=g)
    mouth = (code @ to_mouth).reshape(B, T, C, 2, 3)
    x0 = torch.randint(0, W - 3 + 1, (B,), generator=g)
    y0 = torch.randint(0, H - 2 + 1, (B,), generator=g)
    box = torch.zeros(B, T, 4)
    for b in range(B):
        xa, ya = int(x0[b]), int(y0[b])
        z[b, :, :, ya : ya + 2, xa : xa + 3] = mouth[b]
        box[b] = torch.tensor([xa + 0.5, ya + 0.5, xa + 2.5, ya + 1.5])  # pixel centres
    voice = 0.5 * torch.randn(B, 1, 1, DA, generator=g)
    audio = 0.1 * torch.randn(B, T, LA, DA, generator=g) + voice
    audio[:, :, LA // 2] += code @ to_audio
    if shuffle:
        perm = torch.randperm(B * T, generator=g)
        audio = audio.flatten(0, 1)[perm].reshape(B, T, LA, DA)
    return z, box, audio


def _proj(g: torch.Generator) -> tuple:
    return torch.randn(K, C * 6, generator=g) / K**0.5, torch.randn(K, DA, generator=g) / K**0.5


def _train_heads(shuffle: bool, steps: int = 200) -> tuple[float, float, float]:
    """Trains only the loss's own heads on fresh batches; returns the held-out loss, accuracy
    and log(candidates) (the loss of a guess), each averaged over 4 batches."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only add overhead on a shared CPU
    try:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(123)
        proj = _proj(g)
        lip = LipSyncLoss(C, DA, LA, embed_dim=32, hidden=48)
        opt = torch.optim.Adam(lip.parameters(), lr=3e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            loss, _ = lip(*_sync_batch(g, proj, shuffle=shuffle))  # fresh data every step
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            evals = [lip(*_sync_batch(g, proj, shuffle=shuffle)) for _ in range(4)]
    finally:
        torch.set_num_threads(threads)
    loss = sum(e[0].item() for e in evals) / 4
    acc = sum(e[1]["accuracy"].item() for e in evals) / 4
    log_k = -math.log(sum(e[1]["chance"].item() for e in evals) / 4)
    return loss, acc, log_k


def test_lip_sync_loss_learns_sync_and_not_shuffled_audio():
    loss, acc, log_k = _train_heads(shuffle=False)
    assert log_k > 4.0  # 4 clips x 16 frames: ~13 same-clip and 48 cross-clip negatives
    assert loss < 0.15 * log_k
    assert acc > 0.9

    # Shuffled audio has no relation to the mouth: the positive is exchangeable with the
    # negatives, so no head can beat a guess on held-out data.
    loss_sh, acc_sh, log_k_sh = _train_heads(shuffle=True)
    assert loss_sh > 0.95 * log_k_sh
    assert acc_sh < 0.1


def test_lip_sync_loss_shapes_and_candidates():
    g = torch.Generator().manual_seed(2)
    B, T = 2, 6
    lip = LipSyncLoss(C, DA, LA, embed_dim=16, hidden=16, min_shift=2)
    z, box, audio = _sync_batch(g, _proj(g), B=B, T=T)
    v = lip.embed_video(z, box)
    a = lip.embed_audio(audio)
    assert v.shape == a.shape == (B, T, 16)
    assert torch.allclose(v.norm(dim=-1), torch.ones(B, T), atol=1e-5)
    loss, m = lip(z, box, audio)
    assert loss.shape == () and torch.isfinite(loss)
    assert set(m) == {"accuracy", "chance", "logit_scale", "anchors"}
    assert m["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert lip(z, box, audio[:, :, :, None].expand(B, T, LA, 3, DA))[0].item() == pytest.approx(
        loss.item(), rel=1e-5
    )  # several encoder layers are averaged

    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 4] = False
    allowed = lip.candidates(valid)
    for n in range(B * T):
        for k in range(B * T):
            (bn, tn), (bk, tk) = divmod(n, T), divmod(k, T)
            neg = valid[bn, tn] and valid[bk, tk] and (bn != bk or abs(tn - tk) >= 2)
            assert bool(allowed[n, k]) == (n == k or neg)
    same_only = LipSyncLoss(C, DA, LA, embed_dim=16, hidden=16, min_shift=2, cross_clip=False)
    _, m_same = same_only(z, box, audio)
    # frame t of 6 has 1 + #{t': |t - t'| >= 2} candidates: t = 0, 5 -> 5; the others -> 4.
    assert m_same["chance"].item() == pytest.approx((2 / 5 + 4 / 4) / 6, rel=1e-5)


def test_lip_sync_loss_gradient_reaches_mouth_latents_only():
    g = torch.Generator().manual_seed(3)
    lip = LipSyncLoss(C, DA, LA, embed_dim=16, hidden=16, symmetric=True)
    z, box, audio = _sync_batch(g, _proj(g), B=2, T=6)
    # Samples at 2.25 .. 3.75; bilinear support: the pixels with centres 1.5 .. 4.5, i.e. 1..4.
    box[:] = torch.tensor([2.0, 2.0, 4.0, 4.0])
    z = z.requires_grad_(True)
    loss, _ = lip(z, box, audio)
    loss.backward()
    assert (z.grad[..., 1:5, 1:5].abs().sum((0, 1, 2)) > 0).all()
    outside = z.grad.clone()
    outside[..., 1:5, 1:5] = 0
    assert (outside == 0).all()
    assert all(p.grad is not None for p in lip.parameters())

    lip.zero_grad()
    z.grad = None
    loss, _ = lip(z, box, audio, heads_grad=False)  # generator step against frozen heads
    loss.backward()
    assert z.grad.abs().sum() > 0
    assert all(p.grad is None for p in lip.parameters())


def test_lip_sync_loss_ignores_invalid_frames():
    g = torch.Generator().manual_seed(4)
    B, T = 3, 8
    lip = LipSyncLoss(C, DA, LA, embed_dim=16, hidden=16)
    z, box, audio = _sync_batch(g, _proj(g), B=B, T=T)
    valid = torch.rand(B, T, generator=g) > 0.3
    base, m = lip(z, box, audio, valid)
    assert m["anchors"].item() == valid.sum().item()

    z2, box2, audio2 = z.clone(), box.clone(), audio.clone()
    z2[~valid], box2[~valid], audio2[~valid] = float("nan"), float("nan"), float("nan")
    z2.requires_grad_(True)
    loss, _ = lip(z2, box2, audio2, valid)
    assert loss.item() == pytest.approx(base.item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(z2.grad).all() and (z2.grad[~valid] == 0).all()
    assert all(torch.isfinite(p.grad).all() for p in lip.parameters())

    none, m0 = lip(z, box, audio, torch.zeros(B, T, dtype=torch.bool))
    assert none.item() == 0.0 and m0["anchors"].item() == 0.0


def test_lip_sync_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="min_shift"):
        LipSyncLoss(C, DA, LA, min_shift=0)
    with pytest.raises(ValueError, match="audio_pool"):
        LipSyncLoss(C, DA, LA, audio_pool="max")
    lip = LipSyncLoss(C, DA, LA, embed_dim=8, hidden=8, learnable_temperature=False)
    assert "log_scale" not in dict(lip.named_parameters())
    z = torch.zeros(1, 4, C, H, W)
    with pytest.raises(ValueError, match="audio_BTLDa"):
        lip(z, torch.zeros(1, 4, 4), torch.zeros(1, 4, LA + 1, DA))
    with pytest.raises(ValueError, match="valid_BT"):
        lip(z, torch.zeros(1, 4, 4), torch.zeros(1, 4, LA, DA), torch.ones(1, 4))


# ---------------------------------------------------------------- loss weighting


def test_uncertainty_weighting_finds_log_of_fixed_losses():
    losses = {"video": torch.tensor(4.0), "struct": torch.tensor(0.25), "lip": torch.tensor(1.5)}
    uw = UncertaintyWeighting(["video", "struct", "lip", "aux"])
    total, w = uw(losses)
    assert total.item() == pytest.approx(sum(v.item() for v in losses.values()))  # s = 0
    assert set(w) == set(losses)

    opt = torch.optim.Adam(uw.parameters(), lr=0.05)
    for _ in range(600):
        total, _ = uw(losses)
        opt.zero_grad()
        total.backward()
        opt.step()
    for i, name in enumerate(uw.names):
        if name in losses:  # exp(-s) L = 1 at the optimum
            assert uw.log_vars[i].item() == pytest.approx(math.log(losses[name].item()), abs=0.02)
        else:  # an absent term gets no gradient and stays at its initial value
            assert uw.log_vars[i].item() == 0.0

    total, w = uw(losses)
    assert total.item() == pytest.approx(
        3 + sum(math.log(v.item()) for v in losses.values()), abs=0.05
    )
    assert w["video"].item() == pytest.approx(0.25, rel=0.05)


def test_uncertainty_weighting_gradient_and_clamp():
    uw = UncertaintyWeighting(["a", "b"], min_log_var=-1.0)
    la = torch.tensor(2.0, requires_grad=True)
    total, _ = uw({"a": la, "b": torch.tensor(0.5)})
    total.backward()
    # d/ds (exp(-s) L + s) = 1 - L at s = 0; d/dL = exp(-s) = 1
    assert uw.log_vars.grad.tolist() == pytest.approx([1 - 2.0, 1 - 0.5])
    assert la.grad.item() == pytest.approx(1.0)

    with torch.no_grad():
        uw.log_vars.fill_(-5.0)
    uw.zero_grad()
    total, w = uw({"a": torch.tensor(0.01)})
    total.backward()
    assert w["a"].item() == pytest.approx(math.e)  # clamped at s = -1
    assert uw.log_vars.grad[0].item() == 0.0
    with pytest.raises(ValueError):
        uw({"c": torch.tensor(1.0)})
    with pytest.raises(ValueError):
        UncertaintyWeighting(["a", "a"])


def test_weighted_sum():
    losses = {"video": torch.tensor(2.0), "lip": torch.tensor(3.0)}
    assert weighted_sum(losses, {"video": 1.0, "lip": 0.1, "aux": 5.0}).item() == pytest.approx(2.3)
    with pytest.raises(ValueError, match="lip"):
        weighted_sum(losses, {"video": 1.0})
