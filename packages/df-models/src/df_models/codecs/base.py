"""The latent codec interface: video frames <-> normalised latents.

Legend: ``B`` batch, ``T`` video frames (``T_lat`` latent frames), ``C`` latent channels,
``H W`` frame height/width, ``h w`` latent height/width (``H / spatial_factor``).

Conventions (DESIGN.md, "Tensor conventions"):

- video ``video_BTCHW``: float in [-1, 1], shape ``[B, T, 3, H, W]``;
- latents ``z_BTCHW``: shape ``[B, T_lat, C, h, w]``, *normalised* per channel,
  ``z = (z_raw - latent_mean) / latent_std``, so the DiT sees roughly zero-mean, unit-variance
  channels whatever codec produced them;
- a codec may compress time: ``frames_per_latent`` is 1 for image codecs (``T_lat = T``) and 4
  for Wan's causal video VAE, where the first frame is encoded alone and every later latent frame
  covers 4 video frames: ``T_lat = 1 + (T - 1) // 4`` with ``T = 1 + 4k``.

Subclasses implement ``_encode_raw`` / ``_decode_raw`` on validated inputs; the public
``encode`` / ``decode`` validate shapes and apply / invert the normalisation.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence

import torch
from einops import rearrange

RANGE_SLACK = 1e-4  # float rounding allowed outside [-1, 1] by the input range check


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class LatentCodec(torch.nn.Module, abc.ABC):
    """Abstract base: encodes ``video_BTCHW`` to normalised ``z_BTCHW`` and back.

    Args:
        latent_channels: ``C``, channels of a latent frame.
        spatial_factor: ``H / h``, the spatial downsampling of the codec.
        frames_per_latent: video frames per latent frame (1: image codec; > 1: causal video
            codec with the ``1 + k * frames_per_latent`` frame rule).
        video_channels: channels of a video frame (3: RGB).

    Buffers ``latent_mean`` and ``latent_std`` (shape ``[C]``, float32, saved in the state dict)
    hold the per-channel normalisation statistics of raw latents; identity (0, 1) by default.
    """

    def __init__(
        self,
        *,
        latent_channels: int,
        spatial_factor: int,
        frames_per_latent: int = 1,
        video_channels: int = 3,
    ) -> None:
        super().__init__()
        self.latent_channels = _positive_int("latent_channels", latent_channels)
        self.spatial_factor = _positive_int("spatial_factor", spatial_factor)
        self.frames_per_latent = _positive_int("frames_per_latent", frames_per_latent)
        self.video_channels = _positive_int("video_channels", video_channels)
        self.register_buffer("latent_mean", torch.zeros(latent_channels, dtype=torch.float32))
        self.register_buffer("latent_std", torch.ones(latent_channels, dtype=torch.float32))

    def init_weights(self) -> None:
        """Resets the normalisation to the identity (subclasses also initialise their weights)."""
        with torch.no_grad():
            self.latent_mean.zero_()
            self.latent_std.fill_(1.0)

    # Shapes -------------------------------------------------------------------------------------

    def latent_frames(self, frames: int) -> int:
        """``T_lat`` for ``frames`` video frames; ValueError naming ``frames`` if not allowed."""
        _positive_int("frames", frames)
        k = self.frames_per_latent
        if k == 1:
            return frames
        if (frames - 1) % k != 0:
            raise ValueError(
                f"frames must be 1 + {k}k for a codec with frames_per_latent={k}, got {frames}"
            )
        return 1 + (frames - 1) // k

    def video_frames(self, latent_frames: int) -> int:
        """``T`` video frames decoded from ``latent_frames`` latent frames (the inverse)."""
        _positive_int("latent_frames", latent_frames)
        k = self.frames_per_latent
        return latent_frames if k == 1 else 1 + (latent_frames - 1) * k

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(T_lat, C, h, w)`` of the latents of a ``[T, 3, height, width]`` clip.

        Raises ValueError naming ``frames``, ``height`` or ``width`` when the codec cannot
        encode that size (``height`` and ``width`` must be multiples of ``spatial_factor``).
        """
        t_lat = self.latent_frames(frames)
        for name, size in (("height", height), ("width", width)):
            _positive_int(name, size)
            if size % self.spatial_factor != 0:
                raise ValueError(
                    f"{name} must be a multiple of spatial_factor={self.spatial_factor}, got {size}"
                )
        f = self.spatial_factor
        return t_lat, self.latent_channels, height // f, width // f

    # Validation ---------------------------------------------------------------------------------

    def check_video(self, video_BTCHW: torch.Tensor, *, check_range: bool = True) -> None:
        """Checks a video batch ``[B, T, 3, H, W]``; ``check_range`` reads it on the host."""
        if not isinstance(video_BTCHW, torch.Tensor) or video_BTCHW.ndim != 5:
            shape = getattr(video_BTCHW, "shape", None)
            raise ValueError(f"video_BTCHW must be a 5-D tensor [B, T, C, H, W], got shape {shape}")
        if not video_BTCHW.is_floating_point():
            raise ValueError(
                f"video_BTCHW must be floating point in [-1, 1], got {video_BTCHW.dtype}"
            )
        _, t, c, h, w = video_BTCHW.shape
        if c != self.video_channels:
            raise ValueError(
                f"video_BTCHW must have {self.video_channels} channels at dim 2, got shape "
                f"{tuple(video_BTCHW.shape)} (layout is [B, T, C, H, W])"
            )
        try:
            self.latent_shape(t, h, w)
        except ValueError as e:
            raise ValueError(f"video_BTCHW of shape {tuple(video_BTCHW.shape)}: {e}") from None
        if check_range and video_BTCHW.numel():
            lo, hi = video_BTCHW.aminmax()
            lo, hi = float(lo), float(hi)
            if lo < -1.0 - RANGE_SLACK or hi > 1.0 + RANGE_SLACK:
                raise ValueError(f"video_BTCHW must lie in [-1, 1], got values in [{lo}, {hi}]")

    def check_latents(self, z_BTCHW: torch.Tensor) -> None:
        """Checks a latent batch ``[B, T_lat, C, h, w]``."""
        if not isinstance(z_BTCHW, torch.Tensor) or z_BTCHW.ndim != 5:
            shape = getattr(z_BTCHW, "shape", None)
            raise ValueError(f"z_BTCHW must be a 5-D tensor [B, T, C, h, w], got shape {shape}")
        if not z_BTCHW.is_floating_point():
            raise ValueError(f"z_BTCHW must be floating point, got {z_BTCHW.dtype}")
        if z_BTCHW.shape[2] != self.latent_channels:
            raise ValueError(
                f"z_BTCHW must have latent_channels={self.latent_channels} channels at dim 2, got "
                f"shape {tuple(z_BTCHW.shape)} (layout is [B, T, C, h, w])"
            )

    # Normalisation ------------------------------------------------------------------------------

    def normalize(self, z_raw_BTCHW: torch.Tensor) -> torch.Tensor:
        """``(z_raw - latent_mean) / latent_std`` per channel, computed in float32."""
        mean_C11 = rearrange(self.latent_mean.float(), "c -> c 1 1")
        std_C11 = rearrange(self.latent_std.float(), "c -> c 1 1")
        return ((z_raw_BTCHW.float() - mean_C11) / std_C11).to(z_raw_BTCHW.dtype)

    def denormalize(self, z_BTCHW: torch.Tensor) -> torch.Tensor:
        """``z * latent_std + latent_mean`` per channel (the inverse of ``normalize``)."""
        mean_C11 = rearrange(self.latent_mean.float(), "c -> c 1 1")
        std_C11 = rearrange(self.latent_std.float(), "c -> c 1 1")
        return (z_BTCHW.float() * std_C11 + mean_C11).to(z_BTCHW.dtype)

    def set_normalization(
        self, mean_C: torch.Tensor | Sequence[float], std_C: torch.Tensor | Sequence[float]
    ) -> None:
        """Sets the per-channel statistics of raw latents (``mean_C``, ``std_C``: shape ``[C]``)."""
        mean = torch.as_tensor(mean_C, dtype=torch.float32).detach().cpu()
        std = torch.as_tensor(std_C, dtype=torch.float32).detach().cpu()
        for name, value in (("mean_C", mean), ("std_C", std)):
            if value.shape != (self.latent_channels,):
                raise ValueError(
                    f"{name} must have shape ({self.latent_channels},), got {tuple(value.shape)}"
                )
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} must be finite, got {value.tolist()}")
        if not bool((std > 0).all()):
            raise ValueError(f"std_C must be positive, got {std.tolist()}")
        with torch.no_grad():
            self.latent_mean.copy_(mean)
            self.latent_std.copy_(std)

    @torch.no_grad()
    def estimate_normalization(
        self, video_batches: Iterable[torch.Tensor], *, max_batches: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and (population) std of the *raw* latents of ``video_batches``.

        Each batch is a ``video_BTCHW`` tensor. Statistics are pooled over batch, time and
        space in float64. Use as ``codec.set_normalization(*codec.estimate_normalization(it))``.

        Returns:
            ``(mean_C, std_C)``, float32 tensors of shape ``[C]`` on the CPU.
        """
        if max_batches is not None:
            _positive_int("max_batches", max_batches)
        total = torch.zeros(self.latent_channels, dtype=torch.float64)
        total_sq = torch.zeros(self.latent_channels, dtype=torch.float64)
        count = 0
        for i, video_BTCHW in enumerate(video_batches):
            if max_batches is not None and i >= max_batches:
                break
            z_BTCHW = self.encode_raw(video_BTCHW).double().cpu()
            total += z_BTCHW.sum(dim=(0, 1, 3, 4))
            total_sq += z_BTCHW.square().sum(dim=(0, 1, 3, 4))
            count += z_BTCHW.numel() // self.latent_channels
        if count == 0:
            raise ValueError("video_batches must yield at least one non-empty batch")
        mean = total / count
        var = (total_sq / count - mean.square()).clamp_min(0.0)
        return mean.float(), var.sqrt().float()

    # Encode / decode ----------------------------------------------------------------------------

    @abc.abstractmethod
    def _encode_raw(self, video_BTCHW: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) latents ``[B, T_lat, C, h, w]`` of a validated video batch."""

    @abc.abstractmethod
    def _decode_raw(self, z_raw_BTCHW: torch.Tensor) -> torch.Tensor:
        """Video ``[B, T, 3, H, W]`` in [-1, 1] from validated raw latents."""

    def encode_raw(self, video_BTCHW: torch.Tensor, *, check_range: bool = True) -> torch.Tensor:
        """Video ``[B, T, 3, H, W]`` in [-1, 1] -> raw latents ``[B, T_lat, C, h, w]``."""
        self.check_video(video_BTCHW, check_range=check_range)
        return self._encode_raw(video_BTCHW)

    def decode_raw(self, z_raw_BTCHW: torch.Tensor) -> torch.Tensor:
        """Raw latents ``[B, T_lat, C, h, w]`` -> video ``[B, T, 3, H, W]`` in [-1, 1]."""
        self.check_latents(z_raw_BTCHW)
        return self._decode_raw(z_raw_BTCHW)

    def encode(self, video_BTCHW: torch.Tensor, *, check_range: bool = True) -> torch.Tensor:
        """Video ``[B, T, 3, H, W]`` in [-1, 1] -> normalised latents ``[B, T_lat, C, h, w]``.

        ``check_range`` verifies the [-1, 1] range, which reads the tensor on the host.
        """
        return self.normalize(self.encode_raw(video_BTCHW, check_range=check_range))

    @torch.no_grad()
    def encode_chunked(self, video_BTCHW: torch.Tensor, chunk_frames: int) -> torch.Tensor:
        """Normalised latents ``[B, T_lat, C, h, w]`` float32 on the CPU of a (CPU) video
        ``[B, T, 3, H, W]``, moved to the codec's device ``chunk_frames`` video frames at a time.

        An image codec encodes each chunk on its own (frames are independent). A temporal codec
        carries state across frames: this base version then encodes the whole clip in one call;
        codecs that can carry their state across chunks override it (the Wan VAE).
        """
        _positive_int("chunk_frames", chunk_frames)
        self.check_video(video_BTCHW)
        device = self.latent_mean.device
        if self.frames_per_latent != 1:
            return self.encode(video_BTCHW.to(device), check_range=False).float().cpu()
        return torch.cat(
            [
                self.encode(chunk.to(device), check_range=False).float().cpu()
                for chunk in video_BTCHW.split(chunk_frames, dim=1)
            ],
            dim=1,
        )

    def decode(self, z_BTCHW: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, T_lat, C, h, w]`` -> video ``[B, T, 3, H, W]`` in [-1, 1]."""
        self.check_latents(z_BTCHW)
        return self._decode_raw(self.denormalize(z_BTCHW))

    def forward(self, video_BTCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction for training a codec: ``(recon_BTCHW, z_raw_BTCHW)``.

        Args:
            video_BTCHW: ``[B, T, 3, H, W]`` in [-1, 1] (range not checked: no host sync).

        Returns:
            The reconstruction ``[B, T, 3, H, W]`` and the *raw* latents ``[B, T_lat, C, h, w]``
            (a latent penalty belongs on raw latents; normalisation is fitted afterwards).
        """
        z_raw_BTCHW = self.encode_raw(video_BTCHW, check_range=False)
        return self._decode_raw(z_raw_BTCHW), z_raw_BTCHW
