"""The central invariant: a chunk streamed through the KV cache gives the training outputs of
those frames; and the training forward is causal through both streams and the bridge."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from df_models import DualForceDiT, tiny
from df_models.testing import random_inputs, random_model

configs = st.builds(
    lambda bridge, temporal, struct, audio_into, ref, window, n_fusion, layers, concat, pred: tiny(
        bridge=bridge,
        bridge_temporal=temporal,
        struct_enabled=struct,
        # Without shallow blocks, conditions must go into all blocks (else they reach none).
        audio_into=audio_into if n_fusion else "all",
        ref_into="shallow" if n_fusion else "all",
        ref_tokens_enabled=ref,
        window=window,
        n_fusion=n_fusion,
        audio_layers=layers,
        ref_concat=concat,
        video_prediction=pred,
    ),
    st.sampled_from(["bidirectional", "struct_to_video", "off"]),
    st.sampled_from(["same_frame", "causal"]),
    st.booleans(),
    st.sampled_from(["shallow", "all"]),
    st.booleans(),
    st.one_of(st.none(), st.integers(1, 4)),
    st.integers(0, 2),
    st.integers(1, 2),
    st.booleans(),
    st.sampled_from(["velocity", "clean", "clean_from_reference"]),
)


@given(
    config=configs,
    batch=st.integers(1, 2),
    frames=st.integers(1, 5),
    chunk=st.integers(1, 3),
    noisy_passes=st.integers(0, 1),
    seed=st.integers(0, 2**16),
)
def test_streaming_equals_training(config, batch, frames, chunk, noisy_passes, seed):
    model = random_model(config, seed)
    x = random_inputs(config, batch, frames, seed)
    with torch.no_grad():
        v_full, s_full = model(**x)
        cache = model.new_cache(batch, window=config.window or frames, max_chunk=chunk)
        model.prefill(cache, x["ref_latent_BCHW"], x["ref_feats_BRD"])
        g = torch.Generator().manual_seed(seed + 1)
        refs = {"ref_latent_BCHW": x["ref_latent_BCHW"], "ref_feats_BRD": x["ref_feats_BRD"]}
        for start in range(0, frames, chunk):
            sl = slice(start, min(start + chunk, frames))
            part = {
                k: (v[:, sl] if v is not None else None)
                for k, v in x.items()
                if k not in ("ref_latent_BCHW", "ref_feats_BRD")
            }
            for _ in range(noisy_passes):  # denoising steps: read-only
                noisy = {
                    k: (torch.randn(v.shape, generator=g) if v is not None else None)
                    for k, v in part.items()
                }
                noisy["sigma_v_BT"] = noisy["sigma_v_BT"].abs().clamp(max=1)
                if noisy["sigma_s_BT"] is not None:
                    noisy["sigma_s_BT"] = noisy["sigma_s_BT"].abs().clamp(max=1)
                model.forward_stream(cache, **noisy, commit=False, **refs)
            v, s = model.forward_stream(cache, **part, commit=True, **refs)
            err = (v - v_full[:, sl]).abs().max().item()
            assert err <= 1e-4, f"video frames {sl}: max abs error {err}"
            if config.struct_enabled:
                err = (s - s_full[:, sl]).abs().max().item()
                assert err <= 1e-4, f"struct frames {sl}: max abs error {err}"
            else:
                assert s is None and s_full is None


@given(config=configs, frames=st.integers(2, 5), data=st.data())
def test_outputs_never_depend_on_later_frames(config, frames, data):
    t = data.draw(st.integers(0, frames - 2), label="t")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    model = random_model(config, seed)
    x = random_inputs(config, 1, frames, seed)
    y = random_inputs(config, 1, frames, seed + 7)
    changed = dict(x)
    for key in ("z_BTCHW", "s_BTDs", "sigma_v_BT", "sigma_s_BT", "audio_BTLDa"):
        if x[key] is not None:
            changed[key] = torch.cat([x[key][:, : t + 1], y[key][:, t + 1 :]], dim=1)
    with torch.no_grad():
        v1, s1 = model(**x)
        v2, s2 = model(**changed)
    torch.testing.assert_close(v1[:, : t + 1], v2[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(v1[:, t + 1 :], v2[:, t + 1 :])
    if config.struct_enabled:
        torch.testing.assert_close(s1[:, : t + 1], s2[:, : t + 1], rtol=0, atol=1e-6)


def test_a_stream_a_million_frames_in_equals_one_at_frame_zero():
    """RoPE positions are absolute frame ids with keys rotated once, on write: what a chunk
    sees depends only on frame differences, so a stream far into its run (frame 10^6, about
    11 hours at 25 fps) gives the frames of a stream that starts at 0."""
    config = tiny(window=2, bridge_temporal="causal")
    model = random_model(config, 3)
    x = random_inputs(config, 1, 6, 3)
    outputs = []
    for offset in (0, 10**6):
        cache = model.new_cache(1)
        model.prefill(cache, x["ref_latent_BCHW"], x["ref_feats_BRD"])
        cache._next_frame.fill_(offset)  # as if 10^6 frames had streamed and left the window
        frames = []
        with torch.no_grad():
            for t in range(6):
                part = {
                    k: v[:, t : t + 1]
                    for k, v in x.items()
                    if k not in ("ref_latent_BCHW", "ref_feats_BRD")
                }
                frames.append(model.forward_stream(cache, **part, commit=True))
        outputs.append(frames)
    for (v0, s0), (v1, s1) in zip(*outputs, strict=True):
        torch.testing.assert_close(v1, v0, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(s1, s0, rtol=1e-4, atol=1e-4)


def test_forward_stream_names_a_bad_commit():
    config = tiny(window=2)
    model = random_model(config, 0)
    x = random_inputs(config, 1, 1, 0)
    cache = model.new_cache(1)
    model.prefill(cache, x["ref_latent_BCHW"], x["ref_feats_BRD"])
    part = {k: v for k, v in x.items() if k not in ("ref_latent_BCHW", "ref_feats_BRD")}
    for bad in (2, -1, "yes"):
        with pytest.raises(ValueError, match="commit"):
            model.forward_stream(cache, **part, commit=bad, ref_feats_BRD=x["ref_feats_BRD"])
    assert cache.frames_committed == 0  # nothing half-done: no slot claimed, nothing counted


def _stream_frames(model, cache, x, start, stop):
    part = {
        k: v[:, start:stop] for k, v in x.items() if k not in ("ref_latent_BCHW", "ref_feats_BRD")
    }
    return model.forward_stream(cache, **part, commit=True, ref_feats_BRD=x["ref_feats_BRD"])


@given(capacity=st.integers(1, 4), chunk=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_a_window_less_model_streams_exactly_until_its_cache_is_full_then_refuses(
    capacity, chunk, seed
):
    """A model with ``window=None`` was trained on every past frame: through a cache of
    ``capacity`` frames it equals its training forward for as long as no frame leaves the
    cache, and the pass that would push one out is refused (before it claims a slot), instead
    of silently attending to fewer frames than in training."""
    config = tiny(bridge_temporal="causal")
    model = random_model(config, seed)
    frames = capacity + chunk
    x = random_inputs(config, 1, frames, seed)
    with torch.no_grad():
        v_full, _ = model(**x)
        cache = model.new_cache(1, window=capacity, max_chunk=chunk)
        model.prefill(cache, x["ref_latent_BCHW"], x["ref_feats_BRD"])
        start = 0
        while start + chunk <= capacity:
            v, _ = _stream_frames(model, cache, x, start, start + chunk)
            torch.testing.assert_close(v, v_full[:, start : start + chunk], rtol=0, atol=1e-4)
            start += chunk
        with pytest.raises(ValueError, match=r"window=.*DualForceConfig\.window=None"):
            _stream_frames(model, cache, x, start, start + chunk)
    assert cache.frames_committed == start


def test_a_windowed_model_streams_only_with_its_own_window():
    model = random_model(tiny(window=2), 0)
    assert model.new_cache(1).window == 2
    assert model.new_cache(1, window=2).window == 2
    for other in (1, 3):
        with pytest.raises(ValueError, match=rf"window={other} .*DualForceConfig\.window=2"):
            model.new_cache(1, window=other)
    with pytest.raises(ValueError, match=r"DualForceConfig\.window=None"):
        random_model(tiny(), 0).new_cache(1)


def test_ref_concat_starts_closed_and_needs_the_reference_when_streaming():
    config = tiny(ref_concat=True)
    fresh = DualForceDiT(config)
    fresh.init_weights()
    plain = DualForceDiT(tiny())
    plain.load_state_dict(
        {k: v for k, v in fresh.state_dict().items() if not k.startswith("ref_embed.")}
    )
    x = random_inputs(config, 1, 3, 0)
    with torch.no_grad():
        # zero-initialised: a fresh model's outputs are the model's without the path
        torch.testing.assert_close(fresh(**x)[0], plain.eval()(**x)[0], rtol=0, atol=0)
        model = random_model(config, 0)
        other = dict(x, ref_latent_BCHW=torch.randn_like(x["ref_latent_BCHW"]))
        assert not torch.allclose(model(**x)[0], model(**other)[0])
        cache = model.new_cache(1, window=3)
        model.prefill(cache, x["ref_latent_BCHW"])
        part = {k: v for k, v in x.items() if k not in ("ref_latent_BCHW", "ref_feats_BRD")}
        with pytest.raises(ValueError, match=r"ref_concat.*ref_latent_BCHW"):
            model.forward_stream(cache, **part, commit=True)


def _cache_state(cache) -> list[torch.Tensor]:
    return [t for name in cache.k for t in (*cache.k[name], *cache.v[name])]


@given(
    config=configs,
    batch=st.integers(1, 2),
    frames=st.integers(1, 5),
    chunk=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_precomputed_modulations_and_key_only_commits_change_nothing(
    config, batch, frames, chunk, seed
):
    """The streaming levers of issue 18 are exact: modulations computed once per noise level
    (``model.modulations``) give the pass's own outputs, and a clean pass that only writes its
    keys/values (``outputs=False``) leaves the cache exactly as the full clean pass does."""
    _check_levers(config, batch, frames, chunk, seed)


@pytest.mark.parametrize(
    "config",
    [
        # the struct stream as deep as the video stream: both end in the same block
        tiny(struct_depth=3, n_fusion=1),
        # fusion through the whole struct stream, with a causal (cached) bridge
        tiny(struct_depth=2, n_fusion=2, bridge_temporal="causal"),
        # every block bridged: the last block writes its bridge keys too
        tiny(struct_depth=3, n_fusion=3, bridge_temporal="causal", audio_into="all"),
        tiny(struct_enabled=False, n_fusion=0, audio_into="all", ref_into="all"),
    ],
    ids=["equal-depths", "fusion-to-struct-depth", "all-bridged", "no-struct"],
)
def test_levers_change_nothing_where_the_streams_end_together(config):
    _check_levers(config, batch=2, frames=4, chunk=2, seed=3)


def _check_levers(config, batch, frames, chunk, seed):
    exact = {"rtol": 0, "atol": 0}
    model = random_model(config, seed)
    x = random_inputs(config, batch, frames, seed)
    refs = {"ref_latent_BCHW": x["ref_latent_BCHW"], "ref_feats_BRD": x["ref_feats_BRD"]}
    window = config.window or frames
    with torch.no_grad():
        full = model.new_cache(batch, window=window, max_chunk=chunk)
        lean = model.new_cache(batch, window=window, max_chunk=chunk)
        for cache in (full, lean):
            model.prefill(cache, **refs)
        g = torch.Generator().manual_seed(seed + 1)
        for start in range(0, frames, chunk):
            sl = slice(start, min(start + chunk, frames))
            part = {k: (v[:, sl] if v is not None else None) for k, v in x.items() if k not in refs}
            noisy = dict(part, z_BTCHW=torch.randn(part["z_BTCHW"].shape, generator=g))
            mods = model.modulations(noisy["sigma_v_BT"], noisy["sigma_s_BT"])
            v, s = model.forward_stream(full, **noisy, commit=False, **refs)
            v2, s2 = model.forward_stream(lean, **noisy, commit=False, modulations=mods, **refs)
            torch.testing.assert_close(v2, v, **exact)
            if config.struct_enabled:
                torch.testing.assert_close(s2, s, **exact)
            model.forward_stream(full, **part, commit=True, **refs)
            clean = model.modulations(part["sigma_v_BT"], part["sigma_s_BT"])
            out = model.forward_stream(
                lean, **part, commit=True, outputs=False, modulations=clean, **refs
            )
            assert out is None
            for a, b in zip(_cache_state(lean), _cache_state(full), strict=True):
                torch.testing.assert_close(a, b, **exact)


def test_key_only_passes_must_commit():
    config = tiny()
    model = random_model(config, 0)
    x = random_inputs(config, 1, 1, 0)
    refs = {"ref_latent_BCHW": x["ref_latent_BCHW"], "ref_feats_BRD": x["ref_feats_BRD"]}
    cache = model.new_cache(1, window=config.window or 1)
    model.prefill(cache, **refs)
    part = {k: v for k, v in x.items() if k not in refs}
    with pytest.raises(ValueError, match="outputs=False"):
        model.forward_stream(cache, **part, commit=False, outputs=False, **refs)
