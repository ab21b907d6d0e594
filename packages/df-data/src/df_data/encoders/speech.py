"""Pretrained speech encoders as ``AudioEncoder``s: HuBERT, wav2vec2 and Whisper's encoder.

Legend: ``N`` samples at 16 kHz, ``B`` windows, ``L`` feature frames (50 Hz), ``K`` layers kept,
``Da`` hidden size.

Built by name (``build_audio_encoder("hubert", model=..., layer=...)``): ``hubert`` (default
``facebook/hubert-large-ls960-ft``), ``wav2vec2`` (``facebook/wav2vec2-base-960h``), ``whisper``
(``openai/whisper-base``'s encoder), each from a hub id (``revision`` optional) or a local
folder (:mod:`df_data.encoders.hub`). ``layer`` is a spec of :mod:`df_data.encoders.layers`.
Features are computed window by window (:mod:`df_data.encoders.windows`), each window
normalised on its own, so ``encode`` over a clip and df-infer's streaming features agree.

``config()`` (what the store and the bundle record; hashed by ``config_hash``) holds the kind,
the weights' sha256, the layer spec, the window geometry, the normalisation and the
transformers hidden-state semantics; ``identity()`` adds the source (hub id or folder,
revision) and the build kwargs, which df-infer uses to rebuild the same encoder.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from df_core.checks import one_of, positive_int
from df_data.encoders import hub
from df_data.encoders.layers import HIDDEN_STATES_SEMANTICS, num_kept, parse_layer_spec, select
from df_data.encoders.windows import WindowGeometry, cut_windows
from df_data.features import (
    AUDIO_SAMPLE_RATE,
    SAMPLES_PER_VIDEO_FRAME,
    AudioEncoder,
    as_audio_tensor,
)

logger = logging.getLogger(__name__)

DEFAULT_MODELS = {
    "hubert": "facebook/hubert-large-ls960-ft",
    "wav2vec2": "facebook/wav2vec2-base-960h",
    "whisper": "openai/whisper-base",
}
MODEL_TYPES = {
    "hubert": {"hubert": "HubertModel"},
    "wav2vec2": {"wav2vec2": "Wav2Vec2Model"},
    "whisper": {"whisper": "WhisperModel (its encoder)"},
}
NORM_EPS = 1e-7  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm's epsilon


def zero_mean_unit_var(windows_BN: torch.Tensor) -> torch.Tensor:
    """Each window ``[B, N]`` to zero mean and unit variance (as Wav2Vec2FeatureExtractor's
    ``do_normalize``, but per window, not per utterance)."""
    mean = windows_BN.mean(dim=1, keepdim=True)
    var = windows_BN.var(dim=1, unbiased=False, keepdim=True)
    return (windows_BN - mean) / torch.sqrt(var + NORM_EPS)


class HFSpeechEncoder(AudioEncoder):
    """A frozen transformers speech encoder; features ``[L, Da]`` or ``[L, K, Da]`` at 50 Hz.

    Args:
        kind: ``hubert``, ``wav2vec2`` or ``whisper``.
        model: hub id or folder (default ``DEFAULT_MODELS[kind]``).
        revision: hub revision (not for folders).
        layer: layer spec (``"last"``, ``"k"``, ``"k1,k2"``, ``"all"``).
        context, hop, lookahead: the window geometry in video frames (module doc).
        device: where the encoder runs (``"cuda"`` for extraction on a GPU).
        batch_windows: windows per forward pass in :meth:`encode`.
    """

    def __init__(
        self,
        kind: str,
        model: str | None = None,
        *,
        revision: str | None = None,
        layer: str | int = "last",
        context: int = 25,
        hop: int = 5,
        lookahead: int = 3,
        device: str | torch.device = "cpu",
        batch_windows: int = 32,
    ) -> None:
        one_of("audio encoder kind", kind, tuple(DEFAULT_MODELS))
        self.kind, self.name = kind, kind
        self.source = hub.Source(model or DEFAULT_MODELS[kind], revision)
        self.layer = parse_layer_spec(layer)
        self.geometry = WindowGeometry(
            context=context, hop=hop, lookahead=lookahead, pad=0 if kind == "whisper" else 40
        )
        self.batch_windows = positive_int("batch_windows", batch_windows)
        self.device = torch.device(device)
        self._load()

    # Loading ---------------------------------------------------------------------------------

    def _load(self) -> None:
        import transformers

        hub.check_folder(self.source, preprocessor=True)
        config = hub.load_config(self.source, MODEL_TYPES[self.kind])
        if self.kind == "whisper":
            processor = hub.load_processor(transformers.WhisperFeatureExtractor, self.source)
            full = hub.load_pretrained(transformers.WhisperModel, self.source)
            self.model = full.get_encoder()
            self.num_layers = config.encoder_layers
            self.do_normalize = False
            max_samples = int(processor.n_samples)
            if self.geometry.samples > max_samples:
                raise ValueError(
                    f"a window of {self.geometry.frames} video frames ({self.geometry.samples} "
                    f"samples) is longer than the Whisper input of {max_samples} samples "
                    f"({hub.PREPROCESSOR_NAME} chunk_length): shorten context/hop/lookahead"
                )
        else:
            processor = hub.load_processor(transformers.Wav2Vec2FeatureExtractor, self.source)
            cls = transformers.HubertModel if self.kind == "hubert" else transformers.Wav2Vec2Model
            self.model = hub.load_pretrained(cls, self.source)
            self.num_layers = config.num_hidden_layers
            self.do_normalize = bool(processor.do_normalize)
        rate = getattr(processor, "sampling_rate", AUDIO_SAMPLE_RATE)
        if rate != AUDIO_SAMPLE_RATE:
            raise ValueError(
                f"{hub.PREPROCESSOR_NAME} of {self.source.describe()} has sampling_rate {rate}; "
                f"the encoders take {AUDIO_SAMPLE_RATE} Hz audio"
            )
        self.processor = processor
        self.hidden_size = int(config.d_model if self.kind == "whisper" else config.hidden_size)
        self.stable_layer_norm = bool(getattr(config, "do_stable_layer_norm", False))
        self.layers = num_kept(self.layer, self.num_layers)  # validates the indices too
        self.weights_sha256 = hub.weights_sha256(self.model)
        self.model.to(self.device)
        logger.info(
            "audio encoder %s from %s: %d layers of %d, layer %s, weights %s",
            self.kind,
            self.source.describe(),
            self.num_layers,
            self.hidden_size,
            self.layer,
            self.weights_sha256[:12],
        )

    # AudioEncoder ----------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.hidden_size

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "weights_sha256": self.weights_sha256,
            "layer": self.layer,
            "layers": self.layers,
            "dim": self.hidden_size,
            "window": self.geometry.to_dict(),
            "normalize": "per_window" if self.do_normalize else "none",
            "hidden_states": HIDDEN_STATES_SEMANTICS,
        }

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "model": self.source.model,
            "revision": self.source.revision,
            "weights_sha256": self.weights_sha256,
            "layer": self.layer,
            "layers": self.layers,
            "dim": self.hidden_size,
            "kwargs": self.build_kwargs(),
        }

    def build_kwargs(self) -> dict[str, Any]:
        """What ``build_audio_encoder(self.name, **kwargs)`` needs to rebuild this encoder."""
        g = self.geometry
        return {
            "model": self.source.model,
            "revision": self.source.revision,
            "layer": self.layer,
            "context": g.context,
            "hop": g.hop,
            "lookahead": g.lookahead,
        }

    @torch.no_grad()
    def encode_windows(self, windows_BN: torch.Tensor) -> torch.Tensor:
        """Raw windows ``[B, samples]`` -> the features each emits, ``[B, 2 hop, (K,) Da]``
        float32 on the CPU."""
        g = self.geometry
        if windows_BN.ndim != 2 or windows_BN.shape[1] != g.samples:
            raise ValueError(f"windows must be [B, {g.samples}], got {tuple(windows_BN.shape)}")
        x = windows_BN.to(self.device, torch.float32)
        if self.kind == "whisper":
            mel = self.processor(
                list(x.cpu().numpy()),
                sampling_rate=AUDIO_SAMPLE_RATE,
                return_tensors="pt",
                device=str(self.device),
            ).input_features
            out = self.model(mel.to(self.device), output_hidden_states=self.layer != "last")
        else:
            if self.do_normalize:
                x = zero_mean_unit_var(x)
            out = self.model(x, output_hidden_states=self.layer != "last")
        feats = select(out, self.layer, self.num_layers)
        if feats.shape[1] < 2 * g.frames:
            raise ValueError(
                f"{self.kind} gave {feats.shape[1]} frames for a window of {g.samples} samples, "
                f"expected at least {2 * g.frames}"
            )
        return feats[:, g.kept()].float().cpu()

    def encode(self, audio_N: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The clip's features ``[2 T, (K,) Da]`` with ``T = ceil(N / 640)`` (the audio
        zero-padded to whole video frames), computed window by window."""
        audio = as_audio_tensor(audio_N)
        frames = max(1, -(-audio.shape[0] // SAMPLES_PER_VIDEO_FRAME))
        total = self.geometry.num_windows(frames)
        clip = torch.zeros(frames * SAMPLES_PER_VIDEO_FRAME)
        clip[: audio.shape[0]] = audio
        parts = []
        for first in range(0, total, self.batch_windows):
            count = min(self.batch_windows, total - first)
            windows = cut_windows(clip, 0, self.geometry, first, count)
            feats = self.encode_windows(windows)
            parts.append(feats.reshape(-1, *feats.shape[2:]))
        return torch.cat(parts)[: 2 * frames]
