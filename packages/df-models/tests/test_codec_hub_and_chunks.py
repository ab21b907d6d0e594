"""Pretrained diffusers VAEs from a hub id (read from a local huggingface_hub cache laid out as
the hub writes it) and chunked encoding: chunks of any size give the whole clip's latents,
including across the Wan VAE's causal 1 + 4k frame groups."""

from __future__ import annotations

import shutil

import pytest
import torch

from df_models.codecs import DiffusersVAECodec, codec_identity, load_codec
from df_models.testing import tiny_wan_vae

diffusers = pytest.importorskip("diffusers")

WAN_MEAN, WAN_STD = [0.1, -0.2, 0.3, -0.4], [1.5, 2.0, 0.5, 3.0]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _video(t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, t, 3, 16, 16, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("wan") / "vae"
    tiny_wan_vae(WAN_MEAN, WAN_STD).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def wan_codec(wan_dir) -> DiffusersVAECodec:
    return DiffusersVAECodec.from_pretrained(wan_dir)


def test_wan_chunked_on_a_fresh_vae(wan_dir):
    """Chunked before any whole-clip call (diffusers creates the cache on first use)."""
    fresh = DiffusersVAECodec.from_pretrained(wan_dir)
    x = _video(9)
    chunked = fresh.encode_chunked(x, 4)
    with torch.no_grad():
        torch.testing.assert_close(chunked, fresh.encode(x), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def kl_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=16,
        scaling_factor=0.5,
    )
    path = tmp_path_factory.mktemp("kl") / "vae"
    vae.save_pretrained(path)
    return path


@pytest.mark.parametrize("chunk_frames", [1, 4, 5, 8, 9, 100])
def test_wan_chunked_equals_whole(wan_codec, chunk_frames):
    x = _video(13)  # 1 + 4 * 3 frames: 4 latent frames
    with torch.no_grad():
        whole = wan_codec.encode(x)
    chunked = wan_codec.encode_chunked(x, chunk_frames)
    assert chunked.shape == whole.shape == (1, 4, 4, 4, 4)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    # The cache matters: chunks encoded independently would not match from latent frame 2 on.
    with torch.no_grad():
        alone = wan_codec.encode(x[:, 8:13])  # frames 9..12 as a fresh clip (frame 8 first)
    assert not torch.allclose(alone[:, 1], whole[:, 3], atol=1e-3)


def test_wan_chunked_validates(wan_codec):
    with pytest.raises(ValueError, match=r"1 \+ 4k"):
        wan_codec.encode_chunked(_video(12), 4)
    with pytest.raises(ValueError, match="chunk_frames"):
        wan_codec.encode_chunked(_video(5), 0)


def test_image_vae_chunked_equals_whole(kl_dir):
    codec = DiffusersVAECodec.from_pretrained(kl_dir)
    x = _video(7)
    with torch.no_grad():
        whole = codec.encode(x)
    torch.testing.assert_close(codec.encode_chunked(x, 3), whole, atol=1e-5, rtol=1e-5)


def _hub_cache(root, repo_id: str, src, subfolder: str = "vae"):
    """``src`` laid into a huggingface_hub cache under ``root`` as ``repo_id`` at ``COMMIT``."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT / subfolder
    shutil.copytree(src, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return root


def test_hub_id_with_revision_from_the_local_cache(tmp_path, kl_dir, monkeypatch):
    from huggingface_hub import constants

    cache = _hub_cache(tmp_path / "hub", "someorg/tiny-kl", kl_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    local = DiffusersVAECodec.from_pretrained(kl_dir)
    for revision in (None, "main", COMMIT):
        hub = load_codec("someorg/tiny-kl", subfolder="vae", revision=revision)
        assert isinstance(hub, DiffusersVAECodec) and hub.kind == "AutoencoderKL"
        assert codec_identity(hub) == codec_identity(local)
        assert hub.source == {
            "hub_id": "someorg/tiny-kl",
            "revision": revision,
            "subfolder": "vae",
            "dir": str(cache / "models--someorg--tiny-kl" / "snapshots" / COMMIT / "vae"),
        }
    assert not any(p.requires_grad for p in hub.parameters())
    with pytest.raises(
        ValueError, match=r"'someorg/tiny-kl' \(revision v9\).*local huggingface_hub cache"
    ):
        load_codec("someorg/tiny-kl", subfolder="vae", revision="v9")
    with pytest.raises(ValueError, match=r"'someorg/absent'"):
        load_codec("someorg/absent", subfolder="vae")
    with pytest.raises(ValueError, match="applies to hub ids"):
        load_codec(str(kl_dir), revision="main")
    with pytest.raises(ValueError, match="neither an existing local directory nor a hub id"):
        DiffusersVAECodec.from_pretrained(str(tmp_path / "a" / "b" / "c"))
