"""The whole pipeline with a codec that compresses time (4 video frames per latent frame):
extraction keeps every video frame's structure, training windows group it per latent frame
(``struct_raw_dim = 4 x 11``), and the exported bundle streams a video of every frame of the
audio, each with its own structure. (Here, not in df-train: it needs df-infer too.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from df_data.extract import extract_store
from df_data.media import read_video, read_wav
from df_data.store import read_clip
from df_data.store.manifest import finished_clip_ids
from df_data.synthtalk import generate_corpus
from df_infer.pipeline import StreamingGenerator
from df_models.codecs import TemporalAutoencoderConfig, TemporalTinyAutoencoder
from df_models.codecs.tiny_ae import TinyAutoencoderConfig
from df_train.config import apply_overrides
from df_train.recipes import get_recipe
from df_train.trainer import Trainer


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    """4 train clips and 1 test clip of 1.6 s at 32 x 32 (40 frames: 37 = 1 + 4 x 9 kept)."""
    root = tmp_path_factory.mktemp("synthtalk")
    generate_corpus(root / "corpus", clips=4, seconds=1.6, size=32, test_clips=1, progress=False)
    return root / "corpus"


@pytest.fixture(scope="module")
def temporal_store(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("t4")
    torch.manual_seed(0)
    spatial = TinyAutoencoderConfig(
        latent_channels=4, base_channels=8, max_channels=16, num_down=2, norm_groups=4
    )
    codec = TemporalTinyAutoencoder(TemporalAutoencoderConfig(spatial=spatial))
    codec.init_weights()
    codec.save_pretrained(root / "codec")
    extract_store(tiny_corpus, root / "store", codec=root / "codec", progress=False)
    return root / "store"


def test_the_store_keeps_every_video_frames_structure(tiny_corpus, temporal_store):
    for clip_id in sorted(finished_clip_ids(temporal_store)):
        clip = read_clip(temporal_store, clip_id)
        T = int(clip.metadata["frames"])
        assert clip.latents.shape[0] == 1 + (T - 1) // 4 and clip.struct.shape[0] == T
        split, name = clip_id.split("-", 1)
        gt = load_file(str(tiny_corpus / split / name / "gt.safetensors"))["struct"]
        torch.testing.assert_close(clip.struct, gt[:T].float())


def test_train_and_stream_with_four_frames_per_latent_frame(tiny_corpus, temporal_store, tmp_path):
    config = apply_overrides(
        get_recipe("synthtalk_tiny"),
        [
            f"data.store={temporal_store}",
            f"out_dir={tmp_path / 'run'}",
            "model.frames_per_latent=4",
            "model.struct_raw_dim=11",  # wrong on purpose: the trainer names the group
            "steps=3",
            "data.frames=3",
        ],
    )
    with pytest.raises(ValueError, match=r"44 dims \(4 video frames of 11 dims per latent"):
        Trainer(config)
    config = apply_overrides(config, ["model.struct_raw_dim=44"])
    trainer = Trainer(config)
    history = trainer.fit(progress=False)
    assert len(history) == 3 and all(np.isfinite(m.loss) for m in history)
    bundle = trainer.export_bundle(tmp_path / "bundle", sampler={"steps": 2})
    gen = StreamingGenerator.from_bundle(bundle, device="cpu")
    clip = sorted((tiny_corpus / "test").iterdir())[0]
    audio = read_wav(clip / "audio.wav")[:-300]  # not a whole number of groups
    ref = read_video(clip / "video.mp4", indices=[0])[0][0]
    frames = list(gen.frames(ref, audio))
    assert [f.index for f in frames] == list(range(-(-len(audio) // 640)))
    assert all(f.image.shape == ref.shape and f.struct.shape == (11,) for f in frames)
    # The structures of a group's 4 frames are the model's own, not copies of one another.
    structs = np.stack([f.struct for f in frames])
    assert not np.allclose(structs[1], structs[2])
