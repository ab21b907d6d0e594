"""Latent codecs: shapes and the 1 + 4k frame rule, validation, normalisation, meta-device
construction, save/load round trips, and the diffusers adapter on tiny random VAEs.

Legend: B batch, T frames, C latent channels, H W frame size, h w latent size.
"""

from __future__ import annotations

import json
import sys
import tempfile

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from df_models.codecs import (
    DiffusersVAECodec,
    LatentCodec,
    TinyAutoencoder,
    TinyAutoencoderConfig,
    diffusers_vae,
    tiny_autoencoder_base,
    tiny_autoencoder_debug,
)
from df_models.pretrained import CONFIG_NAME, WEIGHTS_NAME
from df_models.testing import tiny_wan_vae

KL_SCALE = 0.5  # scaling_factor of the tiny AutoencoderKL
KL_SHIFT = 0.1  # shift_factor of the tiny AutoencoderKL
WAN_MEAN = [0.1, -0.2, 0.3, -0.4]  # latents_mean of the tiny AutoencoderKLWan
WAN_STD = [1.5, 2.0, 0.5, 3.0]  # latents_std of the tiny AutoencoderKLWan


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: intra-op threads only add contention (10-50x slower on a busy
    2-core runner), so the module runs single-threaded and restores the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def video(b: int, t: int, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    """Random frames ``[B, T, 3, H, W]`` in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, h, w, generator=g) * 2 - 1


def tiny_ae(seed: int = 0, config: TinyAutoencoderConfig | None = None) -> TinyAutoencoder:
    model = TinyAutoencoder(config or tiny_autoencoder_debug())
    torch.manual_seed(seed)
    model.init_weights()
    return model.eval()


# Tiny diffusers VAEs (saved once per module) ------------------------------------------------------


@pytest.fixture(scope="module")
def kl_dir(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=16,
        scaling_factor=KL_SCALE,
        shift_factor=KL_SHIFT,
    )
    path = tmp_path_factory.mktemp("kl") / "vae"
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    pytest.importorskip("diffusers")
    vae = tiny_wan_vae(WAN_MEAN, WAN_STD)
    # A pipeline layout: the VAE lives in a subfolder.
    path = tmp_path_factory.mktemp("wan")
    vae.save_pretrained(path / "vae")
    return path


@pytest.fixture(scope="module")
def kl_codec(kl_dir) -> DiffusersVAECodec:
    return DiffusersVAECodec.from_pretrained(kl_dir)


@pytest.fixture(scope="module")
def wan_codec(wan_dir) -> DiffusersVAECodec:
    return DiffusersVAECodec.from_pretrained(wan_dir, subfolder="vae")


# Config ---------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    latent_channels=st.integers(1, 6),
    base_channels=st.integers(1, 12),
    max_channels=st.integers(1, 24),
    num_down=st.integers(0, 3),
    norm_groups=st.integers(1, 6),
)
def test_every_accepted_config_builds_a_working_codec(
    latent_channels, base_channels, max_channels, num_down, norm_groups
):
    # The config's checks are the network's constraints: a config it accepts must build and
    # code frames of any size the spatial factor divides (a missed norm_groups rule would fail
    # in GroupNorm here).
    kwargs = dict(
        latent_channels=latent_channels,
        base_channels=base_channels,
        max_channels=max_channels,
        num_down=num_down,
        norm_groups=norm_groups,
    )
    try:
        config = TinyAutoencoderConfig(**kwargs)
    except ValueError as e:
        assert str(e).startswith("TinyAutoencoderConfig.")
        return
    model = TinyAutoencoder(config)
    side = 2 * config.spatial_factor
    with torch.no_grad():
        z = model.encode(torch.zeros(1, 1, 3, side, side))
        assert z.shape == (1, 1, latent_channels, 2, 2)
        assert model.decode(z).shape == (1, 1, 3, side, side)


def test_config_presets():
    assert tiny_autoencoder_base().spatial_factor == 8
    assert tiny_autoencoder_base().level_channels == (32, 64, 128, 128)
    assert tiny_autoencoder_debug().level_channels == (8, 16, 16)


# Shapes ---------------------------------------------------------------------------------------------


def test_latent_shape_image_codec():
    model = TinyAutoencoder(tiny_autoencoder_debug())  # spatial_factor 4, C 4
    assert model.frames_per_latent == 1
    assert model.latent_shape(7, 16, 32) == (7, 4, 4, 8)
    assert model.video_frames(7) == 7
    for args, name in [((3, 18, 16), "height"), ((3, 16, 10), "width"), ((0, 16, 16), "frames")]:
        with pytest.raises(ValueError, match=name):
            model.latent_shape(*args)


def test_latent_shape_wan_rule(wan_codec):
    assert wan_codec.frames_per_latent == 4
    assert wan_codec.spatial_factor == 4
    for frames, latent_frames in [(1, 1), (5, 2), (9, 3), (81, 21)]:
        assert wan_codec.latent_shape(frames, 16, 16) == (latent_frames, 4, 4, 4)
        assert wan_codec.video_frames(latent_frames) == frames
    for frames in (2, 4, 6, 8):
        with pytest.raises(ValueError, match="frames must be 1 \\+ 4k"):
            wan_codec.latent_shape(frames, 16, 16)
    with pytest.raises(ValueError, match="height"):
        wan_codec.latent_shape(5, 18, 16)


def test_tiny_encode_decode_shapes_and_range():
    model = tiny_ae()
    x = video(2, 3)
    z = model.encode(x)
    assert z.shape == (2, 3, 4, 4, 4)
    y = model.decode(z)
    assert y.shape == x.shape
    y_far = model.decode(50 * torch.randn(1, 2, 4, 4, 4))
    assert y_far.abs().max() <= 1.0


def test_frames_are_independent():
    model = tiny_ae()
    x = video(2, 3)
    z = model.encode(x)
    torch.testing.assert_close(model.encode(x[:, 1:2]), z[:, 1:2])
    torch.testing.assert_close(model.decode(z[1:, :2]), model.decode(z)[1:, :2])


def test_forward_returns_reconstruction_and_raw_latents():
    model = tiny_ae()
    model.set_normalization([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0])
    x = video(1, 2)
    recon, z_raw = model(x)
    torch.testing.assert_close(z_raw, model.encode_raw(x))
    torch.testing.assert_close(recon, model.decode(model.encode(x)), atol=1e-5, rtol=1e-5)
    (recon.square().mean() + z_raw.square().mean()).backward()
    assert all(p.grad is not None for p in model.parameters())


# Validation -----------------------------------------------------------------------------------------


def test_input_validation():
    model = tiny_ae()
    with pytest.raises(ValueError, match="5-D"):
        model.encode(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="3 channels"):
        model.encode(torch.zeros(1, 2, 4, 16, 16))
    with pytest.raises(ValueError, match="3 channels"):  # [B, C, T, H, W] by mistake
        model.encode(torch.zeros(1, 3, 2, 16, 16))
    with pytest.raises(ValueError, match="height"):
        model.encode(torch.zeros(1, 2, 3, 18, 16))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        model.encode(torch.full((1, 1, 3, 16, 16), 255.0))
    with pytest.raises(ValueError, match="floating point"):
        model.encode(torch.zeros(1, 1, 3, 16, 16, dtype=torch.uint8))
    model.encode(torch.full((1, 1, 3, 16, 16), 255.0), check_range=False)
    with pytest.raises(ValueError, match="latent_channels=4"):
        model.decode(torch.zeros(1, 2, 3, 4, 4))
    with pytest.raises(ValueError, match="5-D"):
        model.decode(torch.zeros(2, 4, 4, 4))


def test_is_abstract():
    with pytest.raises(TypeError):
        LatentCodec(latent_channels=4, spatial_factor=8)  # type: ignore[abstract]


# Meta device ----------------------------------------------------------------------------------------


def test_meta_build_then_init_matches_cpu_build():
    with torch.device("meta"):
        meta_model = TinyAutoencoder(tiny_autoencoder_debug())
    assert all(p.is_meta for p in meta_model.parameters())
    meta_model.to_empty(device="cpu")
    torch.manual_seed(3)
    meta_model.init_weights()
    cpu_model = tiny_ae(seed=3)
    meta_state, cpu_state = meta_model.state_dict(), cpu_model.state_dict()
    assert meta_state.keys() == cpu_state.keys()
    for key, value in cpu_state.items():
        torch.testing.assert_close(meta_state[key], value, rtol=0, atol=0, msg=key)
    assert torch.equal(meta_model.latent_std, torch.ones(4))
    x = video(1, 1)
    torch.testing.assert_close(meta_model.eval().encode(x), cpu_model.encode(x), rtol=0, atol=0)


# Save / load ----------------------------------------------------------------------------------------


def assert_same_model(a: TinyAutoencoder, b: TinyAutoencoder) -> None:
    assert a.config == b.config
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    x = video(1, 2, h=4 * a.spatial_factor, w=2 * a.spatial_factor, seed=5)
    z = a.encode(x)
    assert torch.equal(z, b.encode(x))
    assert torch.equal(a.decode(z), b.decode(z))


def test_save_load_round_trip(tmp_path):
    model = tiny_ae(seed=1)
    model.set_normalization([0.5, -0.5, 0.0, 1.0], [1.0, 2.0, 3.0, 0.25])
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["kind"] == "TinyAutoencoder"
    assert config["latent_channels"] == 4
    assert "latent_mean" in load_file(str(tmp_path / WEIGHTS_NAME))
    loaded = TinyAutoencoder.from_pretrained(tmp_path)
    assert not loaded.training
    assert all(p.requires_grad and p.device.type == "cpu" for p in loaded.parameters())
    assert_same_model(model, loaded)


@settings(max_examples=6, deadline=None)  # each example writes a model to disk
@given(
    latent_channels=st.integers(1, 5),
    num_down=st.integers(0, 2),
    blocks_per_level=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_save_load_round_trip_property(latent_channels, num_down, blocks_per_level, seed):
    config = TinyAutoencoderConfig(
        latent_channels=latent_channels,
        base_channels=4,
        max_channels=8,
        num_down=num_down,
        blocks_per_level=blocks_per_level,
        norm_groups=2,
    )
    model = tiny_ae(seed=seed, config=config)
    g = torch.Generator().manual_seed(seed)
    model.set_normalization(
        torch.randn(latent_channels, generator=g), torch.rand(latent_channels, generator=g) + 0.5
    )
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        assert_same_model(model, TinyAutoencoder.from_pretrained(directory))


@pytest.mark.parametrize("tamper", ["extra", "missing"])
def test_tampered_weights_name_the_key(tmp_path, tamper):
    tiny_ae().save_pretrained(tmp_path)
    state = load_file(str(tmp_path / WEIGHTS_NAME))
    if tamper == "extra":
        state["decoder.surprise"] = torch.zeros(2)
        key = "decoder.surprise"
    else:
        key = "encoder.0.weight"
        del state[key]
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        TinyAutoencoder.from_pretrained(tmp_path)


def test_tampered_weights_shape(tmp_path):
    tiny_ae().save_pretrained(tmp_path)
    state = load_file(str(tmp_path / WEIGHTS_NAME))
    state["latent_std"] = torch.ones(5)
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(ValueError, match="latent_std"):
        TinyAutoencoder.from_pretrained(tmp_path)


@pytest.mark.parametrize("tamper", ["unknown", "missing", "kind", "invalid"])
def test_tampered_config(tmp_path, tamper):
    tiny_ae().save_pretrained(tmp_path)
    path = tmp_path / CONFIG_NAME
    config = json.loads(path.read_text())
    if tamper == "unknown":
        config["dropout"] = 0.1
        match = "dropout"
    elif tamper == "missing":
        del config["norm_groups"]
        match = "norm_groups"
    elif tamper == "kind":
        config["kind"] = "DualForceDiT"
        match = "kind"
    else:
        config["norm_groups"] = 3
        match = "norm_groups"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        TinyAutoencoder.from_pretrained(tmp_path)


def test_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        TinyAutoencoder.from_pretrained(tmp_path / "nowhere")


# Normalisation --------------------------------------------------------------------------------------


def test_set_normalization_is_inverted_by_decode():
    model = tiny_ae()
    x = video(2, 2)
    z_raw = model.encode_raw(x)
    y_identity = model.decode(model.encode(x))
    mean, std = torch.tensor([0.3, -1.0, 2.0, 0.0]), torch.tensor([0.5, 2.0, 1.0, 4.0])
    model.set_normalization(mean, std)
    z = model.encode(x)
    torch.testing.assert_close(z, (z_raw - mean[:, None, None]) / std[:, None, None])
    torch.testing.assert_close(model.decode(z), y_identity, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.denormalize(z), z_raw, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("mean", "std", "match"),
    [
        ([0.0] * 3, [1.0] * 4, "mean_C"),
        ([0.0] * 4, [1.0, 1.0, 0.0, 1.0], "std_C must be positive"),
        ([0.0, float("nan"), 0.0, 0.0], [1.0] * 4, "mean_C must be finite"),
    ],
)
def test_set_normalization_validates(mean, std, match):
    with pytest.raises(ValueError, match=match):
        tiny_ae().set_normalization(mean, std)


def test_estimate_normalization_standardises():
    model = tiny_ae()
    model.set_normalization([5.0] * 4, [9.0] * 4)  # the estimate is of raw latents: ignored
    batches = [video(2, 3, seed=s) * 0.9 for s in range(3)]
    mean, std = model.estimate_normalization(batches)
    assert mean.shape == std.shape == (4,)
    model.set_normalization(mean, std)
    z = torch.cat([model.encode(x) for x in batches])
    torch.testing.assert_close(z.mean(dim=(0, 1, 3, 4)), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        z.std(dim=(0, 1, 3, 4), correction=0), torch.ones(4), atol=1e-4, rtol=0
    )
    first, _ = model.estimate_normalization(batches, max_batches=1)
    torch.testing.assert_close(first, model.encode_raw(batches[0]).mean(dim=(0, 1, 3, 4)))
    with pytest.raises(ValueError, match="video_batches"):
        model.estimate_normalization([])


# Diffusers adapter ----------------------------------------------------------------------------------


def test_kl_codec_matches_diffusers(kl_codec):
    vae = kl_codec.vae
    assert kl_codec.kind == "AutoencoderKL"
    assert (kl_codec.frames_per_latent, kl_codec.spatial_factor, kl_codec.latent_channels) == (
        1,
        2,
        4,
    )
    torch.testing.assert_close(kl_codec.latent_mean, torch.full((4,), KL_SHIFT))
    torch.testing.assert_close(kl_codec.latent_std, torch.full((4,), 1 / KL_SCALE))
    x = video(2, 3)
    with torch.no_grad():
        z = kl_codec.encode(x)
        assert z.shape == (2, 3, *kl_codec.latent_shape(3, 16, 16)[1:])
        x_N = x.flatten(0, 1)
        expected = (vae.encode(x_N).latent_dist.mode() - KL_SHIFT) * KL_SCALE
        torch.testing.assert_close(z.flatten(0, 1), expected, atol=1e-6, rtol=1e-5)
        y = kl_codec.decode(z)
        expected_y = vae.decode(z.flatten(0, 1) / KL_SCALE + KL_SHIFT).sample.clamp(-1, 1)
        assert y.shape == x.shape
        torch.testing.assert_close(y.flatten(0, 1), expected_y, atol=1e-6, rtol=1e-5)


def test_kl_codec_sampling(kl_codec):
    x = video(1, 2)
    with torch.no_grad():
        mode = kl_codec.encode(x)
        a = kl_codec.encode(x, sample=True, generator=torch.Generator().manual_seed(0))
        b = kl_codec.encode(x, sample=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert not torch.allclose(a, mode)


def test_codec_is_frozen(kl_codec):
    assert all(not p.requires_grad for p in kl_codec.vae.parameters())
    kl_codec.train()
    assert kl_codec.training and not kl_codec.vae.training
    kl_codec.eval()


def test_wan_codec_matches_diffusers(wan_codec):
    vae = wan_codec.vae
    assert wan_codec.kind == "AutoencoderKLWan"
    mean, std = torch.tensor(WAN_MEAN)[:, None, None], torch.tensor(WAN_STD)[:, None, None]
    x = video(1, 5)
    with torch.no_grad():
        z = wan_codec.encode(x)
        assert z.shape == (1, 2, 4, 4, 4)
        raw_BCTHW = vae.encode(x.permute(0, 2, 1, 3, 4)).latent_dist.mode()
        expected = (raw_BCTHW.permute(0, 2, 1, 3, 4) - mean) / std
        torch.testing.assert_close(z, expected, atol=1e-6, rtol=1e-5)
        y = wan_codec.decode(z)
        assert y.shape == x.shape
        expected_y = vae.decode((z * std + mean).permute(0, 2, 1, 3, 4)).sample
        torch.testing.assert_close(y, expected_y.permute(0, 2, 1, 3, 4), atol=1e-6, rtol=1e-5)
        with pytest.raises(ValueError, match="frames must be 1 \\+ 4k"):
            wan_codec.encode(video(1, 4))


def test_from_pretrained_errors(tmp_path, kl_dir, wan_dir):
    missing = tmp_path / "no_such_vae"
    with pytest.raises(ValueError, match="no_such_vae"):
        DiffusersVAECodec.from_pretrained(missing)
    with pytest.raises(ValueError, match=r"config\.json"):
        DiffusersVAECodec.from_pretrained(wan_dir)  # the VAE is in subfolder "vae"
    with pytest.raises(ValueError, match="kind"):
        DiffusersVAECodec.from_pretrained(kl_dir, kind="AutoencoderTiny")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="UNet2DModel"):
        DiffusersVAECodec.from_pretrained(other)
    with pytest.raises(ValueError, match="vae must be one of"):
        DiffusersVAECodec(torch.nn.Linear(2, 2))


def test_explicit_kind_and_dtype(kl_dir):
    codec = DiffusersVAECodec.from_pretrained(
        kl_dir, kind="AutoencoderKL", torch_dtype=torch.bfloat16
    )
    assert codec.vae_dtype == torch.bfloat16
    assert codec.latent_std.dtype == torch.float32
    with torch.no_grad():
        z = codec.encode(video(1, 1))
    assert z.dtype == torch.float32 and torch.isfinite(z).all()


def test_kl_per_channel_statistics():
    diffusers = pytest.importorskip("diffusers")
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8,),
        latent_channels=2,
        norm_num_groups=4,
        scaling_factor=0.5,
        latents_mean=(1.0, 2.0),
        latents_std=(3.0, 4.0),
    )
    codec = DiffusersVAECodec(vae)
    torch.testing.assert_close(codec.latent_mean, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(codec.latent_std, torch.tensor([6.0, 8.0]))


def test_missing_diffusers_is_an_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"df-models\[diffusers\]"):
        diffusers_vae._import_diffusers()
