"""The sampler's settings, and where those it leaves open come from: the bundle.

A model's training noise settings (the shift of its schedule, the structure's ``sigma_s_max``,
the context noise of clean frames) are properties of the bundle, not choices of the user: a
:class:`SamplerConfig` leaves them ``None`` ("the bundle's") unless set by name, and
:func:`resolve_sampler` fills them from the bundle's :class:`~df_models.bundle.InferenceMeta`.
The bundle also records the sampler it was evaluated with (``InferenceMeta.sampler``);
:func:`bundle_sampler` starts from those and applies the caller's overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from df_core import flow_sigmas, struct_sigmas
from df_core.checks import (
    boolean,
    non_negative_float,
    non_negative_int,
    one_of,
    positive_float,
    positive_int,
    unit_float,
)

# Fields the bundle's training values fill when left None, and the InferenceMeta field of each.
TRAINING_FIELDS = {"shift": "noise_shift", "sigma_s_start": "sigma_s_max", "sigma_ctx": "sigma_ctx"}


@dataclass(frozen=True, kw_only=True, slots=True)
class SamplerConfig:
    steps: int = 4  # K: denoising steps per frame
    chunk: int = 1  # frames generated together
    stagger: int | None = None  # iterations between chunk starts; None = steps (chunk-wise)
    shift: float | None = None  # shift of the video schedule; None: the bundle's training shift
    # structure starts here; None: the bundle's sigma_s_max (DESIGN.md, correction 3)
    sigma_s_start: float | None = None
    struct_finish_step: int | None = None  # structure clean after this step; None = K
    clean_pass: str = "exact"  # exact: clean frames rewritten at sigma_ctx | approx: last step's
    sigma_ctx: float | None = None  # level of the clean pass; None: the bundle's context noise
    fuse_clean: bool = False  # exact: clean chunk rides in the next chunk's first pass
    cfg_audio: float = 1.0  # classifier-free guidance scale on audio; 1 = off
    # the structure stream's own audio-guidance scale; None = cfg_audio. Guidance sharpens the
    # video's mouth but extrapolates the structure too (its jaw overshoots), so the two
    # streams may want different scales.
    cfg_struct: float | None = None
    struct_prior: str = "previous"  # structure starts from the last clean frame's | zero
    # shared part of every frame's initial video noise (df_infer.frame_noise); 0 = independent
    noise_share: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        positive_int("SamplerConfig.steps", self.steps)
        positive_int("SamplerConfig.chunk", self.chunk)
        if self.stagger is not None and not (
            positive_int("SamplerConfig.stagger", self.stagger) <= self.steps
        ):
            raise ValueError(
                f"SamplerConfig.stagger must be in [1, steps={self.steps}] or None, got "
                f"{self.stagger!r}"
            )
        if self.shift is not None:
            positive_float("SamplerConfig.shift", self.shift)
        if (
            self.sigma_s_start is not None
            and unit_float("SamplerConfig.sigma_s_start", self.sigma_s_start) == 0.0
        ):
            raise ValueError("SamplerConfig.sigma_s_start must be > 0 (structure starts noisy)")
        if self.sigma_ctx is not None:
            unit_float("SamplerConfig.sigma_ctx", self.sigma_ctx)
        if self.struct_finish_step is not None and not (
            positive_int("SamplerConfig.struct_finish_step", self.struct_finish_step) <= self.steps
        ):
            raise ValueError(
                f"SamplerConfig.struct_finish_step must be in [1, steps={self.steps}], got "
                f"{self.struct_finish_step!r}"
            )
        one_of("SamplerConfig.clean_pass", self.clean_pass, ("exact", "approx"))
        if boolean("SamplerConfig.fuse_clean", self.fuse_clean) and self.clean_pass != "exact":
            raise ValueError(
                "SamplerConfig.fuse_clean needs SamplerConfig.clean_pass='exact' (the "
                "approximate pass has no clean pass to fuse)"
            )
        non_negative_float("SamplerConfig.cfg_audio", self.cfg_audio)
        if self.cfg_struct is not None:
            non_negative_float("SamplerConfig.cfg_struct", self.cfg_struct)
        one_of("SamplerConfig.struct_prior", self.struct_prior, ("previous", "zero"))
        unit_float("SamplerConfig.noise_share", self.noise_share)
        non_negative_int("SamplerConfig.seed", self.seed)

    @property
    def struct_guidance(self) -> float:
        """The structure stream's guidance scale."""
        return self.cfg_audio if self.cfg_struct is None else self.cfg_struct

    @property
    def guided(self) -> bool:
        """Whether a pass needs the unconditional half of the batch."""
        return self.cfg_audio != 1.0 or self.struct_guidance != 1.0

    @property
    def every(self) -> int:
        """Iterations between chunk starts."""
        return self.steps if self.stagger is None else self.stagger

    @property
    def max_pass_frames(self) -> int:
        """Frames of the largest pass: the clean chunk plus every chunk in flight."""
        in_flight = -(-self.steps // self.every)
        riding = self.clean_pass == "exact" and self.fuse_clean
        return self.chunk * (in_flight + riding)

    def check_resolved(self) -> None:
        """ValueError naming the first training value still left to the bundle."""
        for name in TRAINING_FIELDS:
            if getattr(self, name) is None:
                raise ValueError(
                    f"SamplerConfig.{name} is None (the bundle's training value): resolve the "
                    "config against the bundle (resolve_sampler, StreamingGenerator."
                    "default_sampler) or set it"
                )

    def sigmas(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sigma_v_K1, sigma_s_K1)``, float32 on ``device``."""
        self.check_resolved()
        v = flow_sigmas(self.steps, shift=self.shift, device=device)
        s = struct_sigmas(
            self.steps,
            sigma_start=self.sigma_s_start,
            shift=self.shift,
            finish_step=self.struct_finish_step,
            device=device,
        )
        return v, s


def resolve_sampler(config: SamplerConfig, meta) -> SamplerConfig:
    """``config`` with the fields it leaves None (shift, sigma_s_start, sigma_ctx) set to the
    training values of the bundle whose :class:`~df_models.bundle.InferenceMeta` is ``meta``;
    fields set by name stay as they are."""
    unset = {
        name: getattr(meta, meta_name)
        for name, meta_name in TRAINING_FIELDS.items()
        if getattr(config, name) is None
    }
    return replace(config, **unset)


def bundle_sampler(meta, **overrides: Any) -> SamplerConfig:
    """The sampler a bundle recommends (``meta.sampler``, the settings it was evaluated with),
    with ``overrides`` by field name, resolved against the bundle's training values."""
    known = {f.name for f in fields(SamplerConfig)}
    for origin, values in (("inference.json sampler", meta.sampler), ("overrides", overrides)):
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{origin}: unknown SamplerConfig fields {unknown}; known: {sorted(known)}"
            )
    return resolve_sampler(SamplerConfig(**{**meta.sampler, **overrides}), meta)
