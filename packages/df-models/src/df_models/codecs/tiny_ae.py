"""TinyAutoencoder: the small convolutional image codec embedded as DualForce's default.

Legend: ``B`` batch, ``T`` frames, ``C`` latent channels, ``H W`` frame size, ``h w`` latent size
(``H / 2**num_down``), ``N`` = ``B * T`` frames folded into one batch.

Each frame is coded independently (``frames_per_latent = 1``). The encoder is a stack of
residual blocks (GroupNorm, SiLU, 3x3 conv) with a stride-2 conv between levels; the decoder
mirrors it with nearest-neighbour upsampling and ends in ``tanh`` so frames stay in [-1, 1].

It is a *deterministic* autoencoder (no KL term, no posterior sampling): df-train trains it on
SynthTalk frames with a reconstruction loss plus a small L2 penalty on the raw latents (which
``forward`` returns for that purpose), then fits the latent normalisation with
``estimate_normalization``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from df_core.checks import non_negative_int, positive_int
from df_models.codecs.base import LatentCodec
from df_models.pretrained import load_pretrained_state, read_config, save_pretrained

KIND = "TinyAutoencoder"


@dataclass(frozen=True, kw_only=True, slots=True)
class TinyAutoencoderConfig:
    in_channels: int = 3  # channels of a video frame (RGB)
    latent_channels: int = 8  # C of z_BTCHW
    base_channels: int = 32  # width of the full-resolution level; doubles per level
    max_channels: int = 128  # cap on the width of the deeper levels
    num_down: int = 3  # stride-2 downsamplings: spatial_factor = 2**num_down
    blocks_per_level: int = 1  # residual blocks per level (and in the middle)
    norm_groups: int = 8  # GroupNorm groups; must divide every level's width

    def __post_init__(self) -> None:
        for name in (
            "in_channels",
            "latent_channels",
            "base_channels",
            "max_channels",
            "norm_groups",
        ):
            positive_int(f"TinyAutoencoderConfig.{name}", getattr(self, name))
        for name in ("num_down", "blocks_per_level"):
            value = non_negative_int(f"TinyAutoencoderConfig.{name}", getattr(self, name))
            if value > 8:
                raise ValueError(f"TinyAutoencoderConfig.{name} must be in [0, 8], got {value!r}")
        if self.max_channels < self.base_channels:
            raise ValueError(
                f"TinyAutoencoderConfig.max_channels must be >= base_channels="
                f"{self.base_channels}, got {self.max_channels}"
            )
        bad = [w for w in self.level_channels if w % self.norm_groups]
        if bad:
            raise ValueError(
                f"TinyAutoencoderConfig.norm_groups must divide every level width "
                f"{self.level_channels}, got {self.norm_groups}"
            )

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Width of each level, full resolution first: ``num_down + 1`` entries."""
        return tuple(
            min(self.base_channels * 2**i, self.max_channels) for i in range(self.num_down + 1)
        )

    @property
    def spatial_factor(self) -> int:
        return 2**self.num_down


def tiny_autoencoder_debug() -> TinyAutoencoderConfig:
    """About 30k parameters, for tests: 16x16 frames -> 4x4x4 latents."""
    return TinyAutoencoderConfig(
        latent_channels=4, base_channels=8, max_channels=16, num_down=2, norm_groups=4
    )


def tiny_autoencoder_base() -> TinyAutoencoderConfig:
    """The embedded default: 8 latent channels at 1/8 resolution (256x256 -> 32x32x8)."""
    return TinyAutoencoderConfig()


