"""Pretrained diffusers VAEs as latent codecs (optional dependency: ``df-models[diffusers]``).

Legend: ``B`` batch, ``T`` video frames (``T_lat`` latent frames), ``C`` latent channels,
``H W`` frame size, ``h w`` latent size, ``N`` = ``B * T`` frames folded into one batch.

Two kinds:

- ``AutoencoderKL`` (image VAEs: SD, SDXL, SD3, FLUX): frames are folded into the batch,
  ``frames_per_latent = 1``. Normalisation from the config: ``z = (z_raw - shift_factor) *
  scaling_factor``, i.e. ``latent_mean = shift_factor`` (0 if unset) and ``latent_std =
  1 / scaling_factor``; configs that carry per-channel ``latents_mean`` / ``latents_std``
  (SDXL-style ``z = (z_raw - mean) * scaling_factor / std``) give ``latent_mean = latents_mean``
  and ``latent_std = latents_std / scaling_factor``.
- ``AutoencoderKLWan`` (Wan 2.1/2.2 causal video VAE, input ``[B, 3, T, H, W]``):
  ``frames_per_latent = 4`` (``T = 1 + 4k`` frames -> ``1 + k`` latent frames), normalisation
  ``z = (z_raw - latents_mean) / latents_std`` from the config.

The wrapped VAE is frozen (no gradients to its weights, always in eval mode). Encoding takes
the posterior mode by default (deterministic); ``sample=True`` draws from the posterior.
Weights load from a local directory only (``local_files_only=True``): there is no hub access.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from einops import rearrange

from df_models.codecs.base import LatentCodec

SUPPORTED_KINDS = ("AutoencoderKL", "AutoencoderKLWan")
WAN_FRAMES_PER_LATENT = 4  # diffusers' Wan encoder reads 1 frame, then chunks of 4 frames


def _import_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as e:
        raise ImportError(
            "DiffusersVAECodec needs the optional dependency diffusers: "
            "install `df-models[diffusers]` (e.g. `uv sync --extra diffusers`)"
        ) from e
    return diffusers


class DiffusersVAECodec(LatentCodec):
    """A frozen diffusers ``AutoencoderKL`` or ``AutoencoderKLWan`` behind ``LatentCodec``.

    Args:
        vae: an ``AutoencoderKL`` or ``AutoencoderKLWan`` instance (see ``from_pretrained``).
    """

    def __init__(self, vae: torch.nn.Module) -> None:
        diffusers = _import_diffusers()
        if isinstance(vae, diffusers.AutoencoderKLWan):
            kind = "AutoencoderKLWan"
        elif isinstance(vae, diffusers.AutoencoderKL):
            kind = "AutoencoderKL"
        else:
            raise ValueError(f"vae must be one of {SUPPORTED_KINDS}, got {type(vae).__name__}")
        cfg = vae.config
        if kind == "AutoencoderKL":
            latent_channels = int(cfg.latent_channels)
            spatial_factor = 2 ** (len(cfg.block_out_channels) - 1)
            frames_per_latent = 1
            video_channels = int(cfg.in_channels)
        else:
            patch = int(cfg.patch_size or 1)
            latent_channels = int(cfg.z_dim)
            spatial_factor = 2 ** (len(cfg.dim_mult) - 1) * patch
            frames_per_latent = 2 ** sum(bool(d) for d in cfg.temperal_downsample)
            if frames_per_latent != WAN_FRAMES_PER_LATENT:
                raise ValueError(
                    f"vae.config.temperal_downsample must downsample time by "
                    f"{WAN_FRAMES_PER_LATENT} (two True entries), got {list(cfg.temperal_downsample)}"
                )
            video_channels = int(cfg.in_channels) // (patch * patch)
        super().__init__(
            latent_channels=latent_channels,
            spatial_factor=spatial_factor,
            frames_per_latent=frames_per_latent,
            video_channels=video_channels,
        )
        self.kind = kind
        self.vae = vae
        self.vae.requires_grad_(False)
        self.vae.eval()
        self.init_weights()
        self.to(device=next(vae.parameters()).device)  # the statistics live with the weights

    def config_normalization(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean_C, std_C)`` of raw latents as the VAE's config defines them (module doc)."""
        cfg = self.vae.config
        c = self.latent_channels
        if self.kind == "AutoencoderKLWan":
            mean, std = cfg.latents_mean, cfg.latents_std
            for name, value in (("latents_mean", mean), ("latents_std", std)):
                if value is None or len(value) != c:
                    raise ValueError(
                        f"vae.config.{name} must be a list of z_dim={c} floats, got {value}"
                    )
            return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        scale = float(cfg.scaling_factor)
        if not scale > 0:
            raise ValueError(f"vae.config.scaling_factor must be positive, got {scale}")
        mean_list = getattr(cfg, "latents_mean", None)
        std_list = getattr(cfg, "latents_std", None)
        if mean_list is not None and std_list is not None:
            if len(mean_list) != c or len(std_list) != c:
                raise ValueError(
                    f"vae.config.latents_mean / latents_std must have latent_channels={c} entries, "
                    f"got {len(mean_list)} / {len(std_list)}"
                )
            mean_C = torch.tensor(mean_list, dtype=torch.float32)
            return mean_C, torch.tensor(std_list, dtype=torch.float32) / scale
        shift = float(getattr(cfg, "shift_factor", None) or 0.0)
        return torch.full((c,), shift), torch.full((c,), 1.0 / scale)

    def init_weights(self) -> None:
        """The VAE is pretrained: only resets the normalisation to the config's statistics."""
        self.set_normalization(*self.config_normalization())

    def train(self, mode: bool = True) -> DiffusersVAECodec:
        """The wrapped VAE stays in eval mode whatever ``mode`` is (it is frozen)."""
        super().train(mode)
        self.vae.eval()
        return self

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    # Encode / decode ----------------------------------------------------------------------------

    def _posterior_latents(
        self, video_BTCHW: torch.Tensor, *, sample: bool, generator: torch.Generator | None
    ) -> torch.Tensor:
        b = video_BTCHW.shape[0]
        x = video_BTCHW.to(self.vae_dtype)
        if self.kind == "AutoencoderKL":
            posterior = self.vae.encode(rearrange(x, "b t c h w -> (b t) c h w")).latent_dist
        else:
            posterior = self.vae.encode(rearrange(x, "b t c h w -> b c t h w")).latent_dist
        z = posterior.sample(generator=generator) if sample else posterior.mode()
        if self.kind == "AutoencoderKL":
            z_BTCHW = rearrange(z, "(b t) c h w -> b t c h w", b=b)
        else:
            z_BTCHW = rearrange(z, "b c t h w -> b t c h w")
        return z_BTCHW.to(video_BTCHW.dtype)

    def _encode_raw(self, video_BTCHW: torch.Tensor) -> torch.Tensor:
        return self._posterior_latents(video_BTCHW, sample=False, generator=None)

    def _decode_raw(self, z_raw_BTCHW: torch.Tensor) -> torch.Tensor:
        b = z_raw_BTCHW.shape[0]
        z = z_raw_BTCHW.to(self.vae_dtype)
        if self.kind == "AutoencoderKL":
            x = self.vae.decode(rearrange(z, "b t c h w -> (b t) c h w")).sample
            # diffusers' AutoencoderKL does not clamp (Wan's does): keep the [-1, 1] convention.
            video_BTCHW = rearrange(x.clamp(-1.0, 1.0), "(b t) c h w -> b t c h w", b=b)
        else:
            x = self.vae.decode(rearrange(z, "b t c h w -> b c t h w")).sample
            video_BTCHW = rearrange(x, "b c t h w -> b t c h w")
        return video_BTCHW.to(z_raw_BTCHW.dtype)

    def encode_raw(
        self,
        video_BTCHW: torch.Tensor,
        *,
        check_range: bool = True,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Video ``[B, T, 3, H, W]`` in [-1, 1] -> raw latents ``[B, T_lat, C, h, w]``.

        The posterior mode by default; ``sample=True`` draws ``mean + std * eps`` (``generator``
        seeds ``eps``).
        """
        self.check_video(video_BTCHW, check_range=check_range)
        return self._posterior_latents(video_BTCHW, sample=sample, generator=generator)

    def encode(
        self,
        video_BTCHW: torch.Tensor,
        *,
        check_range: bool = True,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Video ``[B, T, 3, H, W]`` in [-1, 1] -> normalised latents ``[B, T_lat, C, h, w]``."""
        z_raw = self.encode_raw(
            video_BTCHW, check_range=check_range, sample=sample, generator=generator
        )
        return self.normalize(z_raw)

    # Loading ------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        kind: str | None = None,
        subfolder: str | None = None,
        torch_dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> DiffusersVAECodec:
        """Loads a diffusers VAE from a local directory (``path[/subfolder]/config.json`` and
        weights) and wraps it.

        Args:
            path: local model directory (or a pipeline directory with ``subfolder="vae"``).
            kind: ``"AutoencoderKL"`` or ``"AutoencoderKLWan"``; None reads the config's
                ``_class_name``.
            subfolder: the VAE's folder inside ``path``, if any.
            torch_dtype: dtype of the VAE weights (the normalisation stays float32).
            device: where the codec lives.
        """
        path = Path(path)
        if not path.is_dir():
            raise ValueError(
                f"path {str(path)!r} is not an existing local directory "
                "(VAEs load from local directories only)"
            )
        model_dir = path / subfolder if subfolder else path
        config_path = model_dir / "config.json"
        if not config_path.is_file():
            raise ValueError(f"{config_path} does not exist: not a diffusers model directory")
        if kind is None:
            try:
                kind = json.loads(config_path.read_text()).get("_class_name")
            except (json.JSONDecodeError, AttributeError) as e:
                raise ValueError(f"{config_path} is not a JSON object: {e}") from e
            if kind not in SUPPORTED_KINDS:
                raise ValueError(
                    f"{config_path} has _class_name {kind!r}; supported kinds are "
                    f"{SUPPORTED_KINDS} (pass kind= to override)"
                )
        elif kind not in SUPPORTED_KINDS:
            raise ValueError(f"kind must be one of {SUPPORTED_KINDS} or None, got {kind!r}")
        diffusers = _import_diffusers()
        vae = getattr(diffusers, kind).from_pretrained(
            str(path), subfolder=subfolder, torch_dtype=torch_dtype, local_files_only=True
        )
        return cls(vae).to(device)
