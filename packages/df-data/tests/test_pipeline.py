"""``dualforce data`` end to end: synth -> extract -> inspect -> training windows."""

from __future__ import annotations

import torch

from df_core.cli import main as dualforce
from df_data.dataset import WindowConfig, WindowDataset
from df_models.codecs import TinyAutoencoder, tiny_autoencoder_debug


def test_synth_extract_inspect_and_load(tmp_path, capsys):
    torch.manual_seed(0)
    codec = TinyAutoencoder(tiny_autoencoder_debug())
    codec.init_weights()
    codec.save_pretrained(tmp_path / "codec")
    corpus, store = tmp_path / "corpus", tmp_path / "store"
    assert (
        dualforce(
            [
                "data",
                "synth",
                "--out",
                str(corpus),
                "--clips",
                "2",
                "--seconds",
                "1.2",
                "--size",
                "32",
            ]
        )
        == 0
    )
    assert sorted(p.parent.parent.name for p in corpus.glob("*/clip_*/video.mp4")) == [
        "test",
        "train",
        "train",
    ]
    assert (
        dualforce(
            [
                "data",
                "extract",
                "--src",
                str(corpus),
                "--out",
                str(store),
                "--codec",
                str(tmp_path / "codec"),
            ]
        )
        == 0
    )
    assert dualforce(["data", "inspect", str(store)]) == 0
    assert "OK" in capsys.readouterr().out
    ds = WindowDataset(store, WindowConfig(frames=8), seed=0)
    sample = ds[0]
    assert sample["latents"].shape == (8, 4, 8, 8)
    assert sample["struct"].shape == (8, 11)
    assert sample["audio"].shape == (8, 10, 80)  # (1 + 2 * 2 context) * 2 features x 80 mels
    assert torch.isfinite(sample["audio"]).all()


def test_cli_reports_bad_input(tmp_path, capsys):
    assert dualforce(["data", "inspect", str(tmp_path / "missing")]) != 0
    assert dualforce(["data", "synth", "--out", str(tmp_path), "--clips", "0"]) == 2
    assert "--clips" in capsys.readouterr().err
