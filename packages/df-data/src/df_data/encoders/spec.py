"""The encoders an extraction uses, named once: a frozen ``EncoderSpec`` that recipes hold and
the ``dualforce data extract`` flags fill.

    dualforce data extract ... --audio-encoder hubert --audio-model facebook/hubert-large-ls960-ft \\
        --audio-layer all --ref-encoder dinov2 --ref-model facebook/dinov2-base --ref-frames 8

``--audio-encoder`` is ``logmel`` (default, no weights), ``hubert``, ``wav2vec2`` or
``whisper``; ``--audio-model`` a hub id or a folder (default: the kind's usual model),
``--audio-revision`` a hub revision, ``--audio-layer`` a layer spec (``last``, ``k``,
``k1,k2``, ``all``). ``--ref-encoder`` is ``none`` (default), ``dinov2`` or ``clip``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

from df_core.checks import non_negative_int, positive_int
from df_data.encoders.layers import parse_layer_spec
from df_data.features import AudioEncoder, LogMelEncoder

AUDIO_KINDS = ("logmel", "hubert", "wav2vec2", "whisper")
REF_KINDS = ("none", "dinov2", "clip")


@dataclass(frozen=True, kw_only=True, slots=True)
class EncoderSpec:
    audio_encoder: str = "logmel"  # logmel | hubert | wav2vec2 | whisper
    audio_model: str | None = None  # hub id or folder (None: the kind's default model)
    audio_revision: str | None = None  # hub revision (hub ids only)
    audio_layer: str = "last"  # last | k | k1,k2,... | all
    ref_encoder: str = "none"  # none | dinov2 | clip
    ref_model: str | None = None  # hub id or folder (None: the kind's default model)
    ref_revision: str | None = None
    ref_pool: int = 2  # patch tokens pooled to a g x g grid (besides CLS)
    ref_frames: int = 8  # frames per clip with stored reference tokens

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("audio_encoder", self.audio_encoder, AUDIO_KINDS),
            ("ref_encoder", self.ref_encoder, REF_KINDS),
        ):
            if value not in allowed:
                raise ValueError(f"EncoderSpec.{name} must be one of {allowed}, got {value!r}")
        object.__setattr__(self, "audio_layer", parse_layer_spec(self.audio_layer))
        if self.audio_encoder == "logmel" and (self.audio_model or self.audio_layer != "last"):
            raise ValueError(
                "EncoderSpec: audio_model / audio_layer apply to pretrained encoders, not logmel"
            )
        if self.ref_encoder == "none" and self.ref_model:
            raise ValueError("EncoderSpec.ref_model is set but ref_encoder is 'none'")
        non_negative_int("EncoderSpec.ref_pool", self.ref_pool)
        positive_int("EncoderSpec.ref_frames", self.ref_frames)

    def build_audio(self, device: str | torch.device = "cpu") -> AudioEncoder:
        if self.audio_encoder == "logmel":
            return LogMelEncoder()
        from df_data.features import build_audio_encoder

        return build_audio_encoder(
            self.audio_encoder,
            model=self.audio_model,
            revision=self.audio_revision,
            layer=self.audio_layer,
            device=device,
        )

    def build_ref(self, device: str | torch.device = "cpu") -> Any:
        if self.ref_encoder == "none":
            return None
        from df_data.encoders.image import build_ref_encoder

        return build_ref_encoder(
            self.ref_encoder,
            model=self.ref_model,
            revision=self.ref_revision,
            pool=self.ref_pool,
            device=device,
        )

    def cli_args(self) -> list[str]:
        """The ``dualforce data extract`` flags of this spec."""
        args = ["--audio-encoder", self.audio_encoder]
        for flag, value in (
            ("--audio-model", self.audio_model),
            ("--audio-revision", self.audio_revision),
            ("--ref-model", self.ref_model),
            ("--ref-revision", self.ref_revision),
        ):
            if value:
                args += [flag, value]
        if self.audio_encoder != "logmel":
            args += ["--audio-layer", self.audio_layer]
        args += ["--ref-encoder", self.ref_encoder]
        if self.ref_encoder != "none":
            args += ["--ref-pool", str(self.ref_pool), "--ref-frames", str(self.ref_frames)]
        return args


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    """The encoder flags of ``dualforce data extract`` (module doc)."""
    g = parser.add_argument_group("encoders")
    g.add_argument("--audio-encoder", default="logmel", choices=AUDIO_KINDS)
    g.add_argument("--audio-model", default=None, help="hub id or folder of the speech encoder")
    g.add_argument("--audio-revision", default=None, help="hub revision of --audio-model")
    g.add_argument("--audio-layer", default="last", help="last | k | k1,k2,... | all")
    g.add_argument("--ref-encoder", default="none", choices=REF_KINDS)
    g.add_argument("--ref-model", default=None, help="hub id or folder of the image encoder")
    g.add_argument("--ref-revision", default=None, help="hub revision of --ref-model")
    g.add_argument("--ref-pool", type=int, default=2, help="pooled patch grid side (0: CLS only)")
    g.add_argument("--ref-frames", type=int, default=8, help="frames per clip with ref tokens")


def spec_from_args(args: argparse.Namespace) -> EncoderSpec:
    return EncoderSpec(
        audio_encoder=args.audio_encoder,
        audio_model=args.audio_model,
        audio_revision=args.audio_revision,
        audio_layer=args.audio_layer,
        ref_encoder=args.ref_encoder,
        ref_model=args.ref_model,
        ref_revision=args.ref_revision,
        ref_pool=args.ref_pool,
        ref_frames=args.ref_frames,
    )
