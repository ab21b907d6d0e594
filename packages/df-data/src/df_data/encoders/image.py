"""Global reference tokens: a frozen DINOv2 or CLIP vision encoder on the reference frame.

Legend: ``N`` images, ``H W`` pixels, ``R`` tokens per image, ``Dr`` the encoder's width,
``g`` the pooled grid side.

The tokens of one image (``R = 1 + g * g``, plus the register tokens with ``registers``):

- the CLS token: DINOv2's ``last_hidden_state[:, 0]`` (after its final LayerNorm; equal to
  ``pooler_output``), CLIP's ``pooler_output`` (``post_layernorm`` of its CLS);
- the patch tokens average-pooled to a ``g x g`` grid (``pool``; 0: CLS only; 1: their mean),
  taken from the same normalised output (CLIP: ``post_layernorm`` applied to them too), so the
  tokens keep coarse layout (where the face is) without a token per patch;
- with ``registers`` and a ``dinov2_with_registers`` model, its register tokens.

Images are preprocessed by the model's own image processor (``preprocessor_config.json``:
resize, centre crop, mean/std), from uint8 RGB frames.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from df_core.checks import boolean, non_negative_int, one_of
from df_data.encoders import hub
from df_models.io import config_hash

logger = logging.getLogger(__name__)

DEFAULT_MODELS = {"dinov2": "facebook/dinov2-base", "clip": "openai/clip-vit-large-patch14"}
MODEL_TYPES = {
    "dinov2": {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel"},
    "clip": {"clip": "CLIPModel (its vision tower)", "clip_vision_model": "CLIPVisionModel"},
}


class RefEncoder:
    """uint8 RGB images ``[N, H, W, 3]`` -> float32 tokens ``[N, R, Dr]``.

    Args:
        kind: ``dinov2`` or ``clip``.
        model: hub id or folder (default ``DEFAULT_MODELS[kind]``).
        revision: hub revision (not for folders).
        pool: side ``g`` of the pooled patch grid (module doc).
        registers: add the register tokens (DINOv2 with registers only).
        device: where the encoder runs.
    """

    def __init__(
        self,
        kind: str = "dinov2",
        model: str | None = None,
        *,
        revision: str | None = None,
        pool: int = 2,
        registers: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        import transformers

        one_of("reference encoder kind", kind, tuple(DEFAULT_MODELS))
        non_negative_int("RefEncoder.pool", pool)
        boolean("RefEncoder.registers", registers)
        self.kind, self.name, self.pool, self.registers = kind, kind, pool, registers
        self.source = hub.Source(model or DEFAULT_MODELS[kind], revision)
        hub.check_folder(self.source, preprocessor=True)
        config = hub.load_config(self.source, MODEL_TYPES[kind])
        if kind == "dinov2":
            with_registers = config.model_type == "dinov2_with_registers"
            if registers and not with_registers:
                raise ValueError(
                    f"registers=True, but {hub.CONFIG_NAME} of {self.source.describe()} has "
                    f"model_type {config.model_type!r}: only dinov2_with_registers has them"
                )
            cls = (
                transformers.Dinov2WithRegistersModel
                if with_registers
                else transformers.Dinov2Model
            )
            self.num_registers = int(getattr(config, "num_register_tokens", 0))
        else:
            cls, self.num_registers = transformers.CLIPVisionModel, 0
        self.model = hub.load_pretrained(cls, self.source)
        self.processor = hub.load_processor(transformers.AutoImageProcessor, self.source)
        vision = getattr(config, "vision_config", config)
        self.dim = int(vision.hidden_size)
        self.weights_sha256 = hub.weights_sha256(self.model)
        self.device = torch.device(device)
        self.model.to(self.device)

    @property
    def tokens(self) -> int:
        """``R``."""
        return 1 + self.pool * self.pool + (self.num_registers if self.registers else 0)

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "weights_sha256": self.weights_sha256,
            "pool": self.pool,
            "registers": self.registers,
            "tokens": self.tokens,
            "dim": self.dim,
        }

    @property
    def config_hash(self) -> str:
        return config_hash({"name": self.name, **self.config()})

    def identity(self) -> dict[str, Any]:
        """What the store and the bundle record (``kwargs`` rebuild it)."""
        return {
            "name": self.name,
            "config_hash": self.config_hash,
            "model": self.source.model,
            "revision": self.source.revision,
            "weights_sha256": self.weights_sha256,
            "tokens": self.tokens,
            "dim": self.dim,
            "kwargs": {
                "model": self.source.model,
                "revision": self.source.revision,
                "pool": self.pool,
                "registers": self.registers,
            },
        }

    @torch.no_grad()
    def encode(self, images_NHW3: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB ``[N, H, W, 3]`` -> float32 ``[N, R, Dr]`` on the CPU."""
        images = np.asarray(images_NHW3.cpu() if torch.is_tensor(images_NHW3) else images_NHW3)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"reference images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}"
            )
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, torch.float32)
        out = self.model(pixel_values=pixels)
        hidden = out.last_hidden_state
        if self.kind == "clip":
            # CLIP keeps its last LayerNorm outside last_hidden_state (pooler_output = the
            # normalised CLS); the patch tokens get the same one.
            hidden = getattr(self.model, "vision_model", self.model).post_layernorm(hidden)
        first_patch = 1 + self.num_registers
        tokens = [hidden[:, :1]]
        if self.pool:
            patches = hidden[:, first_patch:]
            patch = self._patch_size()
            gh, gw = pixels.shape[-2] // patch, pixels.shape[-1] // patch
            if gh * gw != patches.shape[1]:
                raise ValueError(
                    f"{self.kind} gave {patches.shape[1]} patch tokens for a {gh}x{gw} grid"
                )
            grid = patches.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], gh, gw)
            pooled = torch.nn.functional.adaptive_avg_pool2d(grid, self.pool)
            tokens.append(pooled.flatten(2).transpose(1, 2))
        if self.registers:
            tokens.append(hidden[:, 1:first_patch])
        return torch.cat(tokens, dim=1).float().cpu()

    def _patch_size(self) -> int:
        config = self.model.config
        return int(getattr(config, "patch_size", 14))


