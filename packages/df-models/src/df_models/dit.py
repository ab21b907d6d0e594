"""The DualForce causal dual-stream diffusion transformer.

Two entry points, one code path (DESIGN.md, "The model"):

- :meth:`DualForceDiT.forward` (training): the whole clip at once, the reference as a clean
  sink frame in front of frame 0, per-frame noise levels and the block-causal mask; returns
  the velocity of every frame of both modalities.
- :meth:`DualForceDiT.forward_stream` (streaming): one chunk of frames against a
  :class:`~df_core.KVCache`, after :meth:`DualForceDiT.prefill` wrote the sink; ``commit``
  says whether the chunk's keys/values stay in the cache (the clean pass) or are scratch
  (denoising steps). Its pass is :meth:`DualForceDiT.forward_chunk`, the part to
  ``torch.compile``; the host bookkeeping around it (input checks, the commit, whether the
  chunk may attend with no mask) stays eager, so a compiled pass never guards on a frame
  counter.

Both build their attention sites with :func:`df_models.sites.build_sites` and call the same
blocks; only the token frame ids and key sources differ, so the streaming outputs of a chunk
equal the training outputs for those frames.

Legend: B batch, T latent frames, F = frames in this pass (1 + T with the sink), C latent
channels, H W latent size, N_v / N_s tokens per frame, D width, Ds structure dim, La audio
window, Da audio feature dim, R reference tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from einops import repeat
from torch import nn

from df_core import KVCache, token_frames
from df_models.blocks import DualBlock
from df_models.config import DualForceConfig
from df_models.inputs import check_drop, check_frames, check_stream_fits
from df_models.layers import (
    AudioProjector,
    FinalLayer,
    NoiseEmbedder,
    PatchEmbed,
    StructHead,
    StructTokenizer,
    unpatchify,
)
from df_models.pretrained import load_pretrained_state, read_config, save_pretrained
from df_models.sites import AttentionSites, build_sites, cache_streams, struct_layers

KIND = "DualForceDiT"


class StreamTokens(NamedTuple):
    """Tokens and per-frame noise embeddings of both streams for the ``F`` frames of one pass;
    the struct fields are None without the struct stream."""

    video: torch.Tensor  # [B, F, N_v, D_v]
    video_cond: torch.Tensor  # [B, F, D_v]
    struct: torch.Tensor | None  # [B, F, N_s, D_s]
    struct_cond: torch.Tensor | None  # [B, F, D_s]


class Modulations(NamedTuple):
    """Every AdaLN modulation of one pass, a function of its frames' noise levels only
    (:meth:`DualForceDiT.modulations`): a stream whose frames take the same few levels over
    and over computes them once per level instead of once per pass. The struct fields are None
    without the struct stream."""

    video: torch.Tensor  # [L, B, F, 6 D_v]: each block's shift/scale/gate x 2
    video_final: torch.Tensor  # [B, F, 2 D_v]: the video head's shift/scale
    struct: torch.Tensor | None  # [L_s, B, F, 6 D_s]: each struct block's
    struct_final: torch.Tensor | None  # [B, F, 2 D_s]


class DualForceDiT(nn.Module):
    def __init__(self, config: DualForceConfig) -> None:
        super().__init__()
        self.config = c = config
        self.attn_backend = "auto"  # df-core backend; "flex" on GPU, "dense" on CPU
        p = c.patch_size
        self.patch_embed = PatchEmbed(c.latent_channels, p, c.video_dim)
        self.ref_embed = PatchEmbed(c.latent_channels, p, c.video_dim) if c.ref_concat else None
        self.video_noise = NoiseEmbedder(c.video_dim, c.noise_freq_dim)
        self.audio_proj = AudioProjector(c.audio_dim, c.audio_layers, c.audio_window, c.video_dim)
        self.ref_proj = nn.Linear(c.ref_feature_dim, c.video_dim) if c.ref_tokens_enabled else None
        # The "no reference" token, for reference dropout (CFG on the reference tokens).
        self.ref_null = nn.Parameter(torch.zeros(1, c.video_dim)) if c.ref_tokens_enabled else None
        self.blocks = nn.ModuleList(DualBlock(c, i) for i in range(c.video_depth))
        self.video_head = FinalLayer(c.video_dim, p * p * c.latent_channels, c.norm_eps)
        if c.struct_enabled:
            self.struct_tokenizer = StructTokenizer(c.struct_raw_dim, c.struct_tokens, c.struct_dim)
            self.struct_noise = NoiseEmbedder(c.struct_dim, c.noise_freq_dim)
            # The struct stream's sink: learned tokens; the reference reaches them through the
            # bridge (same frame: sink to sink), since no 3D input exists at inference.
            self.struct_sink = nn.Parameter(torch.zeros(c.struct_tokens, c.struct_dim))
            self.struct_final = FinalLayer(c.struct_dim, c.struct_dim, c.norm_eps)
            self.struct_head = StructHead(c.struct_tokens, c.struct_dim, c.struct_raw_dim)

    # Weights ---------------------------------------------------------------------------------

    def init_weights(self) -> None:
        """Initialises every parameter (call after ``to_empty`` when built on the meta device)."""
        self.patch_embed.init_weights()
        if self.ref_embed is not None:
            # Zero: a fresh model ignores this path, and learns how much of the reference to
            # take at each position.
            nn.init.zeros_(self.ref_embed.proj.weight)
            nn.init.zeros_(self.ref_embed.proj.bias)
        self.video_noise.init_weights()
        self.audio_proj.init_weights()
        if self.ref_proj is not None:
            nn.init.normal_(self.ref_null, std=0.02)
            nn.init.xavier_uniform_(self.ref_proj.weight)
            nn.init.zeros_(self.ref_proj.bias)
        for block in self.blocks:
            block.init_weights()
        self.video_head.init_weights()
        if self.config.struct_enabled:
            self.struct_tokenizer.init_weights()
            self.struct_noise.init_weights()
            nn.init.normal_(self.struct_sink, std=0.02)
            self.struct_final.init_weights()
            # The final layer's zero projection would zero the head's input too; the head
            # itself ends in a zero layer, so keep the final projection an identity-like map.
            nn.init.eye_(self.struct_final.proj.weight)
            self.struct_head.init_weights()

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_pretrained(self, {"kind": KIND, **self.config.to_dict()}, directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, device: torch.device | str = "cpu"
    ) -> DualForceDiT:
        config = DualForceConfig.from_dict(read_config(directory, KIND))
        with torch.device("meta"):
            model = cls(config)
        return load_pretrained_state(model, directory, device=device)

    # Embeddings ------------------------------------------------------------------------------

    def _embed_frames(
        self, z_BTCHW, s_BTDs, sigma_v_BT, sigma_s_BT, ref_latent_BCHW=None, *, cond=True
    ) -> StreamTokens:
        """``cond=False``: no noise embeddings (the pass's modulations are given)."""
        struct = self.config.struct_enabled
        return StreamTokens(
            video=self._video_tokens(z_BTCHW, ref_latent_BCHW),
            video_cond=self.video_noise(sigma_v_BT) if cond else None,
            struct=self.struct_tokenizer(s_BTDs) if struct else None,
            struct_cond=self.struct_noise(sigma_s_BT) if struct and cond else None,
        )

    def modulations(self, sigma_v_BT: torch.Tensor, sigma_s_BT: torch.Tensor | None) -> Modulations:
        """The modulations of a pass whose frames have these noise levels ``[B, F]``: give
        them to :meth:`forward_stream` to skip computing them there (the same values)."""
        c = self.config
        if c.struct_enabled and sigma_s_BT is None:
            raise ValueError("sigma_s_BT is required: the model has the struct stream")
        cv = self.video_noise(sigma_v_BT)
        video = torch.stack([b.video.modulations(cv) for b in self.blocks])
        struct = struct_final = None
        if c.struct_enabled:
            cs = self.struct_noise(sigma_s_BT)
            struct = torch.stack([b.struct.modulations(cs) for b in self.blocks if b.struct])
            struct_final = self.struct_final.modulations(cs)
        return Modulations(video, self.video_head.modulations(cv), struct, struct_final)

    def _video_tokens(self, z_BTCHW: torch.Tensor, ref_latent_BCHW) -> torch.Tensor:
        """``[B, T, N_v, D_v]``: the frames' patches, plus the reference's at the same
        positions with ``ref_concat``."""
        tokens = self.patch_embed(z_BTCHW)
        if self.ref_embed is None:
            return tokens
        if ref_latent_BCHW is None:
            raise ValueError(
                "DualForceConfig.ref_concat is on: the streaming pass needs ref_latent_BCHW"
            )
        if ref_latent_BCHW.shape[0] != z_BTCHW.shape[0]:
            raise ValueError(
                f"ref_latent_BCHW has batch {ref_latent_BCHW.shape[0]}, the frames have "
                f"{z_BTCHW.shape[0]}"
            )
        return tokens + self.ref_embed(ref_latent_BCHW[:, None].to(tokens.dtype))

    def _embed_sink(self, ref_latent_BCHW: torch.Tensor) -> StreamTokens:
        c = self.config
        B = ref_latent_BCHW.shape[0]
        expected = (c.latent_channels, c.latent_height, c.latent_width)
        if ref_latent_BCHW.dim() != 4 or tuple(ref_latent_BCHW.shape[1:]) != expected:
            raise ValueError(
                f"ref_latent_BCHW must have shape [B, {expected}], got {tuple(ref_latent_BCHW.shape)}"
            )
        zero_B1 = torch.zeros(B, 1, device=ref_latent_BCHW.device)
        return StreamTokens(
            video=self._video_tokens(ref_latent_BCHW[:, None], ref_latent_BCHW),
            video_cond=self.video_noise(zero_B1),
            struct=repeat(self.struct_sink, "n d -> b 1 n d", b=B) if c.struct_enabled else None,
            struct_cond=self.struct_noise(zero_B1) if c.struct_enabled else None,
        )

    def _null_audio(self, batch: int, frames: int) -> torch.Tensor:
        """The "no audio" tokens ``[B, F, La, D_v]`` (the sink frame, audio dropout)."""
        return repeat(self.audio_proj.null, "a d -> b f a d", b=batch, f=frames)

    def _audio_tokens(
        self, audio_BTLDa: torch.Tensor, drop_audio_B: torch.Tensor | None
    ) -> torch.Tensor:
        c = self.config
        B, T = audio_BTLDa.shape[:2]
        if audio_BTLDa.shape[2] != c.audio_window or audio_BTLDa.shape[-1] != c.audio_dim:
            raise ValueError(
                f"audio_BTLDa must hold windows of La={c.audio_window} feature frames of "
                f"Da={c.audio_dim} [B, T, La, ..., Da], got {tuple(audio_BTLDa.shape)}"
            )
        tokens = self.audio_proj(audio_BTLDa)
        if drop_audio_B is not None:
            check_drop("drop_audio_B", drop_audio_B, B)
            tokens = torch.where(drop_audio_B[:, None, None, None], self._null_audio(B, T), tokens)
        return tokens

    def _ref_tokens(
        self, ref_feats_BRD: torch.Tensor | None, batch: int, drop_ref_B: torch.Tensor | None
    ) -> torch.Tensor | None:
        c = self.config
        if self.ref_proj is None:
            if ref_feats_BRD is not None:
                raise ValueError("ref_feats_BRD was given but config.ref_tokens_enabled is False")
            return None
        if ref_feats_BRD is None:
            raise ValueError("ref_feats_BRD is required: config.ref_tokens_enabled is True")
        if (
            ref_feats_BRD.dim() != 3
            or ref_feats_BRD.shape[0] != batch
            or ref_feats_BRD.shape[2] != c.ref_feature_dim
        ):
            raise ValueError(
                f"ref_feats_BRD must be [B={batch}, R, {c.ref_feature_dim}], got {tuple(ref_feats_BRD.shape)}"
            )
        tokens = self.ref_proj(ref_feats_BRD)
        if drop_ref_B is not None:
            check_drop("drop_ref_B", drop_ref_B, batch)
            tokens = torch.where(drop_ref_B[:, None, None], self.ref_null.expand_as(tokens), tokens)
        return tokens

    def _run(
        self,
        tokens: StreamTokens,
        *,
        audio_BFAD: torch.Tensor,
        ref_BRD: torch.Tensor | None,
        sites: AttentionSites,
        mods: Modulations | None = None,
        outputs: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Every block over the tokens of one pass; the video head's output ``[B, F, N_v,
        p*p*C]`` and the struct head's ``[B, F, Ds]`` (None without the struct stream).
        ``mods``: the pass's modulations, computed before (``tokens`` then need no noise
        embeddings). ``outputs=False``: only the keys/values matter (a clean pass): each
        stream's last block writes its keys/values and stops, no head runs, ``(None, None)``."""
        c = self.config
        last_struct = struct_layers(c) - 1
        last = len(self.blocks) - 1
        xv, xs = tokens.video, tokens.struct
        out_s = None
        for i, block in enumerate(self.blocks):
            xv, xs = block(
                xv,
                xs,
                video_cond_BFD=tokens.video_cond,
                struct_cond_BFD=tokens.struct_cond,
                audio_BFAD=audio_BFAD,
                ref_BRD=ref_BRD,
                sites=sites,
                video_mod_BF6D=None if mods is None else mods.video[i],
                struct_mod_BF6D=None if mods is None or block.struct is None else mods.struct[i],
                video_out=outputs or i < last,
                struct_out=outputs or i < last_struct,
            )
            if c.struct_enabled and i == last_struct and outputs:
                out_s = self.struct_head(
                    self.struct_final(
                        xs, tokens.struct_cond, None if mods is None else mods.struct_final
                    )
                )
        if not outputs:
            return None, None
        head_mod = None if mods is None else mods.video_final
        return self.video_head(xv, tokens.video_cond, head_mod), out_s

    def _velocity(
        self,
        out_BTCHW: torch.Tensor,
        z_BTCHW: torch.Tensor,
        sigma_v_BT: torch.Tensor,
        ref_latent_BCHW: torch.Tensor | None,
    ) -> torch.Tensor:
        """The video velocity from the head's output: itself (``video_prediction="velocity"``),
        or ``(z - x0_hat) / max(sigma, clean_sigma_min)`` in float32 from a clean prediction
        (bf16's 8 bits would be divided by small levels); ``x0_hat`` is the head's output, plus
        the reference latent with ``"clean_from_reference"``."""
        c = self.config
        if c.video_prediction == "velocity":
            return out_BTCHW
        x0_hat = out_BTCHW.float()
        if c.video_prediction == "clean_from_reference":
            if ref_latent_BCHW is None:
                raise ValueError(
                    "DualForceConfig.video_prediction='clean_from_reference': the streaming "
                    "pass needs ref_latent_BCHW"
                )
            x0_hat = x0_hat + ref_latent_BCHW.float()[:, None]
        sigma = sigma_v_BT.float().clamp_min(c.clean_sigma_min)[..., None, None, None]
        return (z_BTCHW.float() - x0_hat) / sigma

    def _unpatchify(self, v_BTNP: torch.Tensor) -> torch.Tensor:
        c = self.config
        return unpatchify(v_BTNP, c.latent_channels, c.patch_size, c.latent_height, c.latent_width)

    # Entry points ----------------------------------------------------------------------------

    def forward(
        self,
        z_BTCHW: torch.Tensor,
        s_BTDs: torch.Tensor | None,
        sigma_v_BT: torch.Tensor,
        sigma_s_BT: torch.Tensor | None,
        audio_BTLDa: torch.Tensor,
        ref_latent_BCHW: torch.Tensor,
        ref_feats_BRD: torch.Tensor | None = None,
        drop_audio_B: torch.Tensor | None = None,
        drop_ref_B: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Training forward over a whole clip.

        Args:
            z_BTCHW: noisy video latents.
            s_BTDs: noisy structure (None when the struct stream is off).
            sigma_v_BT, sigma_s_BT: per-frame noise levels.
            audio_BTLDa: audio windows per frame ``[B, T, La, Da]`` (``[B, T, La, layers, Da]``
                with several encoder layers); see :func:`df_models.layers.gather_audio_windows`.
            ref_latent_BCHW: the reference image's codec latent (the clean sink frame).
            ref_feats_BRD: optional global reference features ``[B, R, ref_feature_dim]``.
            drop_audio_B: optional bool ``[B]``: use the null audio tokens (CFG dropout).
            drop_ref_B: optional bool ``[B]``: use the null reference token (CFG dropout).

        Returns:
            ``(v_video_BTCHW, v_struct_BTDs)``; the second is None without the struct stream.
        """
        check_frames(self.config, z_BTCHW, s_BTDs, sigma_v_BT, sigma_s_BT, audio_BTLDa)
        c = self.config
        B, T = sigma_v_BT.shape
        dev = z_BTCHW.device
        if ref_latent_BCHW.shape[0] != B:
            raise ValueError(
                f"ref_latent_BCHW has batch {ref_latent_BCHW.shape[0]}, the clip has {B}"
            )
        # Step 1: the sink frame in front of frame 0, in both streams.
        sink, frames = (
            self._embed_sink(ref_latent_BCHW),
            self._embed_frames(z_BTCHW, s_BTDs, sigma_v_BT, sigma_s_BT, ref_latent_BCHW),
        )
        tokens = StreamTokens(
            *(
                None if a is None else torch.cat([a, b], 1)
                for a, b in zip(sink, frames, strict=True)
            )
        )
        audio_BFAD = torch.cat(
            [self._null_audio(B, 1), self._audio_tokens(audio_BTLDa, drop_audio_B)], 1
        )
        # Step 2: the whole clip attends block-causally to itself.
        sites = self._self_sites(T, dev, cache=None, sink_pass=False, window=c.window)
        v_out, s_out = self._run(
            tokens,
            audio_BFAD=audio_BFAD,
            ref_BRD=self._ref_tokens(ref_feats_BRD, B, drop_ref_B),
            sites=sites,
        )
        # Step 3: drop the sink frame's outputs.
        v_video = self._velocity(
            self._unpatchify(v_out[:, 1:]), z_BTCHW, sigma_v_BT, ref_latent_BCHW
        )
        return v_video, (s_out[:, 1:] if s_out is not None else None)

    def new_cache(
        self,
        batch: int,
        *,
        window: int | None = None,
        max_chunk: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """A KV cache for this model: sink + a window of ``window`` frames, for chunks of up to
        ``max_chunk`` frames.

        A model with a sliding window streams with that window (the default; another is an
        error: streaming would no longer equal the training forward). A model with
        ``config.window=None`` attends to every past frame, so ``window`` must be given and
        is the cache's capacity: :meth:`forward_stream` refuses a pass that would evict a
        frame rather than differ from the training forward.
        """
        c = self.config
        if window is None:
            window = c.window
        if window is None:
            raise ValueError(
                "window must be given when the model has no sliding window (DualForceConfig."
                "window=None): the cache's capacity in frames, at least the stream's length"
            )
        if c.window is not None and window != c.window:
            raise ValueError(
                f"window={window} differs from the model's DualForceConfig.window={c.window}: "
                "streaming would no longer match the training forward"
            )
        if dtype is None:
            dtype = next(self.parameters()).dtype
        return KVCache(
            cache_streams(c),
            batch=batch,
            window=window,
            max_chunk=max_chunk,
            device=device,
            dtype=dtype,
        )

    def _self_sites(self, frames: int, device, *, cache, sink_pass: bool, window):
        """Attention sites of a pass whose queries are its own keys: the sink frame then
        ``frames`` frames of each stream (the training forward, and the sink's prefill)."""
        c = self.config
        vf = token_frames(frames, c.video_tokens, sink_tokens=c.video_tokens, device=device)
        sf = token_frames(frames, c.struct_tokens, sink_tokens=c.struct_tokens, device=device)
        return build_sites(
            c,
            backend=self.attn_backend,
            video_q_L=vf,
            video_kv_S=vf,
            struct_q_L=sf,
            struct_kv_S=sf,
            cache=cache,
            sink_pass=sink_pass,
            window=window,
        )

    def prefill(
        self,
        cache: KVCache,
        ref_latent_BCHW: torch.Tensor,
        ref_feats_BRD: torch.Tensor | None = None,
        drop_ref_B: torch.Tensor | None = None,
    ) -> None:
        """Resets the cache and writes the reference sink frame's keys/values into it."""
        cache.reset()
        B = ref_latent_BCHW.shape[0]
        dev = ref_latent_BCHW.device
        sites = self._self_sites(0, dev, cache=cache, sink_pass=True, window=cache.window)
        self._run(
            self._embed_sink(ref_latent_BCHW),
            audio_BFAD=self._null_audio(B, 1),
            ref_BRD=self._ref_tokens(ref_feats_BRD, B, drop_ref_B),
            sites=sites,
        )

    def forward_stream(
        self,
        cache: KVCache,
        z_BTCHW: torch.Tensor,
        s_BTDs: torch.Tensor | None,
        sigma_v_BT: torch.Tensor,
        sigma_s_BT: torch.Tensor | None,
        audio_BTLDa: torch.Tensor,
        *,
        commit: bool | int,
        ref_latent_BCHW: torch.Tensor | None = None,
        ref_feats_BRD: torch.Tensor | None = None,
        drop_audio_B: torch.Tensor | None = None,
        drop_ref_B: torch.Tensor | None = None,
        modulations: Modulations | None = None,
        outputs: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Streaming forward of one chunk of ``T`` frames against the cache.

        ``commit=True`` is the clean pass: the chunk's keys/values stay in the cache. With
        ``commit=False`` (denoising steps) the cache is read only: the next pass overwrites
        what this one wrote. An int commits that many leading frames (staggered sampling,
        where only the oldest frames of the chunk have just become clean). Inputs and outputs
        are as in :meth:`forward`, for the chunk; ``ref_latent_BCHW`` (the sink's latent) is
        needed only with ``DualForceConfig.ref_concat``.

        The pass itself is :meth:`forward_chunk`; when the cache says every slot is visible
        to the chunk (:meth:`~df_core.KVCache.all_visible`: one frame, window full) it runs
        with no attention masks.

        ``modulations``: :meth:`modulations` of ``sigma_v_BT`` / ``sigma_s_BT``, computed once
        for the stream (the noise embeddings and every block's modulation layer are then
        skipped; the same ops on the same values, so bit-identical eagerly; a compiled pass
        may round its own fused modulations differently in bf16). ``outputs=False`` (a
        committing pass whose outputs are discarded, the exact clean pass): the last block of
        each stream writes only its keys/values and no head runs; returns None, and the cache
        holds what a full pass writes.
        """
        check_frames(self.config, z_BTCHW, s_BTDs, sigma_v_BT, sigma_s_BT, audio_BTLDa)
        B, T = sigma_v_BT.shape
        if cache.batch != B:
            raise ValueError(
                f"the chunk has batch {B} but the cache was made for batch {cache.batch}"
            )
        if isinstance(commit, bool):
            n_commit = T if commit else 0
        elif isinstance(commit, int) and 0 <= commit <= T:
            n_commit = commit
        else:
            raise ValueError(f"commit must be a bool or an int in [0, {T}], got {commit!r}")
        if not outputs and not n_commit:
            raise ValueError(
                "outputs=False is for a committing pass (its keys/values are all it leaves): "
                "with commit=False nothing of it would remain"
            )
        check_stream_fits(self.config, cache, T)
        out = self.forward_chunk(
            cache,
            z_BTCHW,
            s_BTDs,
            sigma_v_BT,
            sigma_s_BT,
            audio_BTLDa,
            all_visible=cache.all_visible(T),
            ref_latent_BCHW=ref_latent_BCHW,
            ref_feats_BRD=ref_feats_BRD,
            drop_audio_B=drop_audio_B,
            drop_ref_B=drop_ref_B,
            modulations=modulations,
            outputs=outputs,
        )
        if n_commit:
            cache.commit(n_commit)
        return out

    def forward_chunk(
        self,
        cache: KVCache,
        z_BTCHW: torch.Tensor,
        s_BTDs: torch.Tensor | None,
        sigma_v_BT: torch.Tensor,
        sigma_s_BT: torch.Tensor | None,
        audio_BTLDa: torch.Tensor,
        *,
        all_visible: bool = False,
        ref_latent_BCHW: torch.Tensor | None = None,
        ref_feats_BRD: torch.Tensor | None = None,
        drop_audio_B: torch.Tensor | None = None,
        drop_ref_B: torch.Tensor | None = None,
        modulations: Modulations | None = None,
        outputs: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The pass of :meth:`forward_stream` without its checks and commit: claims the
        chunk's ring slots, writes its keys/values and attends over the cache view. This is
        the function to compile (one graph per chunk length and ``all_visible``); the cache is
        written in place. ``all_visible`` must come from ``cache.all_visible(T)``: it drops
        the masks."""
        c = self.config
        B, T = sigma_v_BT.shape
        tokens = self._embed_frames(
            z_BTCHW, s_BTDs, sigma_v_BT, sigma_s_BT, ref_latent_BCHW, cond=modulations is None
        )
        audio_BFAD = self._audio_tokens(audio_BTLDa, drop_audio_B)
        q_frames_T = cache.begin_chunk(T)
        struct_q_L = repeat(q_frames_T, "t -> (t n)", n=c.struct_tokens)
        sites = build_sites(
            c,
            backend=self.attn_backend,
            video_q_L=repeat(q_frames_T, "t -> (t n)", n=c.video_tokens),
            video_kv_S=cache.kv_frames["video"],
            struct_q_L=struct_q_L,
            struct_kv_S=cache.kv_frames["struct"] if c.struct_enabled else struct_q_L,
            cache=cache,
            sink_pass=False,
            window=cache.window,
            all_visible=all_visible,
        )
        v_out, s_out = self._run(
            tokens,
            audio_BFAD=audio_BFAD,
            ref_BRD=self._ref_tokens(ref_feats_BRD, B, drop_ref_B),
            sites=sites,
            mods=modulations,
            outputs=outputs,
        )
        if not outputs:
            return None
        v_video = self._velocity(self._unpatchify(v_out), z_BTCHW, sigma_v_BT, ref_latent_BCHW)
        return v_video, s_out
