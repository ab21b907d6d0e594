"""TemporalTinyAutoencoder: the small causal codec that compresses time as well as space.

Legend: ``B`` batch, ``T`` video frames, ``G`` latent frames (groups), ``k`` frames per latent
(``frames_per_latent``), ``D`` feature width at latent resolution, ``C`` latent channels, ``H W``
frame size, ``h w`` latent size, ``N`` frames folded into one batch.

The layout of Wan's causal video VAE at the size of the embedded ``TinyAutoencoder``: the first
frame is coded alone, then every ``k`` frames share one latent frame (``T = 1 + k (G - 1)``).
Each frame goes through the same 2-D encoder to ``D`` features at latent resolution; a group's
``k`` feature maps are concatenated along channels and merged into one latent frame (the first
frame is its own group, repeated ``k`` times, as Wan's causal padding repeats it). Decoding
inverts it: one latent frame to ``k`` feature maps, each decoded by the same 2-D decoder.

Latent frame ``g`` reads only the frames of its own group, so the codec is causal: a frame's
latent does not depend on later frames; and latent frame ``g`` decodes to its ``k`` video frames
alone, so streaming decode hands out a group's frames as soon as its latent frame is done, with
no cache to carry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from df_core.checks import positive_int
from df_models.codecs.base import LatentCodec
from df_models.codecs.tiny_ae import (
    ResBlock,
    TinyAutoencoder,
    TinyAutoencoderConfig,
    decoder_body,
    encoder_body,
)
from df_models.pretrained import load_pretrained_state, read_config, save_pretrained

KIND = "TemporalTinyAutoencoder"


@dataclass(frozen=True, kw_only=True, slots=True)
class TemporalAutoencoderConfig:
    spatial: TinyAutoencoderConfig = field(default_factory=TinyAutoencoderConfig)  # per frame
    frames_per_latent: int = 4  # k: video frames per latent frame after the first

    def __post_init__(self) -> None:
        if not isinstance(self.spatial, TinyAutoencoderConfig):
            raise ValueError(
                f"TemporalAutoencoderConfig.spatial must be a TinyAutoencoderConfig, got "
                f"{type(self.spatial).__name__}"
            )
        positive_int("TemporalAutoencoderConfig.frames_per_latent", self.frames_per_latent)
        if self.frames_per_latent < 2:
            raise ValueError(
                "TemporalAutoencoderConfig.frames_per_latent must be at least 2 (1 is the "
                f"per-frame TinyAutoencoder), got {self.frames_per_latent}"
            )

    @property
    def spatial_factor(self) -> int:
        return self.spatial.spatial_factor

    def to_dict(self) -> dict:
        return {
            "spatial": dataclasses.asdict(self.spatial),
            "frames_per_latent": self.frames_per_latent,
        }

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config") -> TemporalAutoencoderConfig:
        raw = dict(raw)
        fields = {"spatial", "frames_per_latent"}
        unknown, missing = sorted(set(raw) - fields), sorted(fields - set(raw))
        if unknown or missing:
            raise ValueError(
                f"{where}: unknown config fields {unknown}, missing config fields {missing}"
            )
        spatial = dict(raw["spatial"])
        known = {f.name for f in dataclasses.fields(TinyAutoencoderConfig)}
        unknown, missing = sorted(set(spatial) - known), sorted(known - set(spatial))
        if unknown or missing:
            raise ValueError(
                f"{where}: unknown spatial fields {unknown}, missing spatial fields {missing}"
            )
        return cls(
            spatial=TinyAutoencoderConfig(**spatial), frames_per_latent=raw["frames_per_latent"]
        )


def temporal_autoencoder_debug() -> TemporalAutoencoderConfig:
    """For tests: 16x16 frames, 4 per latent frame -> 4x4x4 latents."""
    return TemporalAutoencoderConfig(
        spatial=TinyAutoencoderConfig(
            latent_channels=4, base_channels=8, max_channels=16, num_down=2, norm_groups=4
        )
    )


class TemporalTinyAutoencoder(LatentCodec):
    """Causal ``1 + k (G - 1)``-frame autoencoder (module doc). ``encode``: ``[B, 1 + k(G-1), 3,
    H, W]`` in [-1, 1] -> ``[B, G, C, H / f, W / f]``; ``decode`` inverts it through ``tanh``."""

    def __init__(self, config: TemporalAutoencoderConfig) -> None:
        s = config.spatial
        super().__init__(
            latent_channels=s.latent_channels,
            spatial_factor=s.spatial_factor,
            frames_per_latent=config.frames_per_latent,
            video_channels=s.in_channels,
        )
        self.config = config
        k, width, groups = config.frames_per_latent, s.level_channels[-1], s.norm_groups
        self.frame_encoder = nn.Sequential(*encoder_body(s))  # frame -> [D, h, w]
        self.merge = nn.Sequential(
            nn.Conv2d(k * width, width, 1),
            ResBlock(width, groups),
            nn.GroupNorm(groups, width),
            nn.SiLU(),
            nn.Conv2d(width, s.latent_channels, 3, padding=1),
        )
        # Linear after its residual block, so that an inflated codec (``inflate``) decodes every
        # frame of a group exactly as the frame codec decodes the latent.
        self.split = nn.Sequential(
            nn.Conv2d(s.latent_channels, width, 3, padding=1),
            ResBlock(width, groups),
            nn.Conv2d(width, k * width, 1),
        )
        self.frame_decoder = nn.Sequential(*decoder_body(s))  # [D, h, w] -> frame

    def init_weights(self) -> None:
        """PyTorch's default conv init, identity GroupNorm, zero-initialised residual branches."""
        super().init_weights()
        for m in [*self.frame_encoder, *self.merge, *self.split, *self.frame_decoder]:
            if hasattr(m, "init_weights"):
                m.init_weights()
            elif isinstance(m, nn.Conv2d | nn.GroupNorm):
                m.reset_parameters()

    @classmethod
    def inflate(
        cls, frame_codec: TinyAutoencoder, frames_per_latent: int = 4
    ) -> TemporalTinyAutoencoder:
        """A temporal codec that starts as a trained per-frame ``frame_codec`` (as image VAEs
        are inflated into video VAEs): its frame encoder and decoder bodies, latent head, latent
        input conv and normalisation are the frame codec's; the merge averages the features of
        a group's frames (a residual block at the identity after it) and the split hands the
        same features to every frame of the group. On a still clip it is the frame codec
        exactly; training then learns the motion within a group."""
        if not isinstance(frame_codec, TinyAutoencoder):
            raise ValueError(
                f"inflate needs a per-frame TinyAutoencoder, got {type(frame_codec).__name__}"
            )
        s, k = frame_codec.config, frames_per_latent
        codec = cls(TemporalAutoencoderConfig(spatial=s, frames_per_latent=k))
        codec.init_weights()
        body = len(codec.frame_encoder)
        width = s.level_channels[-1]
        eye = torch.eye(width)[:, :, None, None]
        with torch.no_grad():
            codec.frame_encoder.load_state_dict(
                nn.Sequential(*frame_codec.encoder[:body]).state_dict()
            )
            merge, split = codec.merge, codec.split
            merge[0].weight.copy_(torch.cat([eye / k] * k, dim=1))  # [D, k D, 1, 1]: the mean
            merge[0].bias.zero_()
            merge[2].load_state_dict(frame_codec.encoder[body].state_dict())  # GroupNorm
            merge[4].load_state_dict(frame_codec.encoder[body + 2].state_dict())  # latent head
            split[0].load_state_dict(frame_codec.decoder[0].state_dict())  # latent input conv
            split[2].weight.copy_(torch.cat([eye] * k, dim=0))  # [k D, D, 1, 1]: copies
            split[2].bias.zero_()
            codec.frame_decoder.load_state_dict(
                nn.Sequential(*frame_codec.decoder[1:]).state_dict()
            )
            codec.set_normalization(frame_codec.latent_mean, frame_codec.latent_std)
        return codec

    def _groups(self, video_BTCHW: torch.Tensor) -> torch.Tensor:
        """``[B, G, k, 3, H, W]``: the first frame repeated k times, then the groups of k."""
        k = self.frames_per_latent
        first = video_BTCHW[:, :1].expand(-1, k, -1, -1, -1)
        return rearrange(
            torch.cat([first, video_BTCHW[:, 1:]], 1), "b (g k) c h w -> b g k c h w", k=k
        )

    def _encode_raw(self, video_BTCHW: torch.Tensor) -> torch.Tensor:
        b = video_BTCHW.shape[0]
        groups = self._groups(video_BTCHW)
        feats = self.frame_encoder(rearrange(groups, "b g k c h w -> (b g k) c h w"))
        merged = rearrange(feats, "(b g k) d h w -> (b g) (k d) h w", b=b, k=self.frames_per_latent)
        return rearrange(self.merge(merged), "(b g) c h w -> b g c h w", b=b)

    def _group_frames(self, z_raw_BTCHW: torch.Tensor) -> torch.Tensor:
        """``[B, G, k, 3, H, W]``: the k video frames each raw latent frame decodes to."""
        b, k = z_raw_BTCHW.shape[0], self.frames_per_latent
        feats = self.split(rearrange(z_raw_BTCHW, "b g c h w -> (b g) c h w"))
        frames = self.frame_decoder(rearrange(feats, "n (k d) h w -> (n k) d h w", k=k))
        return rearrange(frames, "(b g k) c h w -> b g k c h w", b=b, k=k)

    def _decode_raw(self, z_raw_BTCHW: torch.Tensor) -> torch.Tensor:
        video = self._group_frames(z_raw_BTCHW)
        # The first latent frame stands for one video frame: its last slot (the group it was
        # encoded from is that frame k times).
        rest = rearrange(video[:, 1:], "b g k c h w -> b (g k) c h w")
        return torch.cat([video[:, 0, -1:], rest], 1)

    def decode_groups(self, z_BTCHW: torch.Tensor, first: bool) -> torch.Tensor:
        """Streaming decode of normalised latent frames ``[B, n, C, h, w]``: their video frames,
        ``k n`` of them, or ``1 + k (n - 1)`` when ``first`` (the clip's first latent frame is
        among them). Equal to decoding the whole clip and cutting these frames out."""
        self.check_latents(z_BTCHW)
        raw = self.denormalize(z_BTCHW)
        if first:
            return self._decode_raw(raw)
        return rearrange(self._group_frames(raw), "b g k c h w -> b (g k) c h w")

    # Save / load --------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes ``config.json`` (kind + config) and ``model.safetensors``."""
        return save_pretrained(self, {"kind": KIND, **self.config.to_dict()}, directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: torch.device | str = "cpu"
    ) -> TemporalTinyAutoencoder:
        """Rebuilds a saved model exactly, in eval mode; bad config fields or weights are
        ValueErrors naming them."""
        raw = read_config(directory, kind=KIND)
        raw.pop("kind")
        config = TemporalAutoencoderConfig.from_dict(raw, str(Path(directory) / "config.json"))
        with torch.device("meta"):
            model = cls(config)
        load_pretrained_state(model, directory, device=device)
        return model.eval()
