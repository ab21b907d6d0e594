"""RoPE: logits depend only on position differences; the sink is time-less."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from df_core import (
    EMPTY_FRAME,
    SINK_FRAME,
    apply_rope,
    frame_positions,
    grid_positions,
    rope_cos_sin,
    slot_positions,
    split_head_dim,
    token_frames,
)


@pytest.mark.parametrize("head_dim", [2, 6, 8, 64, 128])
@pytest.mark.parametrize("axes", [1, 2, 3])
def test_split_head_dim_sums_and_is_even(head_dim, axes):
    dims = split_head_dim(head_dim, axes)
    assert sum(dims) == head_dim and len(dims) == axes
    assert all(d % 2 == 0 for d in dims)


def test_split_head_dim_rejects_odd():
    with pytest.raises(ValueError, match="head_dim"):
        split_head_dim(7, 3)


@given(st.integers(-50, 50), st.integers(0, 10_000), st.integers(0, 2**16))
def test_logits_depend_only_on_differences(offset, shift, seed):
    g = torch.Generator().manual_seed(seed)
    dims = split_head_dim(12, 3)
    t = torch.tensor([0, 1, 3, 7]) + offset + 50
    h = torch.tensor([0, 1, 0, 2])
    w = torch.tensor([1, 0, 2, 2])
    q, k = torch.randn(2, 4, 12, generator=g, dtype=torch.float64)
    cos, sin = rope_cos_sin([t, h, w], dims, dtype=torch.float64)
    cos2, sin2 = rope_cos_sin([t + shift, h, w], dims, dtype=torch.float64)
    logits = apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).T
    shifted = apply_rope(q, cos2, sin2) @ apply_rope(k, cos2, sin2).T
    torch.testing.assert_close(logits, shifted, rtol=1e-9, atol=1e-9)


def test_rotation_preserves_norm():
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    cos, sin = rope_cos_sin(
        [torch.arange(5.0), torch.arange(5.0)], split_head_dim(8, 2), dtype=torch.float64
    )
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


def test_sink_logits_do_not_depend_on_the_query_frame():
    g = torch.Generator().manual_seed(0)
    dims = split_head_dim(12, 3)
    q, k = torch.randn(2, 12, generator=g, dtype=torch.float64)
    sink_cos, sink_sin = rope_cos_sin(
        [torch.tensor([0]), torch.tensor([1]), torch.tensor([2])],
        dims,
        timeless=torch.tensor([True]),
        dtype=torch.float64,
    )
    k_sink = apply_rope(k[None], sink_cos, sink_sin)
    logits = []
    for t in (0, 1, 17, 100_000):
        cos, sin = rope_cos_sin(
            [torch.tensor([t]), torch.tensor([1]), torch.tensor([2])], dims, dtype=torch.float64
        )
        logits.append((apply_rope(q[None], cos, sin) @ k_sink.T).item())
    assert max(logits) - min(logits) < 1e-12
    # Its spatial channels still carry position.
    moved, _ = rope_cos_sin(
        [torch.tensor([0]), torch.tensor([3]), torch.tensor([2])],
        dims,
        timeless=torch.tensor([True]),
        dtype=torch.float64,
    )
    assert not torch.equal(moved, sink_cos)


def test_frame_positions_are_frame_ids_and_zero_for_sink_and_empty_slots():
    frames = torch.tensor([SINK_FRAME, EMPTY_FRAME, 1000, 1001, 1002])
    assert frame_positions(frames).tolist() == [0, 0, 1000, 1001, 1002]


def test_grid_and_slot_positions():
    frames = token_frames(2, 6)
    t, h, w = grid_positions(frames, 2, 3)
    assert t.tolist() == frames.tolist()
    assert h.tolist() == [0, 0, 0, 1, 1, 1] * 2
    assert w.tolist() == [0, 1, 2] * 4
    _, slot = slot_positions(token_frames(3, 2), 2)
    assert slot.tolist() == [0, 1] * 3
    with pytest.raises(ValueError, match="height"):
        grid_positions(frames, 0, 3)
    with pytest.raises(ValueError, match="not a multiple"):
        grid_positions(frames, 5, 1)


def test_apply_rope_rejects_wrong_table():
    cos, sin = rope_cos_sin([torch.arange(3.0)], [8])
    with pytest.raises(ValueError, match="cos"):
        apply_rope(torch.zeros(4, 8), cos, sin)
