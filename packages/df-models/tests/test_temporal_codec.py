"""TemporalTinyAutoencoder: Wan's 1 + 4k frame layout, causality (a frame's latent does not
depend on later frames; a latent frame decodes to its own group alone), streaming decode equal
to whole-clip decode, exact save/load through load_codec, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from df_models.codecs import (
    TemporalTinyAutoencoder,
    TinyAutoencoder,
    codec_identity,
    load_codec,
    temporal_autoencoder_debug,
    tiny_autoencoder_debug,
)


def _codec(seed: int = 0) -> TemporalTinyAutoencoder:
    torch.manual_seed(seed)
    codec = TemporalTinyAutoencoder(temporal_autoencoder_debug())
    codec.init_weights()
    with torch.no_grad():  # non-trivial residual branches and normalisation
        for p in codec.parameters():
            p.add_(0.05 * torch.randn_like(p))
    codec.set_normalization(torch.rand(4) - 0.5, torch.rand(4) + 0.5)
    return codec.eval()


def _video(frames: int, seed: int = 0, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, 3, 16, 16, generator=g) * 2 - 1


def test_shapes_follow_the_one_plus_4k_rule():
    codec = _codec()
    assert codec.frames_per_latent == 4 and codec.spatial_factor == 4
    z = codec.encode(_video(9))
    assert z.shape == (2, 3, 4, 4, 4)
    assert codec.decode(z).shape == (2, 9, 3, 16, 16)
    assert codec.encode(_video(1)).shape == (2, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="frames must be 1 \\+ 4k"):
        codec.encode(_video(8))


@settings(deadline=None, max_examples=20)
@given(groups=st.integers(1, 4), cut=st.integers(1, 13), seed=st.integers(0, 100))
def test_a_latent_frame_reads_no_later_video_frame(groups, cut, seed):
    """Changing video frames from ``cut`` on leaves every latent frame whose group ends
    before ``cut`` unchanged (and changes the one that holds frame ``cut``)."""
    codec = _codec(seed % 3)
    frames = 1 + 4 * groups
    cut = min(cut, frames - 1)
    video = _video(frames, seed)
    later = video.clone()
    later[:, cut:] = -later[:, cut:]
    with torch.no_grad():
        a, b = codec.encode(video), codec.encode(later)
    untouched = 1 + (cut - 1) // 4  # latent frames 0 .. untouched - 1 end before frame cut
    torch.testing.assert_close(a[:, :untouched], b[:, :untouched], rtol=0, atol=0)
    assert not torch.allclose(a[:, untouched], b[:, untouched])


@settings(deadline=None, max_examples=20)
@given(groups=st.integers(1, 5), split=st.integers(1, 5), seed=st.integers(0, 100))
def test_streaming_decode_equals_the_whole_clip(groups, split, seed):
    """Decoding latent frames as they come (the first alone or with others, then any chunks)
    gives the whole clip's frames, and a group's frames depend on its latent frame only."""
    codec = _codec(seed % 3)
    z = torch.randn(2, groups, 4, 4, 4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        whole = codec.decode(z)
        split = min(split, groups)
        parts = [codec.decode_groups(z[:, :split], first=True)]
        parts += [codec.decode_groups(z[:, g : g + 1], first=False) for g in range(split, groups)]
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=1e-5, atol=1e-6)
    assert parts[0].shape[1] == 1 + 4 * (split - 1)


def test_save_load_round_trip_and_identity(tmp_path):
    codec = _codec(1)
    path = codec.save_pretrained(tmp_path / "codec")
    loaded = load_codec(path)
    assert isinstance(loaded, TemporalTinyAutoencoder)
    video = _video(5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(video), codec.encode(video), rtol=0, atol=0)
    ident = codec_identity(loaded)
    assert ident == codec_identity(codec) and ident["name"] == "TemporalTinyAutoencoder"
    tiny = TinyAutoencoder(tiny_autoencoder_debug())
    tiny.init_weights()
    assert codec_identity(tiny)["config_hash"] != ident["config_hash"]
    config = json.loads((path / "config.json").read_text())
    config["spatial"]["colour"] = 1
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown spatial fields \\['colour'\\]"):
        load_codec(path)


def test_bad_configs_name_the_field():
    from df_models.codecs import TemporalAutoencoderConfig

    with pytest.raises(ValueError, match="frames_per_latent must be at least 2"):
        TemporalAutoencoderConfig(frames_per_latent=1)
    with pytest.raises(ValueError, match="spatial must be a TinyAutoencoderConfig"):
        TemporalAutoencoderConfig(spatial={"latent_channels": 4})


def test_inflated_from_a_frame_codec_it_starts_as_that_codec_on_each_groups_mean():
    """Inflation: the encoder merges a group's features by their mean and applies the frame
    codec's latent head; the decoder gives every frame of a group the frame codec's decode.
    So on a still clip it is the frame codec, latents and pixels, whatever the frame codec."""
    torch.manual_seed(3)
    frame = TinyAutoencoder(tiny_autoencoder_debug())
    frame.init_weights()
    with torch.no_grad():
        for p in frame.parameters():
            p.add_(0.05 * torch.randn_like(p))
    frame.set_normalization(torch.rand(4) - 0.5, torch.rand(4) + 0.5)
    codec = TemporalTinyAutoencoder.inflate(frame.eval(), frames_per_latent=4).eval()
    still = _video(1).expand(-1, 9, -1, -1, -1)
    with torch.no_grad():
        z, z_frame = codec.encode(still), frame.encode(still[:, :3])
        torch.testing.assert_close(z, z_frame, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            codec.decode(z),
            frame.decode(z_frame[:, :1]).expand(-1, 9, -1, -1, -1),
            atol=1e-5,
            rtol=1e-5,
        )
        # Moving frames: the latent is the head of the group's mean features, not of one frame.
        moving = _video(9, seed=1)
        feats = codec.frame_encoder(moving[0, 1:5])
        head = torch.nn.Sequential(*list(frame.encoder)[-3:])
        expected = frame.normalize(head(feats.mean(0, keepdim=True))[None])[0]
        torch.testing.assert_close(codec.encode(moving)[0, 1:2], expected, atol=1e-5, rtol=1e-5)
    assert codec.config.spatial == frame.config
    with pytest.raises(ValueError, match="TinyAutoencoder"):
        TemporalTinyAutoencoder.inflate(codec, frames_per_latent=4)