REF_ENCODERS: dict[str, Callable[..., RefEncoder]] = {
    "dinov2": lambda **kw: RefEncoder("dinov2", **kw),
    "clip": lambda **kw: RefEncoder("clip", **kw),
}


def build_ref_encoder(name: str = "dinov2", **kwargs: Any) -> RefEncoder:
    """A reference encoder by name; ValueError listing the known names."""
    if name not in REF_ENCODERS:
        raise ValueError(f"unknown reference encoder {name!r}; known: {sorted(REF_ENCODERS)}")
    return REF_ENCODERS[name](**kwargs)


def ref_encoder_from_identity(
    identity: dict[str, Any], *, model: str | None = None, device: str | torch.device = "cpu"
) -> RefEncoder:
    """Rebuilds the recorded reference encoder (``model`` overrides where its files are) and
    checks its weights and settings hash to the recorded ``config_hash``."""
    if not isinstance(identity, dict) or "name" not in identity:
        raise ValueError(f"ref_encoder must be a dict with a 'name', got {identity!r}")
    kwargs = dict(identity.get("kwargs", {}))
    if model is not None:
        kwargs["model"], kwargs["revision"] = model, None
    encoder = build_ref_encoder(identity["name"], device=device, **kwargs)
    expected = identity.get("config_hash")
    if expected is not None and encoder.config_hash != expected:
        raise ValueError(
            f"reference encoder {identity['name']!r} from {encoder.source.describe()} is "
            f"{encoder.config()} (config_hash {encoder.config_hash[:12]}), but the model was "
            f"trained with config_hash {expected[:12]} (weights "
            f"{str(identity.get('weights_sha256'))[:12]}): give the encoder it was trained with"
        )
    return encoder