class ResBlock(nn.Module):
    """``x + conv(silu(norm(conv(silu(norm(x))))))`` on ``[N, D, H, W]``; starts as identity."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def init_weights(self) -> None:
        for m in (self.norm1, self.conv1, self.norm2):
            m.reset_parameters()
        # Zero-initialised last conv: a fresh block is the identity, so a deep stack trains stably.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x_NDHW: torch.Tensor) -> torch.Tensor:
        h_NDHW = self.conv1(F.silu(self.norm1(x_NDHW)))
        return x_NDHW + self.conv2(F.silu(self.norm2(h_NDHW)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling then a 3x3 conv: ``[N, Din, H, W] -> [N, Dout, 2H, 2W]``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def init_weights(self) -> None:
        self.conv.reset_parameters()

    def forward(self, x_NDHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_NDHW, scale_factor=2.0, mode="nearest"))


def _blocks(channels: int, config: TinyAutoencoderConfig) -> list[nn.Module]:
    return [ResBlock(channels, config.norm_groups) for _ in range(config.blocks_per_level)]


def encoder_body(config: TinyAutoencoderConfig) -> list[nn.Module]:
    """A frame ``[N, 3, H, W]`` to features ``[N, D, h, w]`` (``D`` the deepest level's width):
    the encoder without its latent head."""
    widths = config.level_channels
    layers: list[nn.Module] = [nn.Conv2d(config.in_channels, widths[0], 3, padding=1)]
    for i in range(config.num_down):
        layers += _blocks(widths[i], config)
        layers.append(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1))
    return layers + _blocks(widths[-1], config)


def decoder_body(config: TinyAutoencoderConfig) -> list[nn.Module]:
    """Features ``[N, D, h, w]`` to a frame ``[N, 3, H, W]`` in [-1, 1]: the decoder without
    its latent input conv."""
    widths = config.level_channels
    layers = _blocks(widths[-1], config)
    for i in reversed(range(config.num_down)):
        layers.append(Upsample(widths[i + 1], widths[i]))
        layers += _blocks(widths[i], config)
    return [
        *layers,
        nn.GroupNorm(config.norm_groups, widths[0]),
        nn.SiLU(),
        nn.Conv2d(widths[0], config.in_channels, 3, padding=1),
        nn.Tanh(),
    ]


class TinyAutoencoder(LatentCodec):
    """Small deterministic convolutional autoencoder, one frame at a time.

    ``encode``: ``[B, T, 3, H, W]`` in [-1, 1] -> ``[B, T, C, H / f, W / f]`` (``f`` =
    ``2**num_down``); ``decode`` inverts it, output through ``tanh``. Build on the meta device
    and materialise with ``to_empty`` + ``init_weights``.
    """

    def __init__(self, config: TinyAutoencoderConfig) -> None:
        super().__init__(
            latent_channels=config.latent_channels,
            spatial_factor=config.spatial_factor,
            frames_per_latent=1,
            video_channels=config.in_channels,
        )
        self.config = config
        widths = config.level_channels
        groups = config.norm_groups

        encoder = [
            *encoder_body(config),
            nn.GroupNorm(groups, widths[-1]),
            nn.SiLU(),
            nn.Conv2d(widths[-1], config.latent_channels, 3, padding=1),
        ]
        self.encoder = nn.Sequential(*encoder)
        decoder = [nn.Conv2d(config.latent_channels, widths[-1], 3, padding=1)]
        self.decoder = nn.Sequential(*decoder, *decoder_body(config))

    def init_weights(self) -> None:
        """PyTorch's default conv init, identity GroupNorm, zero-initialised residual branches."""
        super().init_weights()
        for m in [*self.encoder, *self.decoder]:
            if isinstance(m, ResBlock | Upsample):
                m.init_weights()
            elif isinstance(m, nn.Conv2d | nn.GroupNorm):
                m.reset_parameters()

    def _encode_raw(self, video_BTCHW: torch.Tensor) -> torch.Tensor:
        b = video_BTCHW.shape[0]
        x_NCHW = rearrange(video_BTCHW, "b t c h w -> (b t) c h w")
        z_NChw = self.encoder(x_NCHW)
        return rearrange(z_NChw, "(b t) c h w -> b t c h w", b=b)

    def _decode_raw(self, z_raw_BTCHW: torch.Tensor) -> torch.Tensor:
        b = z_raw_BTCHW.shape[0]
        z_NChw = rearrange(z_raw_BTCHW, "b t c h w -> (b t) c h w")
        x_NCHW = self.decoder(z_NChw)
        return rearrange(x_NCHW, "(b t) c h w -> b t c h w", b=b)

    # Save / load --------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes ``config.json`` (kind + config fields) and ``model.safetensors`` (weights and
        the normalisation buffers)."""
        return save_pretrained(self, {"kind": KIND, **dataclasses.asdict(self.config)}, directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: torch.device | str = "cpu"
    ) -> TinyAutoencoder:
        """Rebuilds a saved model exactly, in eval mode.

        Unknown or missing config fields and missing, unexpected or mis-shaped weights are
        ValueErrors naming them.
        """
        raw = read_config(directory, kind=KIND)
        raw.pop("kind")
        fields = {f.name for f in dataclasses.fields(TinyAutoencoderConfig)}
        unknown, missing = sorted(set(raw) - fields), sorted(fields - set(raw))
        if unknown or missing:
            raise ValueError(
                f"{Path(directory) / 'config.json'}: unknown config fields {unknown}, "
                f"missing config fields {missing}"
            )
        config = TinyAutoencoderConfig(**raw)
        with torch.device("meta"):
            model = cls(config)
        load_pretrained_state(model, directory, device=device)
        return model.eval()
