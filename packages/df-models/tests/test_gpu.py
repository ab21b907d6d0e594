"""GPU checks: the model on CUDA (FlexAttention block masks, per-frame SDPA) agrees with the
CPU dense reference, and streaming equals training there too."""

from __future__ import annotations

import pytest
import torch

from df_core import SIGMA_S_MAX
from df_models import base, tiny
from df_models.dit import DualForceDiT
from df_models.testing import random_inputs, random_model

pytestmark = pytest.mark.gpu

CONFIGS = [
    tiny(window=2),
    tiny(bridge_temporal="causal", ref_tokens_enabled=True, audio_into="all"),
    tiny(latent_height=16, latent_width=16, video_dim=64, video_heads=2, window=3),
    # 256 video tokens per frame: frame-aligned with FlexAttention's 128-token blocks, so the
    # video self-attention takes the block-table BlockMask (df_core.masks)
    tiny(latent_height=32, latent_width=32, video_dim=64, video_heads=2, window=3),
]


def _to(x, device, dtype=None):
    return {k: (v.to(device, dtype) if v is not None else None) for k, v in x.items()}


@pytest.mark.parametrize("config", CONFIGS)
def test_cuda_flex_matches_cpu_dense_and_streaming_matches_training(config):
    model = random_model(config, seed=1)
    x = random_inputs(config, 2, 5, seed=2)
    with torch.no_grad():
        v_cpu, s_cpu = model(**x)
        model = model.cuda()
        xc = _to(x, "cuda")
        v_gpu, s_gpu = model(**xc)
        torch.testing.assert_close(v_gpu.cpu(), v_cpu, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(s_gpu.cpu(), s_cpu, rtol=1e-3, atol=1e-3)
        cache = model.new_cache(2, window=config.window or 5, max_chunk=2, device="cuda")
        model.prefill(cache, xc["ref_latent_BCHW"], xc["ref_feats_BRD"])
        for start in range(0, 5, 2):
            sl = slice(start, min(start + 2, 5))
            part = {
                k: v[:, sl] for k, v in xc.items() if k not in ("ref_latent_BCHW", "ref_feats_BRD")
            }
            v, s = model.forward_stream(
                cache, **part, commit=True, ref_feats_BRD=xc["ref_feats_BRD"]
            )
            torch.testing.assert_close(v, v_gpu[:, sl], rtol=1e-3, atol=1e-3)
            torch.testing.assert_close(s, s_gpu[:, sl], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("ref_tokens", [False, True])
def test_base_preset_runs_in_bf16_on_cuda(ref_tokens):
    config = base(ref_tokens_enabled=ref_tokens)
    with torch.device("cuda"):
        model = DualForceDiT(config).to(torch.bfloat16)
    model.init_weights()
    c = config
    g = torch.Generator(device="cuda").manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, device="cuda", dtype=torch.bfloat16)

    x = {
        "z_BTCHW": r(1, 4, c.latent_channels, c.latent_height, c.latent_width),
        "s_BTDs": r(1, 4, c.struct_raw_dim),
        "sigma_v_BT": torch.rand(1, 4, device="cuda"),
        "sigma_s_BT": torch.rand(1, 4, device="cuda") * SIGMA_S_MAX,
        "audio_BTLDa": r(1, 4, c.audio_window, c.audio_dim),
        "ref_latent_BCHW": r(1, c.latent_channels, c.latent_height, c.latent_width),
        "ref_feats_BRD": r(1, 16, c.ref_feature_dim) if ref_tokens else None,
    }
    with torch.no_grad():
        v, s = model(**x)
    assert v.shape == x["z_BTCHW"].shape and torch.isfinite(v.float()).all()
    assert s.shape == (1, 4, c.struct_raw_dim)
