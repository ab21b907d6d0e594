"""Attention masks over DualForce's frame-structured token layouts.

Every token carries the id of the frame it belongs to: ``0, 1, 2, ...`` for generated frames,
:data:`SINK_FRAME` for the reference frame (the clean attention sink in front of frame 0), and
:data:`EMPTY_FRAME` for KV-cache slots not yet written. A mask is a rule over the frame ids of a
query token and a key token, so the same rule serves the
training forward (the whole clip) and the streaming forward (a chunk of queries against the KV
cache): only the id vectors differ. This is what makes the two forwards agree.

Rules:

- ``causal`` (block-causal, optional sliding window of ``W`` frames): a query of frame ``t``
  sees the sink and every key of frames ``t - W + 1 .. t`` (all of its own frame, nothing
  later). The sink sees only itself.
- ``same_frame``: a query of frame ``t`` sees keys of frame ``t`` only (the bridge in its
  default form; audio cross-attention, where each frame's audio tokens are its own window).

Each factory returns a :class:`FrameMask`, which gives the FlexAttention ``BlockMask``
(:meth:`FrameMask.block_mask`), the equivalent dense boolean mask (:meth:`FrameMask.dense`,
the reference and the CPU fallback), and the ``mask_mod`` both are built from.

Frame-aligned layouts: when every frame (the sink included) spans a whole number of attention
blocks (``granule``, e.g. 1,024 video tokens per frame and 128-token blocks), every block of
the mask is either fully visible or fully hidden. :meth:`FrameMask.block_mask` then builds the
``BlockMask`` from the per-block frame ids alone (a ``[Q/128, KV/128]`` table instead of
evaluating ``mask_mod`` on all ``Q x KV`` pairs) and marks every visible block "full", so the
kernel never evaluates ``mask_mod`` either. It is a handful of small tensor ops with no host
sync: cheap enough to build once per streaming pass, and traceable by ``torch.compile``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import repeat
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

from df_core.checks import non_negative_int, one_of, positive_int

SINK_FRAME = -1
EMPTY_FRAME = -(2**30)
NO_WINDOW = 2**30
RULES = ("causal", "same_frame")


def token_frames(
    num_frames: int,
    tokens_per_frame: int,
    *,
    sink_tokens: int = 0,
    first_frame: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Frame id of every token of one stream: ``sink_tokens`` sink ids, then ``num_frames``
    frames of ``tokens_per_frame`` tokens each, frame-major.

    Returns:
        int64 ``[sink_tokens + num_frames * tokens_per_frame]``.
    """
    non_negative_int("num_frames", num_frames)
    positive_int("tokens_per_frame", tokens_per_frame)
    non_negative_int("sink_tokens", sink_tokens)
    non_negative_int("first_frame", first_frame)
    sink = torch.full((sink_tokens,), SINK_FRAME, dtype=torch.long, device=device)
    frames = torch.arange(first_frame, first_frame + num_frames, device=device)
    return torch.cat([sink, repeat(frames, "t -> (t n)", n=tokens_per_frame)])


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class FrameMask:
    """A mask given by per-token frame ids.

    Attributes:
        name: what the mask is for (shown in errors and benchmarks).
        q_frames: int64 ``[Q]`` frame id of each query token.
        kv_frames: int64 ``[KV]`` frame id of each key token.
        rule: ``causal`` or ``same_frame``.
        window: frames a query may look back, its own included (``NO_WINDOW`` for all).
        granule: 0, or a token count such that frame ids are constant over every consecutive
            run of ``granule`` tokens from token 0, in both ``q_frames`` and ``kv_frames`` (a
            promise by the caller, which knows its layout; it enables the block-table fast
            path of :meth:`block_mask`).
    """

    name: str
    q_frames: torch.Tensor
    kv_frames: torch.Tensor
    rule: str = "causal"
    window: int = NO_WINDOW
    granule: int = 0

    def __post_init__(self) -> None:
        one_of("FrameMask.rule", self.rule, RULES)
        positive_int("FrameMask.window", self.window)
        non_negative_int("FrameMask.granule", self.granule)

    @property
    def shape(self) -> tuple[int, int]:
        return self.q_frames.numel(), self.kv_frames.numel()

    def _visible(self, qf: torch.Tensor, kf: torch.Tensor) -> torch.Tensor:
        if self.rule == "causal":
            past = (kf >= 0) & (kf <= qf) & (qf - kf < self.window)
            return (kf == SINK_FRAME) | past
        return (kf == qf) & (kf != EMPTY_FRAME)

    @property
    def mask_mod(self):
        """FlexAttention ``mask_mod(b, h, q_idx, kv_idx)``: True where query ``q_idx`` may attend
        to key ``kv_idx`` (a plain function, as ``create_block_mask`` requires)."""
        visible, q_frames, kv_frames = self._visible, self.q_frames, self.kv_frames

        def mask_mod(b, h, q_idx, kv_idx):
            return visible(q_frames[q_idx], kv_frames[kv_idx])

        mask_mod.__name__ = f"mask_mod_{self.name}"
        return mask_mod

    def dense(self) -> torch.Tensor:
        """The same mask as a dense bool ``[Q, KV]`` tensor (True = may attend)."""
        return self._visible(self.q_frames[:, None], self.kv_frames[None, :])

    def block_aligned(self, block_size: int) -> bool:
        """Whether every ``block_size x block_size`` tile lies inside one frame pair (see
        ``granule``), so the block table alone describes the mask."""
        q_len, kv_len = self.shape
        return (
            self.granule > 0
            and self.granule % block_size == 0
            and q_len % block_size == 0
            and kv_len % block_size == 0
        )

    def block_mask(self, *, block_size: int = 128, compile: bool = False) -> BlockMask:
        """The FlexAttention ``BlockMask`` (block-sparse form; fully masked blocks are skipped).

        Frame-aligned masks (:meth:`block_aligned`) are built from the per-block frame ids,
        every visible block full; others by ``create_block_mask`` over ``mask_mod``."""
        q_len, kv_len = self.shape
        if self.block_aligned(block_size):
            return self._block_table_mask(block_size)
        return create_block_mask(
            self.mask_mod,
            None,
            None,
            q_len,
            kv_len,
            device=self.q_frames.device,
            BLOCK_SIZE=block_size,
            _compile=compile,
        )

    def _table_mask_mod(self):
        """The element mask to carry in a block-table BlockMask.

        On CUDA, FlexAttention always runs compiled kernels (df-core's eager path compiles it;
        a compiled model's inductor generates it), and those skip hidden blocks and never
        evaluate ``mask_mod`` on full ones; with no partial blocks the element mask is unused,
        so the trivial one is given. This matters: inductor fails to compile a ``mask_mod``
        that indexes frame-id tensors built inside a compiled graph (a Triton ``NameError:
        XBLOCK`` on one-frame passes, torch 2.11). Elsewhere (the unfused CPU reference, which
        applies ``mask_mod`` to every pair and ignores the block table) the real one is kept.
        """
        return None if self.q_frames.is_cuda else self.mask_mod

    def _block_table_mask(self, block_size: int) -> BlockMask:
        q_len, kv_len = self.shape
        first = slice(None, None, block_size)  # the first token of each block speaks for it
        keep = self._visible(self.q_frames[first, None], self.kv_frames[None, first])
        full_num = keep.sum(-1, dtype=torch.int32)  # [Qb]
        # Visible blocks first, in kv order (a stable sort of "hidden" flags).
        full_idx = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        none = torch.zeros_like(full_num)
        return BlockMask.from_kv_blocks(
            none[None, None],
            full_idx[None, None],
            full_num[None, None],
            full_idx[None, None],
            BLOCK_SIZE=block_size,
            mask_mod=self._table_mask_mod(),
            seq_lengths=(q_len, kv_len),
        )


