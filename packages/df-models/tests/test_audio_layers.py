"""The audio input path's learned layer sum (``DualForceConfig.audio_layers``): stacked encoder
layers ``[B, T, La, K, Da]`` are mixed by softmax weights before the projection."""

from __future__ import annotations

import pytest
import torch

from df_models.layers import AudioProjector


def test_the_layer_sum_is_a_softmax_weighted_mean_and_is_learned():
    torch.manual_seed(0)
    proj = AudioProjector(feature_dim=8, layers=3, window=6, dim=16)
    proj.init_weights()
    a = torch.randn(2, 4, 6, 3, 8)
    # At init the weights are uniform: the mean of the layers.
    torch.testing.assert_close(proj(a), proj.proj(a.mean(3)) + proj.position)
    with torch.no_grad():
        proj.layer_logits.copy_(torch.tensor([0.0, 30.0, 0.0]))  # softmax ~ one-hot on layer 1
    torch.testing.assert_close(proj(a), proj.proj(a[:, :, :, 1]) + proj.position, atol=1e-5, rtol=0)
    proj(a).sum().backward()
    assert proj.layer_logits.grad is not None and proj.layer_logits.grad.abs().sum() > 0


def test_stacked_layers_must_match_the_config():
    proj = AudioProjector(feature_dim=8, layers=3, window=6, dim=16)
    with pytest.raises(ValueError, match=r"\[B, T, La, 3, Da\]"):
        proj(torch.randn(2, 4, 6, 8))
    with pytest.raises(ValueError, match=r"\[B, T, La, 3, Da\]"):
        proj(torch.randn(2, 4, 6, 2, 8))
    single = AudioProjector(feature_dim=8, layers=1, window=6, dim=16)
    assert single.layer_logits is None
    with pytest.raises(ValueError, match=r"\[B, T, La, Da\]"):
        single(torch.randn(2, 4, 6, 3, 8))
