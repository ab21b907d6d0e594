"""Training the TinyAutoencoder codec on SynthTalk frames."""

from __future__ import annotations

import json

import pytest
import torch

from df_core.cli import main as dualforce
from df_models.codecs import TinyAutoencoder
from df_train.codec import (
    CodecTrainConfig,
    colour_augment,
    face_colour_error,
    load_frames,
    psnr,
    random_crop,
    train_codec,
)
from df_train.config import apply_overrides
from df_train.recipes import get_recipe


def test_codec_learns_and_is_normalised(tiny_corpus, tmp_path):
    config = apply_overrides(
        get_recipe("codec_synthtalk_tiny"), [f"corpus={tiny_corpus}", f"out_dir={tmp_path}"]
    )
    summary = train_codec(config, progress=False)
    codec = TinyAutoencoder.from_pretrained(summary["codec"])
    x = load_frames(tiny_corpus, "test", 4)[:16].float()[:, None] / 127.5 - 1
    untrained = TinyAutoencoder(config.codec)
    untrained.init_weights()
    with torch.no_grad():
        trained_psnr = psnr(codec.decode(codec.encode(x)), x)
        base_psnr = psnr(untrained.decode(untrained.encode(x)), x)
    assert trained_psnr > base_psnr + 1.5, (trained_psnr, base_psnr)
    assert (
        abs(summary["normalised_latent_mean"]) < 0.5
        and 0.5 < summary["normalised_latent_std"] < 2.0
    )
    assert summary["latent_shape"] == [4, 8, 8]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == config.steps
    assert records[-1]["recon"] < 0.6 * records[0]["recon"]


def test_codec_cli_and_errors(tiny_corpus, tmp_path, capsys):
    argv = [
        "train",
        "--recipe",
        "codec_synthtalk_tiny",
        "--set",
        f"corpus={tiny_corpus}",
        "--set",
        "steps=5",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert dualforce(argv) == 0
    assert "PSNR" in capsys.readouterr().out
    assert (tmp_path / "codec" / "model.safetensors").is_file()
    assert dualforce(["train", "--recipe", "codec_synthtalk_tiny", "--out", str(tmp_path)]) == 2
    assert "corpus" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no clips"):
        load_frames(tmp_path, "train", 1)
    with pytest.raises(ValueError, match="batch_size"):
        CodecTrainConfig(batch_size=0)


def test_colour_augment_permutes_and_stays_in_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 3, 8, 8) * 2 - 1
    y = colour_augment(x, g)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert torch.equal(colour_augment(x, torch.Generator().manual_seed(0)), y)  # seeded
    # a frame of three distinct flat channels: its channel means come out permuted and rescaled,
    # so which colour goes where varies over the batch
    flat = torch.tensor([-0.5, 0.0, 0.5]).view(1, 1, 3, 1, 1).expand(256, 1, 3, 4, 4)
    out = colour_augment(flat, g).mean(dim=(1, 3, 4))
    brightest = out.argmax(dim=1)
    assert set(brightest.tolist()) == {0, 1, 2}


