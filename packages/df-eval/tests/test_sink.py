"""The sink diagnostics on an untrained tiny model: recording changes nothing, the uniform share
is the cache's layout, and masking the sink out changes the frames without empty softmax rows."""

from __future__ import annotations

import torch

from df_eval.sink import sink_attention, without_sink
from df_infer.sampler import SamplerConfig, sample_stream
from df_models import DualForceDiT
from df_models.config import tiny


class Audio:
    def __init__(self, config, frames):
        self.config, self.frames = config, frames
        self.g = torch.Generator().manual_seed(1)
        self.all = torch.randn(1, frames, config.audio_window, config.audio_dim, generator=self.g)

    def ensure(self, t_end):
        return min(t_end, self.frames)

    def windows(self, t0, n):
        return self.all[:, t0 : t0 + n]


def _stream(model, ref, frames=3):
    sampler = SamplerConfig(steps=2, shift=1.0, sigma_s_start=0.7, sigma_ctx=0.0)
    parts = sample_stream(model, ref, Audio(model.config, frames), sampler)
    return torch.cat([p.z for p in parts], 1)


def test_recording_changes_nothing_and_the_uniform_share_is_the_layout():
    torch.manual_seed(0)
    model = DualForceDiT(tiny(window=4)).eval()
    c = model.config
    ref = torch.randn(1, c.latent_channels, c.latent_height, c.latent_width)
    plain = _stream(model, ref, frames=1)
    with sink_attention(model) as record:
        recorded = _stream(model, ref, frames=1)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=1e-5)
    s = record.summary()
    assert len(s["mass_per_layer"]) == c.video_depth
    assert all(0.0 < m < 1.0 for m in s["mass_per_layer"])
    # frame 0 sees the sink (video_tokens keys) and itself (video_tokens keys): half the keys
    assert abs(s["uniform"] - 0.5) < 1e-6


def test_without_the_sink_the_frames_change_and_stay_finite():
    torch.manual_seed(0)
    model = DualForceDiT(tiny(window=4)).eval()
    c = model.config
    ref = torch.randn(1, c.latent_channels, c.latent_height, c.latent_width)
    plain = _stream(model, ref)
    with without_sink(model):
        ablated = _stream(model, ref)
    assert torch.isfinite(ablated).all()
    assert (ablated - plain).abs().max() > 1e-3
    torch.testing.assert_close(_stream(model, ref), plain)  # the patch is gone afterwards
