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

``encode_chunked`` moves a long clip to the GPU a chunk at a time. For Wan it runs the
encoder's own causal loop (frame 0 alone, then groups of 4 frames, each group reading the
cached features of the frames before it) across chunks of ``1 + 4m`` and then ``4m`` frames,
keeping the encoder's feature cache between chunks: the latents equal the whole-clip call's
(diffusers' ``AutoencoderKLWan._encode``, whose private cache it drives, is checked for the
attributes it needs; a test compares chunked with whole).

Weights load from a local directory (``local_files_only=True``) or a hub id
(``"Wan-AI/Wan2.1-T2V-1.3B-Diffusers"`` with ``subfolder="vae"``, a ``revision`` to pin);
hub ids honour ``HF_HUB_OFFLINE`` (or ``local_files_only=True``): then only the local cache is
read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from einops import rearrange

from df_models.codecs.base import LatentCodec

SUPPORTED_KINDS = ("AutoencoderKL", "AutoencoderKLWan")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "org/name"
WAN_CACHE_ATTRS = ("clear_cache", "_enc_feat_map", "_enc_conv_idx", "encoder", "quant_conv")
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
        self.source: dict[str, str | None] | None = None  # set by from_pretrained
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

    @torch.no_grad()
    def encode_chunked(self, video_BTCHW: torch.Tensor, chunk_frames: int) -> torch.Tensor:
        """Normalised posterior-mode latents ``[B, T_lat, C, h, w]`` float32 on the CPU, the
        video moved to the VAE's device ``chunk_frames`` frames at a time (module doc; for Wan
        rounded down to whole groups of 4, at least one)."""
        if self.kind != "AutoencoderKLWan" or getattr(self.vae, "use_tiling", False):
            return super().encode_chunked(video_BTCHW, chunk_frames)
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise ValueError(f"chunk_frames must be a positive integer, got {chunk_frames!r}")
        self.check_video(video_BTCHW)
        vae = self.vae
        if callable(getattr(vae, "clear_cache", None)):
            vae.clear_cache()  # creates the cache attributes (a fresh VAE has none yet)
        missing = [a for a in WAN_CACHE_ATTRS if not hasattr(vae, a)]
        if missing:
            raise ValueError(
                f"this diffusers version's AutoencoderKLWan lacks {missing}: chunked encoding "
                "drives its causal feature cache (module doc); encode whole clips instead"
            )
        k = WAN_FRAMES_PER_LATENT
        groups = max(1, chunk_frames // k)  # latent frames per chunk after the first frame
        t = video_BTCHW.shape[1]
        bounds = [(0, 1)] + [(a, a + k) for a in range(1, t, k)]  # the encoder's frame groups
        device, patch = self.latent_mean.device, self.vae.config.patch_size
        out: list[torch.Tensor] = []
        try:
            # Step 1: frame 0 and the first groups form the first chunk, then ``groups`` groups.
            firsts = [bounds[: 1 + groups]] + [
                bounds[i : i + groups] for i in range(1 + groups, len(bounds), groups)
            ]
            for chunk in firsts:
                start, stop = chunk[0][0], chunk[-1][1]
                x = rearrange(video_BTCHW[:, start:stop], "b t c h w -> b c t h w")
                x = x.to(device=device, dtype=self.vae_dtype)
                if patch is not None:
                    x = _wan_patchify(x, patch)
                # Step 2: each group through the encoder with the cache of the frames before it.
                feats = []
                for a, b in chunk:
                    vae._enc_conv_idx = [0]
                    feats.append(
                        vae.encoder(
                            x[:, :, a - start : b - start],
                            feat_cache=vae._enc_feat_map,
                            feat_idx=vae._enc_conv_idx,
                        )
                    )
                # Step 3: the 1x1x1 quant conv is per frame; the posterior mode is the mean half.
                moments = vae.quant_conv(torch.cat(feats, dim=2))
                mean = moments[:, : self.latent_channels]
                z_BTCHW = rearrange(mean, "b c t h w -> b t c h w").float()
                out.append(self.normalize(z_BTCHW).cpu())
        finally:
            vae.clear_cache()
        return torch.cat(out, dim=1)

    # Loading ------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        kind: str | None = None,
        subfolder: str | None = None,
        revision: str | None = None,
        local_files_only: bool | None = None,
        torch_dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> DiffusersVAECodec:
        """Loads a diffusers VAE from a local directory or a hub id and wraps it.

        Args:
            path: a local model directory (or a pipeline directory with ``subfolder="vae"``),
                or a hub id ``"org/name"``.
            kind: ``"AutoencoderKL"`` or ``"AutoencoderKLWan"``; None reads the config's
                ``_class_name``.
            subfolder: the VAE's folder inside ``path``, if any.
            revision: the hub revision (branch, tag or commit) to load; hub ids only.
            local_files_only: hub ids: read only the local cache (default: ``HF_HUB_OFFLINE``).
                Local directories never touch the network.
            torch_dtype: dtype of the VAE weights (the normalisation stays float32).
            device: where the codec lives.
        """
        model_dir, source = resolve_model_dir(
            path, subfolder=subfolder, revision=revision, local_files_only=local_files_only
        )
        config_path = model_dir / "config.json"
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
        # The resolved folder (a hub snapshot in the local cache) is loaded as a local one.
        vae = getattr(diffusers, kind).from_pretrained(
            str(model_dir), torch_dtype=torch_dtype, local_files_only=True
        )
        codec = cls(vae).to(device)
        codec.source = source
        return codec


def is_hub_id(path: str | Path) -> bool:
    """``"org/name"`` that is not an existing local path."""
    return isinstance(path, str) and HUB_ID.fullmatch(path) is not None and not Path(path).exists()


def resolve_model_dir(
    path: str | Path,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
) -> tuple[Path, dict[str, str | None]]:
    """``(folder holding config.json and the weights, source)`` of a local directory or a hub
    id; ``source`` says which (``{"dir": ...}`` or ``{"hub_id", "revision", "subfolder"}``).
    A hub id's files are fetched into (or read from) the huggingface_hub cache."""
    if is_hub_id(path):
        try:
            from huggingface_hub import constants, snapshot_download
            from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
        except ImportError as e:  # diffusers depends on it
            raise ImportError("hub ids need huggingface_hub (a diffusers dependency)") from e
        offline = constants.HF_HUB_OFFLINE if local_files_only is None else local_files_only
        patterns = [f"{subfolder}/*" if subfolder else "*"]
        try:
            root = Path(
                snapshot_download(
                    str(path),
                    revision=revision,
                    allow_patterns=patterns,
                    local_files_only=offline,
                )
            )
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
            where = "the local huggingface_hub cache" if offline else "the hub"
            raise ValueError(
                f"codec {path!r} (revision {revision or 'main'}): not found in {where} "
                f"({type(e).__name__}: {e}); pass a local directory, or allow hub access "
                "(unset HF_HUB_OFFLINE)"
            ) from e
        model_dir = root / subfolder if subfolder else root
        source = {
            "hub_id": str(path),
            "revision": revision,
            "subfolder": subfolder,
            "dir": str(model_dir),  # the snapshot in the local cache
        }
    else:
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to hub ids, {str(path)!r} is a path")
        root = Path(path)
        if not root.is_dir():
            raise ValueError(
                f"codec {str(path)!r} is neither an existing local directory nor a hub id "
                "('org/name')"
            )
        model_dir = root / subfolder if subfolder else root
        source = {"dir": str(root.resolve()), "subfolder": subfolder}
    if not (model_dir / "config.json").is_file():
        raise ValueError(
            f"{model_dir / 'config.json'} does not exist: not a diffusers model directory"
        )
    return model_dir, source


def _wan_patchify(x_BCTHW: torch.Tensor, patch: int) -> torch.Tensor:
    """diffusers' Wan 2.2 ``patchify`` (spatial only, so it commutes with chunking in time)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import patchify

    return patchify(x_BCTHW, patch_size=patch)