def test_random_crop_is_aligned_to_the_latent_grid():
    g = torch.Generator().manual_seed(1)
    x = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 1, 16, 16)
    for _ in range(20):
        c = random_crop(x, 8, 4, g)
        assert c.shape[-2:] == (8, 8)
        corner = int(c[0, 0, 0, 0, 0])
        assert (corner // 16) % 4 == 0 and (corner % 16) % 4 == 0
    with pytest.raises(ValueError, match="larger"):
        random_crop(x, 32, 4, g)


def test_face_colour_error_measures_the_centre_box():
    target = torch.zeros(2, 1, 3, 8, 8)
    recon = target.clone()
    recon[..., 2:6, 2:6] += torch.tensor([0.2, 0.0, -0.4]).view(3, 1, 1)
    recon[..., 0, :] = 1.0  # outside the box: not counted
    err = face_colour_error(recon, target)
    assert err == pytest.approx([0.2 * 127.5, 0.0, 0.4 * 127.5])


def test_crop_must_fit_the_codec_grid():
    codec = get_recipe("codec_synthtalk_tiny").codec
    with pytest.raises(ValueError, match=r"CodecTrainConfig\.crop"):
        CodecTrainConfig(codec=codec, crop=6)  # spatial factor 4
    assert CodecTrainConfig(codec=codec, crop=8, colour_aug=True).crop == 8


@pytest.mark.slow
def test_temporal_codec_learns_on_windows_and_fills_a_store(tiny_corpus, tmp_path):
    """frames_per_latent=4: the causal codec, inflated from a per-frame codec as the demo
    does it, trains on windows of consecutive frames and beats its starting point on held-out
    windows; a store extracted with it has 1 + (T-1)//4 latent frames per clip."""
    from df_data.extract import extract_store
    from df_data.store import read_clip
    from df_data.store.manifest import finished_clip_ids
    from df_models.codecs import TemporalTinyAutoencoder, load_codec

    frame_cfg = apply_overrides(
        get_recipe("codec_synthtalk_tiny"),
        [f"corpus={tiny_corpus}", f"out_dir={tmp_path / 'frame'}", "steps=100"],
    )
    frame = TinyAutoencoder.from_pretrained(train_codec(frame_cfg, progress=False)["codec"])
    config = apply_overrides(
        get_recipe("codec_synthtalk_tiny"),
        [
            f"corpus={tiny_corpus}",
            f"out_dir={tmp_path / 'codec'}",
            "frames_per_latent=4",
            "window_latents=2",
            "batch_size=10",
            "steps=150",
            f"init_from={tmp_path / 'frame' / 'codec'}",
        ],
    )
    assert config.window_frames == 5
    summary = train_codec(config, progress=False)
    codec = load_codec(summary["codec"])
    assert isinstance(codec, TemporalTinyAutoencoder) and summary["frames_per_latent"] == 4
    frames = load_frames(tiny_corpus, "test", 1)[:9].float() / 127.5 - 1  # one 9-frame window
    x = frames[None]
    start = TemporalTinyAutoencoder.inflate(frame, frames_per_latent=4).eval()
    with torch.no_grad():
        assert codec.encode(x).shape[1] == 3
        trained_psnr = psnr(codec.decode(codec.encode(x)), x)
        base_psnr = psnr(start.decode(start.encode(x)), x)
    assert trained_psnr > base_psnr + 1.0, (trained_psnr, base_psnr)
    store = tmp_path / "store"
    extract_store(tiny_corpus, store, codec=summary["codec"], progress=False)
    clip = read_clip(store, sorted(finished_clip_ids(store))[0])
    T = int(clip.metadata["frames"])
    assert clip.latents.shape[0] == 1 + (T - 1) // 4 and (T - 1) % 4 == 0
    with pytest.raises(ValueError, match="window_latents"):
        CodecTrainConfig(frames_per_latent=4, window_latents=0)


def test_a_temporal_codec_inflated_from_a_frame_codec(tiny_corpus, tmp_path):
    """init_from: the temporal codec starts from a trained per-frame codec (its bodies, head
    and normalisation), not at random; a frame codec of another shape is named."""
    from df_models.codecs import TemporalTinyAutoencoder, load_codec

    frame_cfg = apply_overrides(
        get_recipe("codec_synthtalk_tiny"),
        [f"corpus={tiny_corpus}", f"out_dir={tmp_path / 'frame'}", "steps=20"],
    )
    frame_dir = train_codec(frame_cfg, progress=False)["codec"]
    frame = TinyAutoencoder.from_pretrained(frame_dir)
    sets = [f"corpus={tiny_corpus}", "frames_per_latent=4", "window_latents=2", "batch_size=10"]
    config = apply_overrides(
        get_recipe("codec_synthtalk_tiny"),
        [*sets, f"out_dir={tmp_path / 't'}", "steps=1", "lr=0", f"init_from={frame_dir}"],
    )
    codec = load_codec(train_codec(config, progress=False)["codec"])
    assert isinstance(codec, TemporalTinyAutoencoder)
    body = torch.nn.Sequential(*list(frame.decoder)[1:]).state_dict()
    for name, value in codec.frame_decoder.state_dict().items():
        torch.testing.assert_close(value, body[name])  # lr 0: the frame codec's weights
    x = load_frames(tiny_corpus, "test", 1)[:1].float()[None] / 127.5 - 1  # one frame
    with torch.no_grad():  # a still clip: the frame codec's pixels
        still = x.expand(-1, 5, -1, -1, -1)
        torch.testing.assert_close(
            codec.decode(codec.encode(still))[:, :1],
            frame.decode(frame.encode(x)),
            atol=1e-4,
            rtol=1e-4,
        )
    other = apply_overrides(config, ["codec.base_channels=16"])
    with pytest.raises(ValueError, match="init_from"):
        train_codec(other, progress=False)
    with pytest.raises(ValueError, match="frames_per_latent > 1"):
        CodecTrainConfig(init_from=str(frame_dir))
