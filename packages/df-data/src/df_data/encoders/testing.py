"""Tiny randomly initialised models of the real transformers classes, saved as HF folders
(``config.json``, ``model.safetensors``, ``preprocessor_config.json``) the way the released
weights come, for tests of the loading and feature code (no hub access here)."""

from __future__ import annotations

from pathlib import Path

import torch

_SPEECH = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "conv_dim": (16,) * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}


def tiny_speech_folder(
    folder: str | Path,
    kind: str = "hubert",
    *,
    stable_layer_norm: bool = True,
    do_normalize: bool = True,
    seed: int = 0,
) -> Path:
    """A tiny ``HubertModel`` / ``Wav2Vec2Model`` (32 wide, 2 layers; ``stable_layer_norm``:
    the hubert-large / wav2vec2-large layout) or ``WhisperModel`` (32 wide, 2 encoder layers,
    a 3 s input window instead of 30 s) saved in ``folder``."""
    import transformers

    folder = Path(folder)
    torch.manual_seed(seed)
    if kind == "whisper":
        config = transformers.WhisperConfig(
            d_model=32,
            encoder_layers=2,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=37,
            decoder_ffn_dim=37,
            num_mel_bins=80,
            max_source_positions=150,  # 300 mel frames: a 3 s window
            max_target_positions=32,
            vocab_size=64,
            pad_token_id=1,
            bos_token_id=2,
            eos_token_id=3,
            decoder_start_token_id=2,
            suppress_tokens=[],
            begin_suppress_tokens=[],
        )
        model = transformers.WhisperModel(config)
        processor = transformers.WhisperFeatureExtractor(feature_size=80, chunk_length=3)
    else:
        norm = {"do_stable_layer_norm": stable_layer_norm}
        norm["feat_extract_norm"] = "layer" if stable_layer_norm else "group"
        if kind == "hubert":
            model = transformers.HubertModel(transformers.HubertConfig(**_SPEECH, **norm))
        else:
            model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**_SPEECH, **norm))
        processor = transformers.Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=16000, do_normalize=do_normalize
        )
    _randomize(model, seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tiny_image_folder(folder: str | Path, kind: str = "dinov2", *, seed: int = 0) -> Path:
    """A tiny ``Dinov2Model`` (patch 14 on 56 px crops) or ``CLIPVisionModel`` (patch 8 on
    32 px crops), 32 wide, 2 layers, with its image processor, saved in ``folder``."""
    import transformers

    folder = Path(folder)
    torch.manual_seed(seed)
    common = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 37,
    }
    if kind == "dinov2":
        model = transformers.Dinov2Model(
            transformers.Dinov2Config(**common, image_size=56, patch_size=14)
        )
        processor = transformers.BitImageProcessor(
            size={"shortest_edge": 64},
            crop_size={"height": 56, "width": 56},
            do_center_crop=True,
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        )
    else:
        model = transformers.CLIPVisionModel(
            transformers.CLIPVisionConfig(**common, image_size=32, patch_size=8, projection_dim=16)
        )
        processor = transformers.CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )
    _randomize(model, seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random (LayerNorm weights near 1), so a test sees each layer's effect."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.2
            p.copy_(1 + noise if "norm" in name and name.endswith("weight") else noise)
    model.eval()
