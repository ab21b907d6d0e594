"""One attention function over the backends DualForce uses.

Backends (``backend=``):

- ``sdpa``: ``F.scaled_dot_product_attention``. With no mask this is a fused kernel on the GPU;
  without autograd (inference) cuDNN attention goes first (PyTorch's default order puts it
  last): on the H100 it runs one frame of queries against the sink and a window of 8 frames
  at ~510 TFLOP/s, against ~280 for flash and ~360 for FlexAttention without a mask
  (``dualforce bench attention --stream``, BENCHMARKS.md). With a mask it receives the
  dense boolean form.
- ``flex``: FlexAttention with the mask's ``BlockMask`` (block-sparse, skips masked blocks);
  compiled on the GPU.
- ``dense``: SDPA with the dense boolean mask, the CPU fallback.
- ``math``: an explicit ``softmax(q k^T * scale) v`` in float32, the reference in tests.
- ``xformers``: ``memory_efficient_attention`` when xformers imports and works (optional).
- ``auto``: ``sdpa`` without a mask; with a mask, ``flex`` on CUDA and ``dense`` elsewhere
  (and for short key sequences, under ``FLEX_MIN_KEYS``, where a block-sparse kernel has
  nothing to skip and a tiny dense mask costs nothing).

All take ``q_BHLD`` ``[B, Hd, Lq, Dh]`` and ``k_BHSD``, ``v_BHSD`` ``[B, Hd, Lkv, Dh]`` and
return ``[B, Hd, Lq, Dh]``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from df_core.checks import one_of
from df_core.masks import FrameMask

BACKENDS = ("auto", "sdpa", "flex", "dense", "math", "xformers")


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


@functools.cache
def xformers_available() -> bool:
    """Whether xformers imports and runs a tiny attention on this machine."""
    try:
        import xformers.ops as xops

        q = torch.zeros(1, 8, 1, 8, device="cuda" if torch.cuda.is_available() else "cpu")
        xops.memory_efficient_attention(q, q, q)
        return True
    except Exception:  # any failure means the optional backend is unusable here
        return False


# SDPA's order for mask-free inference on CUDA: cuDNN first, then PyTorch's default order.
# Any backend that cannot take the inputs (head dim, dtype) is skipped for the next one.
CUDNN_FIRST = [
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]

FLEX_MIN_HEAD_DIM = 16  # compiled FlexAttention kernels need head dims of at least 16
FLEX_MIN_KEYS = 256  # below this many keys, auto uses dense-mask SDPA (2 blocks of 128)


def resolve_backend(
    backend: str, mask: FrameMask | None, device: torch.device, head_dim: int | None = None
) -> str:
    """The backend ``auto`` picks for a mask on a device: SDPA without a mask; with one,
    FlexAttention on CUDA (when the head dim allows its kernels and there are enough keys for
    block sparsity to matter), dense-mask SDPA otherwise."""
    one_of("backend", backend, BACKENDS)
    if backend != "auto":
        return backend
    if mask is None:
        return "sdpa"
    flex_ok = (head_dim is None or head_dim >= FLEX_MIN_HEAD_DIM) and mask.shape[1] >= FLEX_MIN_KEYS
    return "flex" if device.type == "cuda" and flex_ok else "dense"


def attention(
    q_BHLD: torch.Tensor,
    k_BHSD: torch.Tensor,
    v_BHSD: torch.Tensor,
    mask: FrameMask | None = None,
    *,
    backend: str = "auto",
    block_mask: BlockMask | None = None,
    dense_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention with an optional frame mask.

    Args:
        mask: the :class:`~df_core.masks.FrameMask`; ``None`` attends to every key.
        block_mask: a prebuilt ``BlockMask`` for ``flex`` (build it once per layout and reuse
            it across layers); built from ``mask`` when omitted.
        dense_mask: a prebuilt ``mask.dense()`` for the dense backends, likewise.
        scale: logit scale, ``1 / sqrt(Dh)`` by default.
    """
    if q_BHLD.dim() != 4 or k_BHSD.dim() != 4 or v_BHSD.dim() != 4:
        raise ValueError(
            "q, k, v must be [B, Hd, L, Dh]; got "
            f"{tuple(q_BHLD.shape)}, {tuple(k_BHSD.shape)}, {tuple(v_BHSD.shape)}"
        )
    if mask is not None and mask.shape != (q_BHLD.shape[2], k_BHSD.shape[2]):
        raise ValueError(
            f"mask '{mask.name}' is {mask.shape} but q has {q_BHLD.shape[2]} and k "
            f"{k_BHSD.shape[2]} tokens"
        )
    scale = 1.0 / math.sqrt(q_BHLD.shape[-1]) if scale is None else scale
    chosen = resolve_backend(backend, mask, q_BHLD.device, q_BHLD.shape[-1])

    if chosen == "flex":
        if block_mask is None and mask is not None:
            block_mask = mask.block_mask()
        # Eager CUDA calls go through the compiled kernel; inside a compiled region (a model
        # under torch.compile) flex_attention is traced directly: calling the separately
        # compiled function there would break the graph at every attention.
        compiled = q_BHLD.device.type == "cuda" and not torch.compiler.is_compiling()
        fn = _compiled_flex() if compiled else flex_attention
        return fn(q_BHLD, k_BHSD, v_BHSD, block_mask=block_mask, scale=scale)
    dense = None if mask is None else (dense_mask if dense_mask is not None else mask.dense())
    if chosen in ("sdpa", "dense"):
        if dense is None and q_BHLD.is_cuda and not _needs_grad(q_BHLD, k_BHSD, v_BHSD):
            with sdpa_kernel(CUDNN_FIRST, set_priority=True):
                return F.scaled_dot_product_attention(q_BHLD, k_BHSD, v_BHSD, scale=scale)
        return F.scaled_dot_product_attention(q_BHLD, k_BHSD, v_BHSD, attn_mask=dense, scale=scale)
    if chosen == "math":
        logits = torch.einsum("bhqd,bhkd->bhqk", q_BHLD.float(), k_BHSD.float()) * scale
        if dense is not None:
            logits = logits.masked_fill(~dense, float("-inf"))
        out = torch.einsum("bhqk,bhkd->bhqd", logits.softmax(dim=-1), v_BHSD.float())
        return out.to(q_BHLD.dtype)
    return _xformers(q_BHLD, k_BHSD, v_BHSD, dense, scale)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _xformers(q, k, v, dense: torch.Tensor | None, scale: float) -> torch.Tensor:
    if not xformers_available():
        raise ValueError("backend='xformers' needs a working xformers install; use 'auto' instead")
    import xformers.ops as xops

    bias = None
    if dense is not None:
        bias = torch.zeros(dense.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~dense, float("-inf")
        )
        bias = bias.expand(q.shape[0], q.shape[1], *dense.shape)
    # xformers takes [B, L, Hd, Dh].
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, scale=scale
    )
    return out.transpose(1, 2)
