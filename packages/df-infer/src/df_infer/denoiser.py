"""The model as both samplers call it: noisy frames and their levels in, guided velocities out.

Legend: B batch, T frames of the call, C latent channels, H W latent size, Ds structure dim,
La audio window, Da audio feature dim, R reference tokens.

A :class:`Denoiser` holds the model, the reference (the sink frame and the optional global
reference features), the guidance scale of each stream and, for streaming, the KV cache. Its
call has one signature for the streaming sampler (a chunk against the cache) and the
full-sequence one (the training forward over the whole clip); only the streaming call may
commit the frames it carries to the cache.
"""

from __future__ import annotations

import inspect

import torch


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): ``uncond + scale * (cond - uncond)``.

    ``scale = 1`` is the conditional prediction, ``0`` the unconditional one, ``> 1``
    extrapolates away from the unconditional prediction.
    """
    return uncond + scale * (cond - uncond)


def _double(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else torch.cat([x, x])


class Denoiser:
    """``(z, s, sigma_v, sigma_s, audio) -> (v_hat, s_hat)`` for a DualForceDiT.

    With guidance on (either scale not 1) every call runs the model on a doubled batch, the
    conditional half first and the unconditional half (null audio tokens) second, and returns
    the guided velocity of each stream: the video's with ``cfg_video``, the structure's with
    ``cfg_struct``.

    Args:
        model: a :class:`~df_models.DualForceDiT`.
        ref_latent_BCHW: the reference image's normalised codec latent (the sink frame).
        cfg_video, cfg_struct: the guidance scale of each stream (1 = conditional only).
        ref_feats_BRD: optional global reference features ``[B, R, ref_feature_dim]``.
        cache: a KV cache of ``model.new_cache`` with batch ``2B`` when guided, else ``B``:
            calls then stream through it (:meth:`write_sink` first); None: calls run the
            training forward over whole clips.
        cache_modulations: a streaming call that names its noise ``levels`` reuses the
            model's modulations (``DualForceDiT.modulations``) computed at the first call with
            those levels, instead of computing them in every pass (the same values).
    """

    def __init__(
        self,
        model,
        ref_latent_BCHW: torch.Tensor,
        *,
        cfg_video: float = 1.0,
        cfg_struct: float = 1.0,
        ref_feats_BRD: torch.Tensor | None = None,
        cache=None,
        cache_modulations: bool = True,
    ) -> None:
        self.model, self.cache = model, cache
        # The streaming levers where the model has them (a model with the plain streaming
        # signature still streams, without them).
        stream_args = (
            inspect.signature(model.forward_stream).parameters
            if hasattr(model, "forward_stream")
            else {}
        )
        self._key_only = "outputs" in stream_args
        self.cache_modulations = (
            cache_modulations and "modulations" in stream_args and hasattr(model, "modulations")
        )
        self._modulations: dict = {}  # levels key -> the model's Modulations
        self.cfg_video, self.cfg_struct = cfg_video, cfg_struct
        self.guided = cfg_video != 1.0 or cfg_struct != 1.0
        self.dtype = next(model.parameters()).dtype
        B, device = ref_latent_BCHW.shape[0], ref_latent_BCHW.device
        self.batch = 2 * B if self.guided else B  # the model's batch
        if cache is not None and cache.batch != self.batch:
            raise ValueError(f"cache must have batch {self.batch}, got {cache.batch}")
        self.ref_latent_BCHW = _double(ref_latent_BCHW) if self.guided else ref_latent_BCHW
        self.ref_feats_BRD = _double(ref_feats_BRD) if self.guided else ref_feats_BRD
        # The unconditional half drops its audio.
        self.drop_audio_B = torch.arange(self.batch, device=device) >= B if self.guided else None

    @classmethod
    def for_sampler(
        cls,
        model,
        ref_latent_BCHW: torch.Tensor,
        config,
        *,
        ref_feats_BRD=None,
        cache=None,
        cache_modulations: bool = True,
    ) -> Denoiser:
        """The denoiser of a :class:`~df_infer.sampler_config.SamplerConfig`: its video and
        structure guidance scales."""
        return cls(
            model,
            ref_latent_BCHW,
            cfg_video=config.cfg_audio,
            cfg_struct=config.struct_guidance,
            ref_feats_BRD=ref_feats_BRD,
            cache=cache,
            cache_modulations=cache_modulations,
        )

    def write_sink(self) -> None:
        """Resets the cache and writes the reference sink frame into it."""
        self.model.prefill(self.cache, self.ref_latent_BCHW, self.ref_feats_BRD)

    def __call__(
        self,
        z_BTCHW: torch.Tensor,
        s_BTDs: torch.Tensor | None,
        sigma_v_BT: torch.Tensor,
        sigma_s_BT: torch.Tensor | None,
        audio_BTLaDa: torch.Tensor,
        *,
        commit: bool | int = False,
        levels=None,
        outputs: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The guided velocities ``(v_BTCHW, s_BTDs)`` in float32 (``s`` None without the
        structure stream).

        Inputs are the sampler's float32 flow state and levels (cast to the model's dtype
        here) at batch ``B``; ``commit`` (streaming only) keeps that many leading frames'
        keys/values in the cache (True: all), see ``DualForceDiT.forward_stream``.
        ``levels`` (streaming only): a hashable name of this call's per-frame noise levels;
        every call with the same name must have the same ``sigma_v_BT`` / ``sigma_s_BT``
        (they are then read once, see ``cache_modulations``). ``outputs=False`` (a committing
        streaming call whose velocities are discarded): only the cache is written (by a
        key-only pass once the window is full, a full pass before); returns None.
        """
        z, s = z_BTCHW.to(self.dtype), s_BTDs.to(self.dtype) if s_BTDs is not None else None
        audio = audio_BTLaDa.to(self.dtype)
        inputs = (z, s, sigma_v_BT, sigma_s_BT, audio)
        if self.guided:
            inputs = tuple(_double(x) for x in inputs)
        if self.cache is not None:
            if z.device.type == "cuda":
                # A new step for CUDA-graph trees (a pass compiled with reduce-overhead): this
                # pass may reuse the previous pass's output memory, which the Euler step has
                # already consumed. A no-op for eager models.
                torch.compiler.cudagraph_mark_step_begin()
            mods = None
            if levels is not None and self.cache_modulations:
                mods = self._modulations.get(levels)
                if mods is None:
                    mods = self._modulations[levels] = self.model.modulations(*inputs[2:4])
            levers = {} if mods is None else {"modulations": mods}
            # Key-only only where the pass has no masks (the window is full: the whole
            # stream but its first frames): a masked clean pass then shares the masked
            # denoising pass's compiled graph, 3 pass shapes to compile instead of 4.
            if not outputs and self._key_only and self.cache.all_visible(z.shape[1]):
                levers["outputs"] = False
            out = self.model.forward_stream(
                self.cache,
                *inputs,
                commit=commit,
                ref_latent_BCHW=self.ref_latent_BCHW,  # read by models with ref_concat
                ref_feats_BRD=self.ref_feats_BRD,
                drop_audio_B=self.drop_audio_B,
                **levers,
            )
            if not outputs:
                return None  # the cache is written; the velocities are not wanted
            v_hat, s_hat = out
        else:
            if commit is not False or not outputs or levels is not None:
                raise ValueError(
                    "commit needs a cache (so do outputs=False and levels): the full forward "
                    "writes none"
                )
            v_hat, s_hat = self.model(
                *inputs,
                ref_latent_BCHW=self.ref_latent_BCHW,
                ref_feats_BRD=self.ref_feats_BRD,
                drop_audio_B=self.drop_audio_B,
            )
        if self.guided:
            half = v_hat.shape[0] // 2
            v_hat = guide(v_hat[:half], v_hat[half:], self.cfg_video)
            if s_hat is not None:
                s_hat = guide(s_hat[:half], s_hat[half:], self.cfg_struct)
        return v_hat.float(), (s_hat.float() if s_hat is not None else None)
