"""GPU checks (H100): FlexAttention with the block-causal BlockMask in bf16, and a streaming
pass compiled by inductor."""

from __future__ import annotations

import pytest
import torch

from df_core import KVCache, StreamSpec, attention, block_causal_mask, token_frames

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("window", [None, 4])
def test_flex_bf16_matches_dense_reference(window):
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = token_frames(8, 256, sink_tokens=256, device="cuda")
    mask = block_causal_mask(ids, window=window)
    q, k, v = (
        torch.randn(1, 4, ids.numel(), 64, generator=g, device="cuda", dtype=torch.bfloat16)
        for _ in range(3)
    )
    reference = attention(q, k, v, mask, backend="math").float()
    flex = attention(q, k, v, mask, backend="flex").float()
    dense = attention(q, k, v, mask, backend="dense").float()
    flex_err = (flex - reference).abs().max().item()
    dense_err = (dense - reference).abs().max().item()
    # bf16 has 8 bits of mantissa: outputs of unit scale round at ~4e-3.
    assert flex_err < 2e-2, flex_err
    assert flex_err <= 2 * dense_err + 1e-2, (flex_err, dense_err)


def _pass(cache: KVCache, x: torch.Tensor) -> torch.Tensor:
    q_frames = cache.begin_chunk(1)
    cache.write("video", 0, x, x)
    k, v, kv_frames = cache.view("video", 0)
    mask = block_causal_mask(q_frames.repeat_interleave(x.shape[2]), kv_frames, window=cache.window)
    return attention(x, k, v, mask, backend="dense")


def test_streaming_pass_compiles_with_inductor_on_cuda():
    torch._dynamo.reset()
    spec = {
        "video": StreamSpec(num_layers=1, heads=2, head_dim=64, tokens_per_frame=16, sink_tokens=16)
    }
    eager = KVCache(spec, batch=1, window=3, device="cuda", dtype=torch.bfloat16)
    compiled_cache = KVCache(spec, batch=1, window=3, device="cuda", dtype=torch.bfloat16)
    compiled = torch.compile(_pass, fullgraph=True, dynamic=False)
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(6):
            x = torch.randn(1, 2, 16, 64, generator=g, device="cuda", dtype=torch.bfloat16)
            torch.testing.assert_close(
                compiled(compiled_cache, x), _pass(eager, x), rtol=2e-2, atol=2e-2
            )
            compiled_cache.commit(1)
            eager.commit(1)
