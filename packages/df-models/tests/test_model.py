"""Presets, initialisation, save/load and input validation of the DualForce DiT."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from df_models import (
    DualForceConfig,
    DualForceDiT,
    base,
    gather_audio_windows,
    synthtalk_small,
    tiny,
)
from df_models.testing import random_inputs, random_model


@pytest.mark.parametrize(
    ("preset", "low", "high"),
    [(tiny, 1e3, 5e4), (synthtalk_small, 1e6, 1e7), (base, 1.0e9, 1.5e9)],
)
def test_presets_build_on_meta_with_parameter_counts_in_range(preset, low, high):
    with torch.device("meta"):
        model = DualForceDiT(preset())
    count = sum(p.numel() for p in model.parameters())
    assert low <= count <= high, f"{preset.__name__}: {count:,} parameters"
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize("preset", [tiny, synthtalk_small, base])
def test_forward_shapes_on_meta(preset):
    config = preset()
    with torch.device("meta"):
        model = DualForceDiT(config)
        x = random_inputs_meta(config, batch=1, frames=2)
        v, s = model(**x)
    assert v.shape == x["z_BTCHW"].shape
    assert s.shape == (1, 2, config.struct_raw_dim)


def random_inputs_meta(config, batch, frames):
    c = config
    return {
        "z_BTCHW": torch.empty(batch, frames, c.latent_channels, c.latent_height, c.latent_width),
        "s_BTDs": torch.empty(batch, frames, c.struct_raw_dim),
        "sigma_v_BT": torch.empty(batch, frames),
        "sigma_s_BT": torch.empty(batch, frames),
        "audio_BTLDa": torch.empty(batch, frames, c.audio_window, c.audio_dim),
        "ref_latent_BCHW": torch.empty(batch, c.latent_channels, c.latent_height, c.latent_width),
        "ref_feats_BRD": torch.empty(batch, 4, c.ref_feature_dim) if c.ref_tokens_enabled else None,
    }


def test_meta_build_then_init_weights():
    config = tiny(ref_tokens_enabled=True)
    with torch.device("meta"):
        model = DualForceDiT(config)
    model.to_empty(device="cpu")
    model.init_weights()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # AdaLN-Zero and zero heads: a fresh model predicts zero velocity.
    v, s = model(**random_inputs(config, 2, 3, seed=0))
    assert torch.count_nonzero(v) == 0 and torch.count_nonzero(s) == 0
    # Bridges start closed: tanh(0) = 0.
    alphas = [b.video.bridge_alpha for b in model.blocks if b.video.bridge is not None]
    alphas += [
        b.struct.bridge_alpha
        for b in model.blocks
        if b.struct is not None and b.struct.bridge is not None
    ]
    assert alphas and all(float(a.detach()) == 0.0 for a in alphas)


def test_closed_bridge_keeps_video_independent_of_structure():
    """With the gates at 0 (as at init) the video stream ignores the struct stream entirely."""
    config = tiny(n_fusion=2)
    model = random_model(config, seed=3)
    with torch.no_grad():
        for block in model.blocks:
            if block.video.bridge is not None:
                block.video.bridge_alpha.zero_()
    x = random_inputs(config, 1, 3, seed=1)
    y = dict(x, s_BTDs=torch.randn_like(x["s_BTDs"]), sigma_s_BT=torch.rand_like(x["sigma_s_BT"]))
    with torch.no_grad():
        v1, s1 = model(**x)
        v2, s2 = model(**y)
    torch.testing.assert_close(v1, v2)
    assert not torch.allclose(s1, s2)
    # Opening the gate lets structure in.
    with torch.no_grad():
        model.blocks[0].video.bridge_alpha.fill_(1.0)
        assert not torch.allclose(model(**x)[0], model(**y)[0])


def test_save_and_load_rebuild_the_model_exactly(tmp_path):
    config = tiny(ref_tokens_enabled=True, bridge_temporal="causal", window=2)
    model = random_model(config, seed=5)
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["kind"] == "DualForceDiT"
    loaded = DualForceDiT.from_pretrained(tmp_path / "m")
    assert loaded.config == config
    for (k1, v1), (k2, v2) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2)
    x = random_inputs(config, 2, 3, seed=0)
    with torch.no_grad():
        torch.testing.assert_close(model(**x), loaded(**x), rtol=0, atol=0)


def test_loading_reports_missing_and_unexpected_keys(tmp_path):
    model = random_model(tiny(), seed=0)
    model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["extra.weight"] = torch.zeros(1)
    del state["patch_embed.proj.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"patch_embed\.proj\.weight.*extra\.weight"):
        DualForceDiT.from_pretrained(tmp_path)


def test_loading_rejects_other_kinds_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match=r"config\.json"):
        DualForceDiT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"kind": "TinyAutoencoder"}))
    with pytest.raises(ValueError, match="kind"):
        DualForceDiT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"kind": "DualForceDiT", "video_width": 3}))
    with pytest.raises(ValueError, match="video_width"):
        DualForceDiT.from_pretrained(tmp_path)


config_overrides = st.fixed_dictionaries(
    {},
    optional={
        "latent_channels": st.integers(0, 4),
        "latent_height": st.integers(1, 6),
        "latent_width": st.integers(1, 6),
        "patch_size": st.integers(1, 3),
        "frames_per_latent": st.integers(1, 2),
        "video_dim": st.sampled_from([8, 12, 13, 16, 24, 32]),
        "video_heads": st.integers(1, 4),
        "video_depth": st.integers(1, 3),
        "struct_enabled": st.booleans(),
        "struct_raw_dim": st.integers(1, 5),
        "struct_tokens": st.integers(1, 3),
        "struct_dim": st.sampled_from([4, 6, 8, 12]),
        "struct_depth": st.integers(1, 4),
        "struct_heads": st.integers(1, 3),
        "n_fusion": st.integers(-1, 3),
        "bridge": st.sampled_from(["bidirectional", "struct_to_video", "off", "sideways"]),
        "bridge_temporal": st.sampled_from(["same_frame", "causal", "future"]),
        "audio_layers": st.integers(1, 2),
        "audio_context": st.integers(0, 2),
        "audio_into": st.sampled_from(["shallow", "all"]),
        "ref_tokens_enabled": st.booleans(),
        "ref_into": st.sampled_from(["shallow", "all"]),
        "window": st.one_of(st.none(), st.integers(0, 3)),
        "mlp_ratio": st.sampled_from([0.0, 0.5, 2.0]),
        "qk_norm": st.booleans(),
    },
)


@given(overrides=config_overrides, frames=st.integers(1, 3))
def test_a_config_is_rejected_naming_a_field_or_builds_a_working_model(overrides, frames):
    """Validation and the model agree: every config __post_init__ accepts builds a model whose
    forward runs with the right shapes and survives config.json; every one it rejects is
    rejected with a ValueError naming ``DualForceConfig.<field>``."""
    try:
        config = tiny(**overrides)
    except ValueError as error:
        named = re.findall(r"DualForceConfig\.(\w+)", str(error))
        assert named and named[0] in {f.name for f in dataclasses.fields(DualForceConfig)}, error
        return
    model = random_model(config)
    x = random_inputs(config, 1, frames, seed=0)
    with torch.no_grad():
        v, s = model(**x)
    assert v.shape == x["z_BTCHW"].shape and torch.isfinite(v).all()
    if config.struct_enabled:
        assert s.shape == x["s_BTDs"].shape and torch.isfinite(s).all()
    else:
        assert s is None
    assert DualForceConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        # The model would build and run with these, but wrongly; only validation can tell.
        # 8 < 2 * 2 * 4: the head could not predict a whole token's velocity.
        ({"video_dim": 8, "video_heads": 2}, r"video_dim=8 must be at least .* = 16"),
        # Audio would reach no block: the model would run deaf.
        ({"n_fusion": 0, "audio_into": "shallow"}, "n_fusion=0 with audio_into"),
        ({"colour": 1}, "colour"),
    ],
)
def test_configs_that_would_run_wrongly_are_rejected(changes, field):
    with pytest.raises(ValueError, match=field):
        tiny(**changes)


def test_config_is_keyword_only_and_replace_validates():
    with pytest.raises(TypeError):  # positional values would say nothing of what they set
        DualForceConfig(4, 4)
    c = tiny()
    assert c.replace(window=3).window == 3 and c.window is None
    with pytest.raises(ValueError, match=r"DualForceConfig\.window"):
        c.replace(window=0)


def test_wrong_input_shapes_name_the_argument():
    config = tiny()
    model = random_model(config)
    x = random_inputs(config, 1, 2, seed=0)
    with pytest.raises(ValueError, match="z_BTCHW"):
        model(**dict(x, z_BTCHW=x["z_BTCHW"][..., :2]))
    with pytest.raises(ValueError, match="s_BTDs"):
        model(**dict(x, s_BTDs=None))
    with pytest.raises(ValueError, match="ref_latent_BCHW"):
        model(**dict(x, ref_latent_BCHW=x["ref_latent_BCHW"][:, :1]))
    with pytest.raises(ValueError, match="audio"):
        model(**dict(x, audio_BTLDa=x["audio_BTLDa"][:, :, :2]))
    with pytest.raises(ValueError, match="window"):
        model.new_cache(1)


def test_audio_dropout_uses_the_null_tokens():
    config = tiny()
    model = random_model(config)
    x = random_inputs(config, 2, 2, seed=0)
    drop = torch.tensor([True, False])
    y = dict(x, audio_BTLDa=torch.randn_like(x["audio_BTLDa"]))
    with torch.no_grad():
        v1, _ = model(**x, drop_audio_B=drop)
        v2, _ = model(**y, drop_audio_B=drop)
    torch.testing.assert_close(v1[0], v2[0])
    assert not torch.allclose(v1[1], v2[1])


def test_struct_stream_off_returns_no_structure():
    config = tiny(struct_enabled=False)
    model = random_model(config)
    x = random_inputs(config, 1, 2, seed=0)
    v, s = model(**x)
    assert s is None and v.shape == x["z_BTCHW"].shape


def test_audio_windows_are_centred_and_aligned_at_two_features_per_frame():
    # Feature value = its index, so a window shows which feature frames it took.
    a = torch.arange(1, 13, dtype=torch.float32)[None, :, None]  # 12 features = 6 video frames
    w = gather_audio_windows(a, 6, feats_per_frame=2, frames_per_latent=1, context=1)
    assert w.shape == (1, 6, 6, 1)
    assert w[0, 0, :, 0].tolist() == [0, 0, 1, 2, 3, 4]  # frame 0: features 0..1, +-1 frame, padded
    assert w[0, 2, :, 0].tolist() == [3, 4, 5, 6, 7, 8]  # frame 2 owns features 4, 5 (values 5, 6)
    assert w[0, 5, :, 0].tolist() == [9, 10, 11, 12, 0, 0]
    # Four video frames per latent frame (Wan's 1 + 4k layout): latent frame 0 is video frame
    # 0 alone (its group's frames -3 .. -1 read silence), latent frame 1 frames 1 .. 4, latent
    # frame 2 frames 5 .. 8: 8 features each, plus context.
    a4 = torch.arange(1, 19.0)[None, :, None]  # 18 features = 9 video frames = 3 latent frames
    w4 = gather_audio_windows(a4, 3, frames_per_latent=4, context=0)
    assert w4[0, 0, :, 0].tolist() == [0] * 6 + [1, 2]
    assert w4[0, 1, :, 0].tolist() == list(range(3, 11))
    assert w4[0, 2, :, 0].tolist() == list(range(11, 19))
    w4c = gather_audio_windows(a4, 3, frames_per_latent=4, context=1)
    assert w4c[0, 1, :, 0].tolist() == list(range(1, 13))  # frames 0 .. 5
    torch.testing.assert_close(
        gather_audio_windows(a4, 1, frames_per_latent=4, context=1, first_frame=2), w4c[:, 2:]
    )
    # Streaming: a window starting later gives the same as the full gather.
    full = gather_audio_windows(a, 6, context=2)
    part = gather_audio_windows(a, 2, context=2, first_frame=3)
    torch.testing.assert_close(part, full[:, 3:5])


def test_every_trainable_parameter_gets_a_gradient():
    config = tiny(ref_tokens_enabled=True, audio_layers=2, bridge_temporal="causal", window=2)
    model = random_model(config, seed=4).train()
    x = random_inputs(config, 2, 3, seed=0)
    drop = torch.tensor([True, False])
    v, s = model(**x, drop_audio_B=drop, drop_ref_B=drop)
    (v.square().mean() + s.square().mean()).backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not missing, f"no gradient: {missing}"


def test_no_struct_ablation_trains():
    config = tiny(struct_enabled=False)
    model = random_model(config, seed=4).train()
    x = random_inputs(config, 2, 3, seed=0)
    v, s = model(**x)
    assert s is None
    v.square().mean().backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not missing, f"no gradient: {missing}"


def test_bf16_autocast_forward_is_finite():
    config = tiny(ref_tokens_enabled=True)
    model = random_model(config, seed=2)
    x = random_inputs(config, 2, 4, seed=1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        v, s = model(**x)
    assert torch.isfinite(v.float()).all() and torch.isfinite(s.float()).all()
    with torch.no_grad():
        v32, _ = model(**x)
    assert (v.float() - v32).abs().max() < 0.1 * v32.abs().max() + 0.1


def test_a_clean_head_returns_the_velocity_of_its_clean_prediction():
    """video_prediction="clean": the returned velocity is (z - x0_hat) / max(sigma, min), with
    x0_hat the head's output, i.e. the velocity head's output of the same weights."""
    config = tiny(video_prediction="clean", clean_sigma_min=0.05)
    model = random_model(config, 0)
    plain = DualForceDiT(dataclasses.replace(config, video_prediction="velocity"))
    plain.load_state_dict(model.state_dict())
    x = random_inputs(config, 2, 3, 0)
    sigma = torch.tensor([[0.01, 0.3, 1.0], [0.05, 0.7, 0.0]])
    args = dict(x, sigma_v_BT=sigma)
    v, s = model(**args)
    x0_hat, s_plain = plain(**args)
    expected = (x["z_BTCHW"] - x0_hat) / sigma.clamp_min(0.05)[..., None, None, None]
    torch.testing.assert_close(v, expected)
    torch.testing.assert_close(s, s_plain)
    with pytest.raises(ValueError, match="video_prediction"):
        tiny(video_prediction="eps")


def test_a_reference_residual_head_draws_the_reference_before_training():
    """video_prediction="clean_from_reference": x0_hat = ref_latent + head; a fresh model's
    head is zero, so its clean prediction of every frame, at any level, is the reference."""
    config = tiny(video_prediction="clean_from_reference")
    model = DualForceDiT(config)
    model.init_weights()
    x = random_inputs(config, 2, 3, 0)
    sigma = torch.tensor([[0.2, 0.5, 1.0], [0.05, 0.7, 0.9]])
    v, _ = model(**dict(x, sigma_v_BT=sigma))
    x0_hat = x["z_BTCHW"] - sigma[..., None, None, None] * v
    torch.testing.assert_close(x0_hat, x["ref_latent_BCHW"][:, None].expand_as(x0_hat))
    trained = random_model(config, 1)  # and with weights, the head's output is added to it
    plain = DualForceDiT(dataclasses.replace(config, video_prediction="clean"))
    plain.load_state_dict(trained.state_dict())
    args = dict(x, sigma_v_BT=sigma)
    torch.testing.assert_close(
        trained(**args)[0],
        plain(**args)[0] - x["ref_latent_BCHW"][:, None] / sigma[..., None, None, None],
    )
