"""Tests of df_train.objective on hand-made batches, known draws and a stub model: the loss is
the hand computation, context frames carry no loss, mouth weight 1 is the plain loss, and the
draws of several ranks are rows of one global draw."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from df_train.config import apply_overrides
from df_train.objective import NoiseDraw, Objective, draw_noise
from df_train.recipes import get_recipe

B, T, C, H, W, DS = 2, 3, 4, 8, 8, 11
IMAGE = 32  # frames are 32 x 32: latent pixel = 4 image pixels


def _config(*sets: str):
    return apply_overrides(get_recipe("synthtalk_tiny"), ["loss.lambda_struct=0.5", *sets])


def _batch(config, *, boxes: bool = True) -> dict:
    g = torch.Generator().manual_seed(0)
    m = config.model
    # Latent pixels [2, 4) x [2, 5): the box edges lie on pixel edges, so coverage is 0 or 1.
    box = torch.tensor([2.0, 2.0, 5.0, 4.0]) * (IMAGE / W)
    return {
        "latents": torch.randn(B, T, C, H, W, generator=g),
        "struct": torch.randn(B, T, DS, generator=g),
        "audio": torch.randn(B, T, m.audio_window, m.audio_dim, generator=g),
        "ref_latent": torch.randn(B, C, H, W, generator=g),
        "has_mouth_box": torch.full((B,), boxes),
        "mouth_box": box.expand(B, T, 4).clone(),
        "image_size": [(IMAGE, IMAGE)] * B,
    }


def _draw() -> NoiseDraw:
    g = torch.Generator().manual_seed(1)
    return NoiseDraw(
        sigma_v=torch.tensor([[0.0, 0.3, 0.8], [0.5, 0.5, 1.0]]),
        sigma_s=torch.tensor([[0.0, 0.2, 0.7], [0.1, 0.4, 0.6]]),
        valid=torch.tensor([[False, True, True], [True, True, True]]),  # clip 0: 1 context frame
        eps_v=torch.randn(B, T, C, H, W, generator=g),
        eps_s=torch.randn(B, T, DS, generator=g),
        drop_audio=torch.tensor([False, True]),
        drop_ref=torch.tensor([False, False]),
    )


class StubModel:
    """Returns fixed velocities and records what it was called with."""

    def __init__(self, struct: bool = True) -> None:
        g = torch.Generator().manual_seed(2)
        self.v_v = torch.randn(B, T, C, H, W, generator=g)
        self.v_s = torch.randn(B, T, DS, generator=g) if struct else None
        self.calls = []

    def __call__(self, x, **kwargs):
        self.calls.append({"x": x, **kwargs})
        return self.v_v, self.v_s


def _objective(config) -> Objective:
    return Objective(config, device=torch.device("cpu"))


def _mean_over_valid(per_frame, valid) -> float:
    values = [float(per_frame[b][t]) for b in range(B) for t in range(T) if valid[b, t]]
    return sum(values) / len(values)


def test_loss_is_the_hand_computation():
    config = _config("loss.lambda_aux=0.3", "loss.aux_decay_steps=10")
    batch, draw, model = _batch(config), _draw(), StubModel()
    total, terms = _objective(config).loss(model, batch, draw, step=5)
    x0_v, x0_s = batch["latents"].double(), batch["struct"].double()
    sv, ss = draw.sigma_v.double(), draw.sigma_s.double()
    # The model sees both streams noised at the drawn levels, and the audio dropout.
    (call,) = model.calls
    x_v = (1 - sv[..., None, None, None]) * x0_v + sv[..., None, None, None] * draw.eps_v
    s_t = (1 - ss[..., None]) * x0_s + ss[..., None] * draw.eps_s
    torch.testing.assert_close(call["x"].double(), x_v)
    torch.testing.assert_close(call["s_BTDs"].double(), s_t)
    assert torch.equal(call["drop_audio_B"], draw.drop_audio) and call["drop_ref_B"] is None
    # Velocity MSE per frame, averaged over the frames that carry loss.
    err_v = (model.v_v.double() - (draw.eps_v - x0_v)) ** 2
    err_s = (model.v_s.double() - (draw.eps_s - x0_s)) ** 2
    video = _mean_over_valid(err_v.flatten(2).mean(2), draw.valid)
    struct = _mean_over_valid(err_s.mean(2), draw.valid)
    # L_aux: the clean estimate s_t - sigma * v against the labels, weight 0.3 * cos^2 at 5/10.
    s0_hat = s_t - ss[..., None] * model.v_s.double()
    aux = _mean_over_valid(((s0_hat - x0_s) ** 2).mean(2), draw.valid)
    w_aux = 0.3 * 0.5
    assert float(terms["loss_video"]) == pytest.approx(video, rel=1e-5)
    assert float(terms["loss_struct"]) == pytest.approx(struct, rel=1e-5)
    assert float(terms["loss_aux"]) == pytest.approx(aux, rel=1e-5)
    assert float(total) == pytest.approx(video + 0.5 * struct + w_aux * aux, rel=1e-5)


def test_context_frames_carry_no_loss():
    config = _config("loss.lambda_aux=0.3")
    batch, draw = _batch(config), _draw()
    model = StubModel()
    base_total, base = _objective(config).loss(model, batch, draw, step=0)
    # Whatever the model predicts on the context frame (clip 0, frame 0), nothing changes.
    model.v_v[0, 0] = float("nan")
    model.v_s[0, 0] = 1e6
    total, terms = _objective(config).loss(model, batch, draw, step=0)
    assert torch.isfinite(total)
    assert float(total) == float(base_total)
    assert {k: float(v) for k, v in terms.items()} == {k: float(v) for k, v in base.items()}
    # ...while a frame that carries loss does.
    model.v_v[0, 1] += 1.0
    assert float(_objective(config).loss(model, batch, draw, step=0)[0]) != float(base_total)


def test_mouth_weight_one_is_the_plain_loss_and_more_weights_the_box():
    draw, model = _draw(), StubModel()
    err = (model.v_v - (draw.eps_v - _batch(_config())["latents"])).double() ** 2
    plain = _mean_over_valid(err.flatten(2).mean(2), draw.valid)
    one = _config("loss.mouth_weight=1.0")
    _, terms = _objective(one).loss(model, _batch(one), draw, step=0)
    assert float(terms["loss_video"]) == pytest.approx(plain, rel=1e-6)
    # Weight 3 inside the box (rows 2..3, columns 2..4), 1 elsewhere: a weighted mean per frame.
    three = _config("loss.mouth_weight=3.0")
    w = torch.ones(H, W, dtype=torch.float64)
    w[2:4, 2:5] = 3.0
    per_pixel = err.mean(2)  # [B, T, H, W]
    weighted = _mean_over_valid((per_pixel * w).sum((2, 3)) / w.sum(), draw.valid)
    _, terms3 = _objective(three).loss(model, _batch(three), draw, step=0)
    assert float(terms3["loss_video"]) == pytest.approx(weighted, rel=1e-6)
    assert weighted != pytest.approx(plain, rel=1e-3)
    # Clips without a box keep the plain loss whatever the weight.
    _, no_box = _objective(three).loss(model, _batch(three, boxes=False), draw, step=0)
    assert float(no_box["loss_video"]) == pytest.approx(plain, rel=1e-6)


def test_a_model_without_structure_gets_only_the_video_term():
    config = _config("model.struct_enabled=false", "loss.lambda_aux=0.3")
    model = StubModel(struct=False)
    total, terms = _objective(config).loss(model, _batch(config), _draw(), step=0)
    assert set(terms) == {"loss_video"} and torch.equal(total, terms["loss_video"])
    assert model.calls[0]["s_BTDs"] is None and model.calls[0]["sigma_s_BT"] is None


def test_the_draws_of_several_ranks_are_rows_of_one_global_draw():
    config = _config("noise.clean_prefix_prob=0.5", "loss.audio_drop_prob=0.5")

    def draw(rank: int, world: int, batch: int) -> NoiseDraw:
        return draw_noise(
            config.noise,
            video_shape=(batch, T, C, H, W),
            struct_shape=(batch, T, DS),
            audio_drop_prob=0.5,
            ref_drop_prob=0.0,
            generator=torch.Generator().manual_seed(7),
            rank=rank,
            world_size=world,
        )

    whole = draw(0, 1, 2 * B)
    for rank in range(2):
        part = draw(rank, 2, B)
        for field in dataclasses.fields(NoiseDraw):
            got, want = getattr(part, field.name), getattr(whole, field.name)[rank::2]
            assert torch.equal(got, want), (rank, field.name)
    # Context frames are exactly the frames at level 0 of a clean prefix: no loss on them.
    assert not whole.valid.all() and whole.valid.any()
    assert (whole.sigma_v[~whole.valid] <= config.noise.sigma_ctx).all()
