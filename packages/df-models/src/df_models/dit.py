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

Both build :class:`~df_models.attention.AttnSite` objects and call the same blocks; only the
token frame ids and key sources differ, so the streaming outputs of a chunk equal
the training outputs for those frames.

Legend: B batch, T latent frames, F = frames in this pass (1 + T with the sink), C latent
channels, H W latent size, N_v / N_s tokens per frame, D width, Ds structure dim, La audio
window, Da audio feature dim, R reference tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
from einops import repeat
from torch import nn

from df_core import (
    KVCache,
    StreamSpec,
    block_causal_mask,
    bridge_mask,
    frame_positions,
    is_sink,
    rope_cos_sin,
    split_head_dim,
    token_frames,
)
from df_models.attention import AttnSite
from df_models.blocks import DualBlock, Sites
from df_models.config import DualForceConfig
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

KIND = "DualForceDiT"


class DualForceDiT(nn.Module):
    def __init__(self, config: DualForceConfig) -> None:
        super().__init__()
        self.config = c = config
        self.attn_backend = "auto"  # df-core backend; "flex" on GPU, "dense" on CPU
        p = c.patch_size
        self.patch_embed = PatchEmbed(c.latent_channels, p, c.video_dim)
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

    # Helpers ---------------------------------------------------------------------------------

    def _struct_layers(self) -> int:
        return min(self.config.struct_depth, self.config.video_depth)

    # RoPE positions are absolute frame ids (0 for the time-less sink), in training and in
    # streaming alike: keys are rotated once, when a pass writes them into the KV cache, and
    # logits depend only on frame differences (df_core.rope).

    def _rope_video(self, frames_L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        h, w = c.grid
        j = torch.arange(frames_L.numel(), device=frames_L.device) % (h * w)
        axes = [frame_positions(frames_L), j // w, j % w]
        dims = split_head_dim(c.video_dim // c.video_heads, 3)
        return rope_cos_sin(axes, dims, timeless=is_sink(frames_L), theta=c.rope_theta)

    def _rope_struct(self, frames_L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        j = torch.arange(frames_L.numel(), device=frames_L.device) % c.struct_tokens
        axes = [frame_positions(frames_L), j]
        dims = split_head_dim(c.struct_dim // c.struct_heads, 2)
        return rope_cos_sin(axes, dims, timeless=is_sink(frames_L), theta=c.rope_theta)

    def _site(self, mask, **kw) -> AttnSite:
        return AttnSite(mask=mask, backend=self.attn_backend, **kw)

    def _sites(
        self,
        vq,
        vkv,
        sq,
        skv,
        cache: KVCache | None,
        sink_pass: bool,
        window: int | None,
        all_visible: bool = False,
    ) -> Sites:
        """Sites for query token frames ``vq``/``sq`` and key token frames ``vkv``/``skv``.
        With ``all_visible`` (or for the sink pass) every query sees every key: no masks."""
        c = self.config
        cached = dict(cache=cache, sink_pass=sink_pass)
        unmasked = sink_pass or all_visible
        # Video frames (and the sink, which has as many tokens) span whole attention blocks
        # at the usual sizes: the mask's block table is then exact (df_core.masks).
        video_self = self._site(
            None if unmasked else block_causal_mask(vq, vkv, window=window, granule=c.video_tokens),
            rope=self._rope_video(vq),
            cache_stream="video",
            **cached,
        )
        struct_self = to_video = to_struct = None
        if c.struct_enabled:
            struct_self = self._site(
                None if unmasked else block_causal_mask(sq, skv, window=window),
                rope=self._rope_struct(sq),
                cache_stream="struct",
                **cached,
            )
            same = c.bridge_temporal == "same_frame"
            if c.bridge_to_video:
                to_video = (
                    self._site(None, per_frame=True, kv_tokens=c.struct_tokens)
                    if same
                    else self._site(
                        None
                        if unmasked
                        else bridge_mask(vq, skv, temporal="causal", window=window),
                        cache_stream="bridge_to_video",
                        **cached,
                    )
                )
            if c.bridge_to_struct:
                to_struct = (
                    self._site(None, per_frame=True, kv_tokens=c.video_tokens)
                    if same
                    else self._site(
                        None
                        if unmasked
                        else bridge_mask(sq, vkv, temporal="causal", window=window),
                        cache_stream="bridge_to_struct",
                        **cached,
                    )
                )
        audio = self._site(None, per_frame=True, kv_tokens=c.audio_window)
        ref = self._site(None)
        return Sites(video_self, struct_self, to_video, to_struct, audio, ref)

    def _audio_tokens(self, audio, frames: int, batch: int, drop_audio_B, sink: bool):
        c = self.config
        null = repeat(self.audio_proj.null, "a d -> b f a d", b=batch, f=frames)
        if sink:
            return null
        if tuple(audio.shape[:3]) != (batch, frames, c.audio_window):
            raise ValueError(
                f"audio_BTLDa must hold {frames} windows of {c.audio_window} feature frames "
                f"[B={batch}, T={frames}, La={c.audio_window}, ...], got {tuple(audio.shape)}"
            )
        if audio.shape[-1] != c.audio_dim:
            raise ValueError(
                f"audio_BTLDa features must have Da={c.audio_dim}, got {audio.shape[-1]}"
            )
        tokens = self.audio_proj(audio)
        if drop_audio_B is not None:
            _check_drop("drop_audio_B", drop_audio_B, batch)
            tokens = torch.where(drop_audio_B[:, None, None, None], null, tokens)
        return tokens

    def _run(self, xv, xs, cv, cs, audio_tok, ref_tok, sites: Sites):
        c = self.config
        n_struct = self._struct_layers()
        out_s = None
        for i, block in enumerate(self.blocks):
            xv, xs = block(xv, xs, cv, cs, audio_tok, ref_tok, sites)
            if c.struct_enabled and i == n_struct - 1:
                out_s = self.struct_head(self.struct_final(xs, cs))
        v_out = self.video_head(xv, cv)
        return v_out, out_s

    def _check(self, z_BTCHW, s_BTDs, sigma_v_BT, sigma_s_BT) -> None:
        c = self.config
        if sigma_v_BT.dim() != 2:
            raise ValueError(f"sigma_v_BT must be [B, T], got {tuple(sigma_v_BT.shape)}")
        B, T = sigma_v_BT.shape
        expected = (B, T, c.latent_channels, c.latent_height, c.latent_width)
        if tuple(z_BTCHW.shape) != expected:
            raise ValueError(f"z_BTCHW must have shape {expected}, got {tuple(z_BTCHW.shape)}")
        if c.struct_enabled:
            if s_BTDs is None or tuple(s_BTDs.shape) != (B, T, c.struct_raw_dim):
                got = None if s_BTDs is None else tuple(s_BTDs.shape)
                raise ValueError(f"s_BTDs must have shape {(B, T, c.struct_raw_dim)}, got {got}")
            if sigma_s_BT is None or sigma_s_BT.shape != (B, T):
                got = None if sigma_s_BT is None else tuple(sigma_s_BT.shape)
                raise ValueError(f"sigma_s_BT must have shape {(B, T)}, got {got}")

    def _embed_frames(self, z_BTCHW, s_BTDs, sigma_v_BT, sigma_s_BT):
        xv = self.patch_embed(z_BTCHW)
        cv = self.video_noise(sigma_v_BT)
        xs = cs = None
        if self.config.struct_enabled:
            xs = self.struct_tokenizer(s_BTDs)
            cs = self.struct_noise(sigma_s_BT)
        return xv, xs, cv, cs

    def _embed_sink(self, ref_latent_BCHW: torch.Tensor):
        c = self.config
        B = ref_latent_BCHW.shape[0]
        expected = (c.latent_channels, c.latent_height, c.latent_width)
        if ref_latent_BCHW.dim() != 4 or tuple(ref_latent_BCHW.shape[1:]) != expected:
            raise ValueError(
                f"ref_latent_BCHW must have shape [B, {expected}], got {tuple(ref_latent_BCHW.shape)}"
            )
        zero = torch.zeros(B, 1, device=ref_latent_BCHW.device)
        xv = self.patch_embed(ref_latent_BCHW[:, None])
        cv = self.video_noise(zero)
        xs = cs = None
        if c.struct_enabled:
            xs = repeat(self.struct_sink, "n d -> b 1 n d", b=B)
            cs = self.struct_noise(zero)
        return xv, xs, cv, cs

    def _ref_tokens(self, ref_feats_BRD, batch: int, drop_ref_B=None):
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
            _check_drop("drop_ref_B", drop_ref_B, batch)
            tokens = torch.where(drop_ref_B[:, None, None], self.ref_null.expand_as(tokens), tokens)
        return tokens

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
        self._check(z_BTCHW, s_BTDs, sigma_v_BT, sigma_s_BT)
        c = self.config
        B, T = sigma_v_BT.shape
        dev = z_BTCHW.device
        if ref_latent_BCHW.shape[0] != B:
            raise ValueError(
                f"ref_latent_BCHW has batch {ref_latent_BCHW.shape[0]}, the clip has {B}"
            )
        sv, ss, scv, scs = self._embed_sink(ref_latent_BCHW)
        xv, xs, cv, cs = self._embed_frames(z_BTCHW, s_BTDs, sigma_v_BT, sigma_s_BT)
        xv, cv = torch.cat([sv, xv], 1), torch.cat([scv, cv], 1)
        if c.struct_enabled:
            xs, cs = torch.cat([ss, xs], 1), torch.cat([scs, cs], 1)
        audio = torch.cat(
            [
                self._audio_tokens(None, 1, B, None, sink=True),
                self._audio_tokens(audio_BTLDa, T, B, drop_audio_B, sink=False),
            ],
            1,
        )
        vf = token_frames(T, c.video_tokens, sink_tokens=c.video_tokens, device=dev)
        sf = token_frames(T, c.struct_tokens, sink_tokens=c.struct_tokens, device=dev)
        sites = self._sites(vf, vf, sf, sf, None, sink_pass=False, window=c.window)
        v_out, s_out = self._run(
            xv, xs, cv, cs, audio, self._ref_tokens(ref_feats_BRD, B, drop_ref_B), sites
        )
        v = unpatchify(
            v_out[:, 1:], c.latent_channels, c.patch_size, c.latent_height, c.latent_width
        )
        return v, (s_out[:, 1:] if s_out is not None else None)

    def new_cache(
        self,
        batch: int,
        *,
        window: int | None = None,
        max_chunk: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """A KV cache for this model: sink + a window of ``window`` frames (the config's by
        default), for chunks of up to ``max_chunk`` frames."""
        c = self.config
        if window is None:
            window = c.window
        if window is None:
            raise ValueError(
                "window must be given when the config has no sliding window (config.window is None)"
            )
        if c.window is not None and window != c.window:
            raise ValueError(
                f"window={window} differs from the trained config.window={c.window}: streaming would "
                "no longer match the training forward"
            )
        if dtype is None:
            dtype = next(self.parameters()).dtype
        specs = {
            "video": StreamSpec(
                c.video_depth,
                c.video_heads,
                c.video_dim // c.video_heads,
                c.video_tokens,
                c.video_tokens,
            )
        }
        if c.struct_enabled:
            sh = c.struct_dim // c.struct_heads
            specs["struct"] = StreamSpec(
                self._struct_layers(), c.struct_heads, sh, c.struct_tokens, c.struct_tokens
            )
            if c.bridge_temporal == "causal" and c.n_fusion > 0:
                vh = c.video_dim // c.video_heads
                if c.bridge_to_video:
                    specs["bridge_to_video"] = StreamSpec(
                        c.n_fusion, c.video_heads, vh, c.struct_tokens, c.struct_tokens
                    )
                if c.bridge_to_struct:
                    specs["bridge_to_struct"] = StreamSpec(
                        c.n_fusion, c.struct_heads, sh, c.video_tokens, c.video_tokens
                    )
        return KVCache(
            specs, batch=batch, window=window, max_chunk=max_chunk, device=device, dtype=dtype
        )

    def prefill(
        self,
        cache: KVCache,
        ref_latent_BCHW: torch.Tensor,
        ref_feats_BRD: torch.Tensor | None = None,
        drop_ref_B: torch.Tensor | None = None,
    ) -> None:
        """Resets the cache and writes the reference sink frame's keys/values into it."""
        c = self.config
        cache.reset()
        B = ref_latent_BCHW.shape[0]
        dev = ref_latent_BCHW.device
        xv, xs, cv, cs = self._embed_sink(ref_latent_BCHW)
        audio = self._audio_tokens(None, 1, B, None, sink=True)
        vf = token_frames(0, c.video_tokens, sink_tokens=c.video_tokens, device=dev)
        sf = token_frames(0, c.struct_tokens, sink_tokens=c.struct_tokens, device=dev)
        sites = self._sites(vf, vf, sf, sf, cache, sink_pass=True, window=cache.window)
        self._run(xv, xs, cv, cs, audio, self._ref_tokens(ref_feats_BRD, B, drop_ref_B), sites)

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
        ref_feats_BRD: torch.Tensor | None = None,
        drop_audio_B: torch.Tensor | None = None,
        drop_ref_B: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Streaming forward of one chunk of ``T`` frames against the cache.

        ``commit=True`` is the clean pass: the chunk's keys/values stay in the cache. With
        ``commit=False`` (denoising steps) the cache is read only: the next pass overwrites
        what this one wrote. An int commits that many leading frames (staggered sampling,
        where only the oldest frames of the chunk have just become clean). Inputs and outputs
        are as in :meth:`forward`, for the chunk.

        The pass itself is :meth:`forward_chunk`; when the cache says every slot is visible
        to the chunk (:meth:`~df_core.KVCache.all_visible`: one frame, window full) it runs
        with no attention masks.
        """
        self._check(z_BTCHW, s_BTDs, sigma_v_BT, sigma_s_BT)
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
        out = self.forward_chunk(
            cache,
            z_BTCHW,
            s_BTDs,
            sigma_v_BT,
            sigma_s_BT,
            audio_BTLDa,
            all_visible=cache.all_visible(T),
            ref_feats_BRD=ref_feats_BRD,
            drop_audio_B=drop_audio_B,
            drop_ref_B=drop_ref_B,
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
        ref_feats_BRD: torch.Tensor | None = None,
        drop_audio_B: torch.Tensor | None = None,
        drop_ref_B: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The pass of :meth:`forward_stream` without its checks and commit: claims the
        chunk's ring slots, writes its keys/values and attends over the cache view. This is
        the function to compile (one graph per chunk length and ``all_visible``); the cache is
        written in place. ``all_visible`` must come from ``cache.all_visible(T)``: it drops
        the masks."""
        c = self.config
        B, T = sigma_v_BT.shape
        xv, xs, cv, cs = self._embed_frames(z_BTCHW, s_BTDs, sigma_v_BT, sigma_s_BT)
        audio = self._audio_tokens(audio_BTLDa, T, B, drop_audio_B, sink=False)
        q_frames = cache.begin_chunk(T)
        vq = repeat(q_frames, "t -> (t n)", n=c.video_tokens)
        sq = repeat(q_frames, "t -> (t n)", n=c.struct_tokens)
        vkv = cache.kv_frames["video"]
        skv = cache.kv_frames["struct"] if c.struct_enabled else sq
        sites = self._sites(
            vq,
            vkv,
            sq,
            skv,
            cache,
            sink_pass=False,
            window=cache.window,
            all_visible=all_visible,
        )
        v_out, s_out = self._run(
            xv, xs, cv, cs, audio, self._ref_tokens(ref_feats_BRD, B, drop_ref_B), sites
        )
        v = unpatchify(v_out, c.latent_channels, c.patch_size, c.latent_height, c.latent_width)
        return v, s_out


def _check_drop(name: str, drop_B: torch.Tensor, batch: int) -> None:
    if drop_B.dtype != torch.bool or tuple(drop_B.shape) != (batch,):
        raise ValueError(
            f"{name} must be a bool tensor of shape [{batch}], got {drop_B.dtype} {tuple(drop_B.shape)}"
        )
