"""Attention dispatch: every backend computes the same masked attention."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from df_core import attention, block_causal_mask, resolve_backend, token_frames, xformers_available
from df_core.attention import FLEX_MIN_KEYS


@given(
    frames=st.integers(1, 4),
    tokens=st.integers(1, 3),
    window=st.one_of(st.none(), st.integers(1, 3)),
    heads=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_backends_agree_on_cpu(frames, tokens, window, heads, seed):
    g = torch.Generator().manual_seed(seed)
    ids = token_frames(frames, tokens, sink_tokens=tokens)
    mask = block_causal_mask(ids, window=window)
    q, k, v = (torch.randn(2, heads, ids.numel(), 8, generator=g) for _ in range(3))
    reference = attention(q, k, v, mask, backend="math")
    # FlexAttention runs unfused (slowly) on the CPU; it gets its own, smaller property below.
    for backend in ("auto", "dense", "sdpa"):
        torch.testing.assert_close(
            attention(q, k, v, mask, backend=backend), reference, rtol=1e-5, atol=1e-5
        )


@settings(max_examples=10)
@given(
    frames=st.integers(1, 4),
    tokens=st.integers(1, 3),
    window=st.one_of(st.none(), st.integers(1, 3)),
    seed=st.integers(0, 2**16),
)
def test_flex_agrees_on_cpu(frames, tokens, window, seed):
    g = torch.Generator().manual_seed(seed)
    ids = token_frames(frames, tokens, sink_tokens=tokens)
    mask = block_causal_mask(ids, window=window)
    q, k, v = (torch.randn(1, 2, ids.numel(), 8, generator=g) for _ in range(3))
    torch.testing.assert_close(
        attention(q, k, v, mask, backend="flex"),
        attention(q, k, v, mask, backend="math"),
        rtol=1e-5,
        atol=1e-5,
    )


def test_no_mask_is_full_attention():
    q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v
    torch.testing.assert_close(attention(q, k, v), expected)
    torch.testing.assert_close(attention(q, k, v, backend="math"), expected)


def test_auto_picks_by_device_and_mask():
    mask = block_causal_mask(token_frames(2, 2))
    assert resolve_backend("auto", None, torch.device("cpu")) == "sdpa"
    assert resolve_backend("auto", mask, torch.device("cpu")) == "dense"
    # a 4-key mask has no blocks to skip: dense SDPA even on CUDA; 256+ keys: FlexAttention
    assert resolve_backend("auto", mask, torch.device("cuda")) == "dense"
    long = block_causal_mask(token_frames(4, FLEX_MIN_KEYS // 4))
    assert resolve_backend("auto", long, torch.device("cuda")) == "flex"
    assert resolve_backend("auto", long, torch.device("cuda"), head_dim=8) == "dense"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("fast", mask, torch.device("cpu"))


def test_mask_shape_mismatch_is_an_error():
    mask = block_causal_mask(token_frames(2, 2))
    q = torch.zeros(1, 1, 3, 4)
    with pytest.raises(ValueError, match="block_causal"):
        attention(q, q, q, mask)
    with pytest.raises(ValueError, match=r"\[B, Hd, L, Dh\]"):
        attention(q[0], q[0], q[0])


@pytest.mark.skipif(xformers_available(), reason="xformers works here")
def test_xformers_backend_reports_when_missing():
    q = torch.zeros(1, 1, 2, 4)
    with pytest.raises(ValueError, match="xformers"):
        attention(q, q, q, backend="xformers")