def _check_ids(name: str, ids: torch.Tensor) -> torch.Tensor:
    if ids.dim() != 1 or ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be a 1-D integer tensor, got {ids.dtype} {tuple(ids.shape)}")
    return ids.long()


def _window(window: int | None) -> int:
    return NO_WINDOW if window is None else positive_int("window (or None)", window)


def block_causal_mask(
    q_frames: torch.Tensor,
    kv_frames: torch.Tensor | None = None,
    *,
    window: int | None = None,
    name: str = "block_causal",
    granule: int = 0,
) -> FrameMask:
    """Block-causal attention with the sink and an optional sliding window of ``window`` frames.

    Self-attention within one stream (pass the same ids twice, or ``kv_frames=None``), a chunk
    of queries against the KV cache's view, or the causal form of the bridge (queries of one
    stream, keys of the other). ``granule``: see :class:`FrameMask` (0 when unknown).
    """
    q = _check_ids("q_frames", q_frames)
    kv = q if kv_frames is None else _check_ids("kv_frames", kv_frames)
    non_negative_int("granule", granule)
    return FrameMask(
        name=name, q_frames=q, kv_frames=kv, rule="causal", window=_window(window), granule=granule
    )


def same_frame_mask(
    q_frames: torch.Tensor, kv_frames: torch.Tensor, *, name: str = "same_frame"
) -> FrameMask:
    """Queries of frame ``t`` attend only to keys of frame ``t`` (bridge, audio cross-attention)."""
    return FrameMask(
        name=name,
        q_frames=_check_ids("q_frames", q_frames),
        kv_frames=_check_ids("kv_frames", kv_frames),
        rule="same_frame",
    )


def bridge_mask(
    q_frames: torch.Tensor,
    kv_frames: torch.Tensor,
    *,
    temporal: str = "same_frame",
    window: int | None = None,
) -> FrameMask:
    """The bridge between the video and structure streams: ``same_frame`` or ``causal`` (over
    the past frames within the window, as the self-attention)."""
    one_of("temporal", temporal, RULES)
    if temporal == "same_frame":
        return same_frame_mask(q_frames, kv_frames, name="bridge_same_frame")
    return block_causal_mask(q_frames, kv_frames, window=window, name="bridge_causal")
