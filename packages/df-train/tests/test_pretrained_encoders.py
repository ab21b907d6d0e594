"""Training on a store extracted with pretrained encoders (tiny HF folders): stacked HuBERT
layers into the learned layer sum, DINOv2 reference tokens with the random-frame augmentation
and CFG dropout; the exported bundle records both encoders."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from df_data.encoders.image import build_ref_encoder
from df_data.encoders.spec import EncoderSpec
from df_data.encoders.testing import tiny_image_folder, tiny_speech_folder
from df_data.extract import extract_store
from df_data.features import build_audio_encoder
from df_train.config import apply_overrides
from df_train.recipes import get_recipe, hdtf_base
from df_train.trainer import Trainer


@pytest.fixture(scope="module")
def encoder_store(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("enc_store")
    from df_models.codecs import TinyAutoencoder, tiny_autoencoder_debug

    torch.manual_seed(0)
    codec = TinyAutoencoder(tiny_autoencoder_debug())
    codec.init_weights()
    codec.save_pretrained(root / "codec")
    audio = build_audio_encoder(
        "hubert",
        model=str(tiny_speech_folder(root / "hubert")),
        layer="all",
        context=4,
        hop=3,
        lookahead=2,
    )
    ref = build_ref_encoder("dinov2", model=str(tiny_image_folder(root / "dinov2")))
    extract_store(
        tiny_corpus,
        root / "store",
        codec=root / "codec",
        encoder=audio,
        ref_encoder=ref,
        ref_frames=4,
        progress=False,
    )
    return str(root / "store"), audio, ref


def _config(store, out, **loss):
    config = apply_overrides(
        get_recipe("synthtalk_tiny"),
        [f"data.store={store}", f"out_dir={out}", "steps=4", "data.ref_other_prob=0.5"],
    )
    model = config.model.replace(
        audio_dim=32, audio_layers=3, ref_tokens_enabled=True, ref_feature_dim=32
    )
    spec = EncoderSpec(audio_encoder="hubert", audio_layer="all", ref_encoder="dinov2")
    return dataclasses.replace(
        config,
        model=model,
        data=dataclasses.replace(config.data, encoders=spec),
        loss=dataclasses.replace(config.loss, **loss),
        ckpt_every=1000,
    )


def test_trains_with_reference_tokens_and_stacked_layers(encoder_store, tmp_path):
    store, audio, ref = encoder_store
    trainer = Trainer(_config(store, tmp_path, ref_drop_prob=0.5, lambda_lip=0.1))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    history = trainer.fit(progress=False)
    assert len(history) == 4 and all(torch.isfinite(torch.tensor(m.loss)) for m in history)
    after = trainer.model.state_dict()
    for name in ("ref_proj.weight", "audio_proj.layer_logits"):
        assert not torch.equal(before[name], after[name]), name
    path = trainer.export_bundle(tmp_path / "bundle")
    meta = json.loads((path / "inference.json").read_text())
    assert meta["audio_encoder"]["config_hash"] == audio.config_hash
    assert meta["audio_encoder"]["layer"] == "all" and meta["audio_encoder"]["layers"] == 3
    assert meta["ref_encoder"]["config_hash"] == ref.config_hash


def test_dropped_reference_tokens_do_not_reach_the_model(encoder_store, tmp_path):
    """CFG dropout: with every reference dropped the loss ignores the tokens' values."""
    store, _, _ = encoder_store
    trainer = Trainer(_config(store, tmp_path, ref_drop_prob=1.0))
    from df_data.dataset import collate_windows
    from df_models.testing import randomize

    randomize(trainer.model, 0)  # a fresh model's cross-attention outputs are zero
    batch = collate_windows([trainer.dataset[i] for i in range(2)])
    other = {**batch, "ref_tokens": torch.randn_like(batch["ref_tokens"]) * 5}
    draw = trainer.objective.draw(batch, torch.Generator().manual_seed(0))
    assert bool(draw.drop_ref.all())
    a, _ = trainer.objective.loss(trainer.model, batch, draw, step=0)
    b, _ = trainer.objective.loss(trainer.model, other, draw, step=0)
    torch.testing.assert_close(a, b)
    kept = dataclasses.replace(draw, drop_ref=torch.zeros_like(draw.drop_ref))
    c, _ = trainer.objective.loss(trainer.model, batch, kept, step=0)
    d, _ = trainer.objective.loss(trainer.model, other, kept, step=0)
    assert not torch.allclose(c, d)


def test_a_store_that_does_not_match_the_model_is_named(encoder_store, tmp_path):
    store, _, _ = encoder_store
    config = _config(store, tmp_path)
    with pytest.raises(ValueError, match="audio_layers"):
        Trainer(dataclasses.replace(config, model=config.model.replace(audio_layers=1)))
    with pytest.raises(ValueError, match="ref_feature_dim"):
        Trainer(dataclasses.replace(config, model=config.model.replace(ref_feature_dim=16)))
    last = dataclasses.replace(config.data, encoders=EncoderSpec(audio_encoder="hubert"))
    with pytest.raises(ValueError, match=r"audio_layer='all'.*data.encoders.audio_layer is 'last'"):
        Trainer(dataclasses.replace(config, data=last))


def test_hdtf_base_names_the_proposals_encoders():
    config = hdtf_base()
    spec = config.data.encoders
    assert spec.audio_encoder == "hubert" and spec.audio_layer == "all"
    assert spec.audio_model == "facebook/hubert-large-ls960-ft"
    assert spec.ref_encoder == "dinov2" and spec.ref_model == "facebook/dinov2-base"
    m = config.model
    assert (m.audio_dim, m.audio_layers) == (1024, 25)  # hubert-large: embeddings + 24 layers
    assert m.ref_tokens_enabled and m.ref_feature_dim == 768
    assert config.loss.ref_drop_prob > 0
    assert "--audio-layer" in spec.cli_args()
