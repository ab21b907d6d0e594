"""Tests of df_train.lipsync: the crop samples the box exactly, the InfoNCE candidates and
masking, gradients into the mouth latents only, and a synthetic task showing that the loss can
measure audio-mouth correspondence."""

from __future__ import annotations

import math

import pytest
import torch

from df_train.lipsync import LipSyncConfig, LipSyncLoss, crop_and_resize


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
        lip = LipSyncLoss(C, DA, LA, LipSyncConfig(embed_dim=32, hidden=48))
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
    lip = LipSyncLoss(C, DA, LA, LipSyncConfig(embed_dim=16, hidden=16, min_shift=2))
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
    same_only = LipSyncLoss(
        C, DA, LA, LipSyncConfig(embed_dim=16, hidden=16, min_shift=2, cross_clip=False)
    )
    _, m_same = same_only(z, box, audio)
    # frame t of 6 has 1 + #{t': |t - t'| >= 2} candidates: t = 0, 5 -> 5; the others -> 4.
    assert m_same["chance"].item() == pytest.approx((2 / 5 + 4 / 4) / 6, rel=1e-5)


def test_lip_sync_loss_gradient_reaches_mouth_latents_only():
    g = torch.Generator().manual_seed(3)
    lip = LipSyncLoss(C, DA, LA, LipSyncConfig(embed_dim=16, hidden=16, symmetric=True))
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
    lip = LipSyncLoss(C, DA, LA, LipSyncConfig(embed_dim=16, hidden=16))
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
    with pytest.raises(ValueError, match=r"LipSyncConfig\.min_shift"):
        LipSyncConfig(min_shift=0)
    with pytest.raises(ValueError, match=r"LipSyncConfig\.audio_pool"):
        LipSyncConfig(audio_pool="max")
    with pytest.raises(ValueError, match=r"LipSyncLoss\.audio_window"):
        LipSyncLoss(C, DA, 0)
    lip = LipSyncLoss(C, DA, LA, LipSyncConfig(embed_dim=8, hidden=8, learnable_temperature=False))
    assert "log_scale" not in dict(lip.named_parameters())
    z = torch.zeros(1, 4, C, H, W)
    with pytest.raises(ValueError, match="audio_BTLDa"):
        lip(z, torch.zeros(1, 4, 4), torch.zeros(1, 4, LA + 1, DA))
    with pytest.raises(ValueError, match="valid_BT"):
        lip(z, torch.zeros(1, 4, 4), torch.zeros(1, 4, LA, DA), torch.ones(1, 4))
