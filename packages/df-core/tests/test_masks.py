"""Masks equal their explicit reference; no query sees a later frame; a frame sees all of itself."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_mask, flex_attention

from df_core import (
    EMPTY_FRAME,
    SINK_FRAME,
    block_causal_mask,
    bridge_mask,
    same_frame_mask,
    token_frames,
)


def reference_causal(q_frames: list[int], kv_frames: list[int], window: int | None) -> torch.Tensor:
    """The rule written out token by token, independent of the vectorised code."""
    out = torch.zeros(len(q_frames), len(kv_frames), dtype=torch.bool)
    for i, qf in enumerate(q_frames):
        for j, kf in enumerate(kv_frames):
            if kf == EMPTY_FRAME:
                continue
            if kf == SINK_FRAME or (
                qf != SINK_FRAME and kf <= qf and (window is None or qf - kf < window)
            ):
                out[i, j] = True
    return out


layouts = st.tuples(
    st.integers(0, 6),  # frames
    st.integers(1, 4),  # tokens per frame
    st.integers(0, 3),  # sink tokens
    st.one_of(st.none(), st.integers(1, 7)),  # window
)


@given(layouts)
def test_block_causal_equals_reference_and_mask_mod(layout):
    frames, n, sink, window = layout
    ids = token_frames(frames, n, sink_tokens=sink)
    if ids.numel() == 0:
        return
    mask = block_causal_mask(ids, window=window)
    expected = reference_causal(ids.tolist(), ids.tolist(), window)
    assert torch.equal(mask.dense(), expected)
    from_mod = create_mask(mask.mask_mod, None, None, ids.numel(), ids.numel(), device="cpu")
    assert torch.equal(from_mod[0, 0], expected)


@given(layouts, st.integers(1, 3), st.integers(0, 4))
def test_chunk_against_cache_layout_equals_reference(layout, chunk, empty):
    """Queries of a chunk against a cache view in slot order, with empty slots."""
    frames, n, sink, window = layout
    g = torch.Generator().manual_seed(frames * 31 + n)
    past = token_frames(frames, n)
    slots = torch.cat(
        [torch.full((sink,), SINK_FRAME), past, torch.full((empty * n,), EMPTY_FRAME)]
    )
    slots = slots[torch.randperm(slots.numel(), generator=g)]
    q = token_frames(chunk, n, first_frame=frames)
    kv = torch.cat([slots, q])
    mask = block_causal_mask(q, kv, window=window)
    assert torch.equal(mask.dense(), reference_causal(q.tolist(), kv.tolist(), window))


@given(layouts)
def test_no_future_all_of_own_frame_sink_visible(layout):
    frames, n, sink, window = layout
    ids = token_frames(frames, n, sink_tokens=sink)
    if ids.numel() == 0:
        return
    dense = block_causal_mask(ids, window=window).dense()
    q, k = ids[:, None], ids[None, :]
    assert not (dense & (k > q)).any(), "a query sees a later frame"
    assert dense[(k == q).expand_as(dense)].all(), "a frame does not see all of itself"
    assert dense[:, ids == SINK_FRAME].all(), "some query cannot see the sink"
    assert not dense[ids == SINK_FRAME][:, ids != SINK_FRAME].any(), "the sink sees a frame"
    if window is not None:
        assert not (dense & (k >= 0) & (q - k >= window)).any(), "a query sees past its window"


def test_flex_block_mask_matches_dense_sdpa_on_cpu():
    g = torch.Generator().manual_seed(0)
    ids = token_frames(5, 3, sink_tokens=3)
    mask = block_causal_mask(ids, window=2)
    q, k, v = (torch.randn(2, 2, ids.numel(), 8, generator=g) for _ in range(3))
    flex = flex_attention(q, k, v, block_mask=mask.block_mask(block_size=4))
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense())
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)


def test_same_frame_and_bridge_masks():
    video = token_frames(3, 4, sink_tokens=4)
    struct = token_frames(3, 2, sink_tokens=2)
    same = same_frame_mask(video, struct).dense()
    assert torch.equal(same, video[:, None] == struct[None, :])
    assert torch.equal(bridge_mask(video, struct).dense(), same)
    causal = bridge_mask(struct, video, temporal="causal", window=2).dense()
    assert torch.equal(causal, reference_causal(struct.tolist(), video.tolist(), 2))
    with pytest.raises(ValueError, match="temporal"):
        bridge_mask(video, struct, temporal="future")


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: token_frames(-1, 2), "num_frames"),
        (lambda: token_frames(2, 0), "tokens_per_frame"),
        (lambda: token_frames(2, 2, sink_tokens=-3), "sink_tokens"),
        (lambda: block_causal_mask(token_frames(2, 2), window=0), "window"),
        (lambda: block_causal_mask(torch.zeros(2, 2, dtype=torch.long)), "q_frames"),
        (lambda: block_causal_mask(token_frames(2, 2), torch.zeros(3)), "kv_frames"),
    ],
)
def test_bad_arguments_name_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


@given(
    st.integers(0, 5),  # past frames in the cache
    st.integers(1, 2),  # blocks per frame
    st.integers(1, 3),  # chunk frames
    st.integers(0, 3),  # empty slots
    st.one_of(st.none(), st.integers(1, 6)),  # window
)
def test_frame_aligned_block_table_equals_dense_mask(past, blocks, chunk, empty, window):
    """The block-table BlockMask of a frame-aligned layout (queries of a chunk against a cache
    view in shuffled slot order) describes exactly the dense mask, and FlexAttention with it
    equals dense-mask SDPA."""
    bs = 4
    n = blocks * bs  # tokens per frame, a whole number of blocks
    g = torch.Generator().manual_seed(past * 97 + blocks * 13 + chunk * 7 + empty)
    frame_slots = [SINK_FRAME] + list(range(past)) + [EMPTY_FRAME] * empty
    order = torch.randperm(len(frame_slots), generator=g).tolist()
    kv_frame_ids = [frame_slots[i] for i in order] + list(range(past, past + chunk))
    kv = torch.tensor(kv_frame_ids).repeat_interleave(n)
    q = token_frames(chunk, n, first_frame=past)
    mask = block_causal_mask(q, kv, window=window, granule=n)
    assert mask.block_aligned(bs)
    table = mask.block_mask(block_size=bs)
    dense = mask.dense()
    assert torch.equal(
        table.to_dense()[0, 0].repeat_interleave(bs, 0).repeat_interleave(bs, 1).bool(), dense
    )
    assert int(table.kv_num_blocks.sum()) == 0, "every visible block must be full"
    qt, kt, vt = (torch.randn(1, 2, m, 8, generator=g) for m in (q.numel(), kv.numel(), kv.numel()))
    flex = flex_attention(qt, kt, vt, block_mask=table)
    ref = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=dense)
    torch.testing.assert_close(flex, ref, rtol=1e-5, atol=1e-5)


def test_block_table_needs_a_granule_that_blocks_divide():
    ids = token_frames(4, 8, sink_tokens=8)
    assert not block_causal_mask(ids).block_aligned(4)  # no granule promised
    assert block_causal_mask(ids, granule=8).block_aligned(4)
    assert not block_causal_mask(ids, granule=8).block_aligned(16)
    with pytest.raises(ValueError, match="granule"):
        block_causal_mask(ids, granule=-1)
