"""The denoiser both samplers call: classifier-free guidance per stream on the doubled batch,
the dtype contract, and which forward (streaming or full) it runs.

Legend: B batch, T frames, C latent channels, H W latent size, Ds structure dim.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from df_infer.denoiser import Denoiser, guide


class Halves(nn.Module):
    """A stand-in model whose velocities are known per half of the batch: ``cond_v`` /
    ``cond_s`` for rows whose audio is kept, ``uncond_v`` / ``uncond_s`` for dropped rows;
    records every call."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, dtype=dtype))
        self.calls = []
        self.cond_v, self.uncond_v, self.cond_s, self.uncond_s = 3.0, 1.0, -2.0, 0.5

    def _out(self, z, s, drop_audio_B):
        kept = torch.ones(z.shape[0], dtype=torch.bool) if drop_audio_B is None else ~drop_audio_B
        v = torch.where(kept[:, None, None, None, None], self.cond_v, self.uncond_v)
        s_out = torch.where(kept[:, None, None], self.cond_s, self.uncond_s)
        return v.expand_as(z).to(z.dtype), s_out.expand_as(s).to(s.dtype)

    def forward(self, z, s, sv, ss, audio, ref_latent_BCHW, ref_feats_BRD=None, drop_audio_B=None):
        self.calls.append(("full", z, audio, drop_audio_B, ref_latent_BCHW.shape[0]))
        return self._out(z, s, drop_audio_B)

    def forward_stream(
        self, cache, z, s, sv, ss, audio, *, commit, ref_latent_BCHW, ref_feats_BRD, drop_audio_B
    ):
        assert ref_latent_BCHW.shape[0] == z.shape[0]  # the sink's latent, batched like z
        self.calls.append(("stream", z, audio, drop_audio_B, commit))
        return self._out(z, s, drop_audio_B)

    def prefill(self, cache, ref, feats):
        self.calls.append(("prefill", ref.shape[0]))


class Cache:
    def __init__(self, batch):
        self.batch = batch


def _inputs(B=2, T=3, dtype=torch.float32):
    z = torch.zeros(B, T, 2, 1, 1, dtype=dtype)
    s = torch.zeros(B, T, 4, dtype=dtype)
    sigma = torch.full((B, T), 0.5)
    return z, s, sigma, sigma, torch.zeros(B, T, 5, 3, dtype=dtype)


def test_guide_scale_one_is_the_conditional_and_g_extrapolates():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(100, generator=g), torch.randn(100, generator=g)
    torch.testing.assert_close(guide(cond, uncond, 1.0), cond)
    torch.testing.assert_close(guide(cond, uncond, 0.0), uncond, rtol=0, atol=0)
    for scale in (0.5, 2.0, 7.5):
        torch.testing.assert_close(guide(cond, uncond, scale), uncond + scale * (cond - uncond))
    # Dyadic values: exact. 1 + 3 * (5 - 1) = 13.
    assert guide(torch.tensor(5.0), torch.tensor(1.0), 3.0).item() == 13.0


@pytest.mark.parametrize(("cfg_video", "cfg_struct"), [(2.0, 1.0), (1.0, 3.0), (4.0, 0.5)])
def test_each_stream_takes_its_own_scale(cfg_video, cfg_struct):
    model = Halves()
    ref = torch.zeros(2, 2, 1, 1)
    denoise = Denoiser(model, ref, cfg_video=cfg_video, cfg_struct=cfg_struct)
    v, s = denoise(*_inputs(B=2))
    # uncond + g * (cond - uncond), per stream: video 1 + g (3 - 1), structure 0.5 + g (-2.5).
    assert v.shape == (2, 3, 2, 1, 1) and s.shape == (2, 3, 4)
    assert torch.all(v == 1.0 + cfg_video * 2.0)
    assert torch.all(s == 0.5 + cfg_struct * -2.5)
    # One call on the doubled batch: the conditional half first, the second drops its audio.
    ((kind, z, _, drop, ref_batch),) = model.calls
    assert kind == "full" and z.shape[0] == 4 and ref_batch == 4
    assert drop.tolist() == [False, False, True, True]


def test_unguided_runs_the_conditional_batch_alone():
    model = Halves()
    denoise = Denoiser(model, torch.zeros(2, 2, 1, 1))
    v, s = denoise(*_inputs(B=2))
    assert torch.all(v == model.cond_v) and torch.all(s == model.cond_s)
    ((_, z, _, drop, _),) = model.calls
    assert z.shape[0] == 2 and drop is None


def test_streams_through_the_cache_and_casts_to_the_model_dtype():
    model = Halves(dtype=torch.bfloat16)
    denoise = Denoiser(model, torch.zeros(1, 2, 1, 1), cfg_video=2.0, cache=Cache(batch=2))
    denoise.write_sink()
    v, s = denoise(*_inputs(B=1), commit=2)
    assert model.calls[0] == ("prefill", 2)
    kind, z, audio, drop, commit = model.calls[1]
    assert kind == "stream" and commit == 2 and drop.tolist() == [False, True]
    assert z.dtype == audio.dtype == torch.bfloat16  # the model's inputs take its dtype
    assert v.dtype == s.dtype == torch.float32  # the flow state stays float32
    # struct scale 1 (video 2): the structure is the conditional prediction.
    assert torch.all(s == model.cond_s) and torch.all(v == 1.0 + 2.0 * 2.0)


def test_a_model_without_the_levers_still_streams_with_them_asked_for():
    """A model whose forward_stream has the plain signature (no modulations, no outputs):
    naming the levels and asking for a key-only pass run it as a full committing pass."""
    model = Halves()
    denoise = Denoiser(model, torch.zeros(1, 2, 1, 1), cache=Cache(batch=1))
    assert not denoise.cache_modulations
    assert denoise(*_inputs(B=1), commit=3, levels=((0, 3),), outputs=False) is None
    ((kind, _, _, _, commit),) = model.calls
    assert kind == "stream" and commit == 3
    v, _ = denoise(*_inputs(B=1), levels=((0, 3),))
    assert torch.all(v == model.cond_v)


def test_cache_batch_and_commit_are_checked():
    with pytest.raises(ValueError, match="batch 2"):
        Denoiser(Halves(), torch.zeros(1, 2, 1, 1), cfg_struct=2.0, cache=Cache(batch=1))
    denoise = Denoiser(Halves(), torch.zeros(1, 2, 1, 1))
    with pytest.raises(ValueError, match="commit needs a cache"):
        denoise(*_inputs(B=1), commit=True)
