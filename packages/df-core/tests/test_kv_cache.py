"""The KV cache: constant memory, eviction, clean-only commits, errors, and torch.compile."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from df_core import (
    EMPTY_FRAME,
    SINK_FRAME,
    KVCache,
    StreamSpec,
    attention,
    block_causal_mask,
    bridge_mask,
)

SPECS = {
    "video": StreamSpec(num_layers=2, heads=2, head_dim=4, tokens_per_frame=3, sink_tokens=3),
    "struct": StreamSpec(num_layers=1, heads=1, head_dim=2, tokens_per_frame=2, sink_tokens=1),
}


def fill(cache: KVCache, chunk: int, value: float) -> torch.Tensor:
    q_frames = cache.begin_chunk(chunk)
    for name, s in cache.streams.items():
        for layer in range(s.num_layers):
            kv = torch.full((cache.batch, s.heads, chunk * s.tokens_per_frame, s.head_dim), value)
            cache.write(name, layer, kv, kv)
    return q_frames


def test_memory_is_constant_and_buffers_are_never_reallocated():
    cache = KVCache(SPECS, batch=2, window=4, max_chunk=2)
    pointers = {n: [t.data_ptr() for t in cache.k[n]] for n in SPECS}
    before = cache.memory_bytes()
    for i in range(150):  # 300 frames, far past the window
        fill(cache, 2, float(i))
        cache.commit(2)
    assert cache.memory_bytes() == before
    assert {n: [t.data_ptr() for t in cache.k[n]] for n in SPECS} == pointers
    assert cache.frames_committed == 300
    report = cache.memory_report()
    assert report["total"] == before and report["video"] > report["struct"] > 0


def test_view_holds_sink_and_the_most_recent_frames():
    cache = KVCache(SPECS, batch=1, window=3, max_chunk=2)
    s = SPECS["video"]
    sink = torch.full((1, s.heads, s.sink_tokens, s.head_dim), -1.0)
    cache.write_sink("video", 0, sink, sink)
    for i in range(7):
        fill(cache, 1, float(i))
        cache.commit(1)
    q_frames = fill(cache, 2, 100.0)  # frames 7 and 8, read-only pass
    assert q_frames.tolist() == [7, 8]
    k, _, kv_frames = cache.view("video", 0)
    frames = kv_frames.tolist()
    assert frames[: s.sink_tokens] == [SINK_FRAME] * s.sink_tokens
    ring = sorted(set(frames[s.sink_tokens :]))
    assert ring == [5, 6, 7, 8]  # P = window - 1 + max_chunk = 4 frames
    # Keys are where the frame ids say they are.
    for f, value in ((5, 5.0), (6, 6.0), (7, 100.0)):
        idx = [j for j, x in enumerate(frames) if x == f]
        assert torch.all(k[:, :, idx] == value)
    assert torch.all(k[:, :, : s.sink_tokens] == -1.0)


def test_uncommitted_passes_are_overwritten():
    """Denoising steps never commit: the next pass reuses their slots, so only clean frames stay."""
    cache = KVCache(SPECS, batch=1, window=2, max_chunk=1)
    fill(cache, 1, 1.0)
    cache.commit(1)
    fill(cache, 1, 99.0)  # a noisy step of frame 1
    fill(cache, 1, 2.0)  # the clean pass of frame 1
    cache.commit(1)
    k, _, kv_frames = cache.view("video", 1)
    values = {f: k[0, 0, (kv_frames == f).nonzero()[0, 0], 0].item() for f in (0, 1)}
    assert values == {0: 1.0, 1: 2.0}


def test_commit_part_of_a_chunk_for_staggered_sampling():
    cache = KVCache(SPECS, batch=1, window=4, max_chunk=3)
    assert fill(cache, 3, 0.0).tolist() == [0, 1, 2]
    cache.commit(1)  # only frame 0 became clean
    assert fill(cache, 3, 0.0).tolist() == [1, 2, 3]
    assert cache.frames_committed == 1


@given(
    window=st.integers(1, 5),
    max_chunk=st.integers(1, 3),
    chunks=st.lists(st.integers(1, 3), min_size=1, max_size=12),
    sink=st.booleans(),
)
def test_all_visible_means_the_masks_hide_nothing(window, max_chunk, chunks, sink):
    """The host-side claim that a chunk may attend with no mask is never wrong: whenever
    ``all_visible`` says so, the block-causal and bridge masks over the view are all True;
    and with one-frame chunks and no spare slot it says so once the window is full."""
    cache = KVCache(SPECS, batch=1, window=window, max_chunk=max_chunk)
    if sink:
        for name, s in SPECS.items():
            kv = torch.zeros(1, s.heads, s.sink_tokens, s.head_dim)
            for layer in range(s.num_layers):
                cache.write_sink(name, layer, kv, kv)
    committed = 0
    for c in (min(c, max_chunk) for c in chunks):
        claim = cache.all_visible(c)
        q_frames = fill(cache, c, 0.0)
        vq = q_frames.repeat_interleave(SPECS["video"].tokens_per_frame)
        sq = q_frames.repeat_interleave(SPECS["struct"].tokens_per_frame)
        masks = [
            block_causal_mask(vq, cache.kv_frames["video"], window=window),
            block_causal_mask(sq, cache.kv_frames["struct"], window=window),
            bridge_mask(vq, cache.kv_frames["struct"], temporal="causal", window=window),
        ]
        if claim:
            assert all(bool(m.dense().all()) for m in masks)
        expected = sink and c == 1 and max_chunk == 1 and committed >= window - 1
        assert claim == expected
        cache.commit(c)
        committed += c


def test_reset_forgets_everything():
    cache = KVCache(SPECS, batch=1, window=2)
    fill(cache, 1, 5.0)
    cache.commit(1)
    cache.reset()
    assert cache.frames_committed == 0
    assert not cache.all_visible(1)
    assert all(torch.all(f == EMPTY_FRAME) for f in cache.kv_frames.values())
    assert fill(cache, 1, 0.0).tolist() == [0]


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: KVCache({}, batch=1, window=2), "streams"),
        (lambda: KVCache(SPECS, batch=0, window=2), "batch"),
        (lambda: KVCache(SPECS, batch=1, window=0), "window"),
        (lambda: KVCache(SPECS, batch=1, window=2, max_chunk=-1), "max_chunk"),
        (lambda: KVCache(SPECS, batch=1, window=2).begin_chunk(2), "max_chunk"),
        (lambda: KVCache(SPECS, batch=1, window=2).view("audio", 0), "stream"),
        (
            lambda: KVCache(SPECS, batch=1, window=2).write(
                "video", 0, torch.zeros(1), torch.zeros(1)
            ),
            "begin_chunk",
        ),
        (lambda: KVCache(SPECS, batch=1, window=2).commit(1), "chunk length"),
    ],
)
def test_bad_arguments_name_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_wrong_shapes_are_rejected_with_the_expected_shape():
    cache = KVCache(SPECS, batch=1, window=2)
    cache.begin_chunk(1)
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 4\)"):
        cache.write("video", 0, torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="sink"):
        cache.write_sink("video", 0, torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))


def _pass(cache: KVCache, x: torch.Tensor) -> torch.Tensor:
    """A streaming attention pass of one layer over the video stream."""
    q_frames = cache.begin_chunk(1)
    cache.write("video", 0, x, x)
    k, v, kv_frames = cache.view("video", 0)
    mask = block_causal_mask(q_frames.repeat_interleave(3), kv_frames, window=cache.window)
    return attention(x, k, v, mask, backend="dense")


def test_a_streaming_pass_compiles_without_graph_breaks_or_recompiles():
    """No host syncs: the whole pass traces as one graph and is reused for every frame."""
    torch._dynamo.reset()
    eager_cache = KVCache(SPECS, batch=1, window=3)
    compiled_cache = KVCache(SPECS, batch=1, window=3)
    compiled = torch.compile(_pass, fullgraph=True, backend="eager", dynamic=False)
    g = torch.Generator().manual_seed(0)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(6):
            x = torch.randn(1, 2, 3, 4, generator=g)
            torch.testing.assert_close(compiled(compiled_cache, x), _pass(eager_cache, x))
            compiled_cache.commit(1)
            eager_cache.commit(1)
