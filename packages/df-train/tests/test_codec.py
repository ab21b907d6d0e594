"""Training the TinyAutoencoder codec on SynthTalk frames."""

from __future__ import annotations

import json

import pytest
import torch

from df_core.cli import main as dualforce
from df_models.codecs import TinyAutoencoder
from df_train.codec import CodecTrainConfig, load_frames, psnr, train_codec
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
