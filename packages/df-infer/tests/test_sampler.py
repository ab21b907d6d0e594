"""The end-to-end cache invariant: streaming generation through the KV cache equals the
full-sequence sampler (training forward over every frame at every iteration) given the same
noise, frame for frame; and memory stays flat once the window is full."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from df_core import SIGMA_S_MAX
from df_infer.frame_noise import frames_noise, noise_generator
from df_infer.sampler import SamplerConfig, sample_full, sample_stream
from df_models import tiny
from df_models.testing import random_inputs, random_model


def sampler(**kw) -> SamplerConfig:
    """A sampler with the training noise settings of a model trained with the defaults (no
    bundle here to take them from), unless given."""
    return SamplerConfig(**{"shift": 1.0, "sigma_s_start": SIGMA_S_MAX, "sigma_ctx": 0.0, **kw})


class FixedWindows:
    """An audio-window source over precomputed windows ``[B, T, La, Da]``."""

    def __init__(self, audio_BTLaDa):
        self.a = audio_BTLaDa
        self.T = audio_BTLaDa.shape[1]
        self.calls = []

    def ensure(self, t_end):
        return min(t_end, self.T)

    def windows(self, t0, n):
        self.calls.append((t0, n))
        assert t0 + n <= self.T
        return self.a[:, t0 : t0 + n]


def _stream(model, x, cfg, **kw):
    out = list(
        sample_stream(
            model,
            x["ref_latent_BCHW"],
            FixedWindows(x["audio_BTLDa"]),
            cfg,
            ref_feats_BRD=x["ref_feats_BRD"],
            **kw,
        )
    )
    starts = [o.t0 for o in out]
    assert starts == sorted(starts)
    z = torch.cat([o.z for o in out], 1)
    s = torch.cat([o.s for o in out], 1) if out[0].s is not None else None
    return z, s


@settings(deadline=None)
@given(
    steps=st.integers(1, 3),
    chunk=st.integers(1, 2),
    stagger=st.integers(0, 3),  # 0: None (chunk-wise); clipped to steps
    bridge_temporal=st.sampled_from(["same_frame", "causal"]),
    frames=st.integers(1, 6),
    window=st.sampled_from([None, 2, 3]),
    struct=st.booleans(),
    sigma_ctx=st.sampled_from([0.0, 0.1]),
    prior=st.sampled_from(["previous", "zero"]),
    finish=st.booleans(),
    cfg_audio=st.sampled_from([1.0, 2.0]),
    cfg_struct=st.sampled_from([None, 1.0, 3.0]),
    batch=st.integers(1, 2),
    fuse=st.booleans(),
    ref_concat=st.booleans(),
    noise_share=st.sampled_from([0.0, 0.7]),
    prediction=st.sampled_from(["velocity", "clean", "clean_from_reference"]),
    frames_per_latent=st.sampled_from([1, 4]),
    seed=st.integers(0, 1000),
)
def test_stream_equals_full(
    steps,
    chunk,
    stagger,
    bridge_temporal,
    frames,
    window,
    struct,
    sigma_ctx,
    prior,
    finish,
    cfg_audio,
    cfg_struct,
    batch,
    fuse,
    ref_concat,
    noise_share,
    prediction,
    frames_per_latent,
    seed,
):
    config = tiny(
        frames_per_latent=frames_per_latent,  # latent frames then read 4 frames' audio each
        window=window,
        struct_enabled=struct,
        bridge_temporal=bridge_temporal,
        ref_concat=ref_concat,
        video_prediction=prediction,
    )
    model = random_model(config, seed)
    x = random_inputs(config, batch, frames, seed)
    cfg = sampler(
        steps=steps,
        chunk=chunk,
        stagger=min(stagger, steps) or None,
        sigma_ctx=sigma_ctx,
        struct_prior=prior,
        struct_finish_step=1 if finish else None,
        cfg_audio=cfg_audio,
        cfg_struct=cfg_struct,
        fuse_clean=fuse,
        noise_share=noise_share,
        seed=seed,
        shift=2.0,
    )
    if window is None:
        # A window-less model streams with a window spanning the clip.
        cache = model.new_cache(
            batch * (2 if cfg.guided else 1), window=frames, max_chunk=cfg.max_pass_frames
        )
    else:
        cache = None
    z, s = _stream(model, x, cfg, cache=cache)
    z_ref, s_ref = sample_full(
        model, x["ref_latent_BCHW"], x["audio_BTLDa"], cfg, ref_feats_BRD=x["ref_feats_BRD"]
    )
    assert (
        z.shape
        == z_ref.shape
        == (batch, frames, config.latent_channels, config.latent_height, config.latent_width)
    )
    torch.testing.assert_close(z, z_ref, atol=2e-4, rtol=1e-4)
    if struct:
        torch.testing.assert_close(s, s_ref, atol=2e-4, rtol=1e-4)
    else:
        assert s is None and s_ref is None


def test_noise_is_per_frame_and_seeded():
    config = tiny(window=4)
    model = random_model(config, 0)
    x = random_inputs(config, 1, 4, 0)
    a = _stream(model, x, sampler(steps=2, seed=5))[0]
    b = _stream(model, x, sampler(steps=2, seed=5))[0]
    c = _stream(model, x, sampler(steps=2, seed=6))[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@settings(deadline=None, max_examples=10)
@given(
    steps=st.integers(1, 3),
    chunk=st.integers(1, 2),
    fuse=st.booleans(),
    guided=st.booleans(),
    stagger=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_modulations_once_per_level_and_key_only_clean_passes_are_exact(
    steps, chunk, fuse, guided, stagger, seed
):
    """Issue 18's exact levers on and off sample the same frames (guided or not, fused or
    not, chunk-wise or staggered), and a stream computes each level's modulations once."""
    config = tiny(window=3)
    model = random_model(config, seed)
    # 12 frames: long enough for the schedule's passes to repeat their levels (a short
    # staggered stream can have as many distinct level sets as passes)
    x = random_inputs(config, 1, 12, seed)
    cfg = sampler(
        steps=steps,
        chunk=chunk,
        fuse_clean=fuse,
        cfg_audio=2.0 if guided else 1.0,
        stagger=min(stagger, steps),
    )
    calls = []
    original = type(model).modulations

    def counted(self, *a):
        calls.append(1)
        return original(self, *a)

    plain = _stream(model, x, cfg, cache_modulations=False, key_only_clean=False)
    passes = []
    chunk_pass = model.forward_chunk

    def counted_pass(*a, **k):
        passes.append(1)
        return chunk_pass(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(model), "modulations", counted)
        mp.setattr(model, "forward_chunk", counted_pass)
        lean = _stream(model, x, cfg)
    torch.testing.assert_close(lean[0], plain[0], rtol=0, atol=0)
    assert config.struct_enabled
    torch.testing.assert_close(lean[1], plain[1], rtol=0, atol=0)
    # Once per distinct set of levels a pass has, not once per pass.
    assert 0 < len(calls) < len(passes)


def test_approx_clean_pass_differs_but_runs():
    config = tiny(window=4)
    model = random_model(config, 1)
    x = random_inputs(config, 1, 5, 1)
    exact = _stream(model, x, sampler(steps=3))[0]
    approx = _stream(model, x, sampler(steps=3, clean_pass="approx"))[0]
    # Frame 0 sees only the sink either way; later frames read approximate keys.
    torch.testing.assert_close(exact[:, 0], approx[:, 0])
    assert not torch.allclose(exact[:, 1:], approx[:, 1:])
    with pytest.raises(ValueError, match="clean_pass='exact'"):
        sample_full(model, x["ref_latent_BCHW"], x["audio_BTLDa"], sampler(clean_pass="approx"))


def test_memory_flat_over_300_frames():
    """300 frames with a window of 8: the cache is allocated once; frames past the window do
    not grow it, and the sampler's live tensors do not accumulate."""
    config = tiny(window=8)
    model = random_model(config, 2)
    x = random_inputs(config, 1, 300, 2)
    audio = FixedWindows(x["audio_BTLDa"])
    cache = model.new_cache(1, max_chunk=sampler(steps=2).max_pass_frames)
    fixed = cache.memory_bytes()
    sizes = []
    count = 0
    for out in sample_stream(model, x["ref_latent_BCHW"], audio, sampler(steps=2), cache=cache):
        count += out.z.shape[1]
        assert cache.memory_bytes() == fixed
        sizes.append(cache.memory_bytes())
    assert count == 300
    assert len(set(sizes)) == 1
    assert cache.frames_committed == 299  # every frame but the last is written clean


@pytest.mark.parametrize(
    ("field", "bad", "edge"),
    [
        ("steps", 0, 1),
        ("chunk", 0, 1),
        ("stagger", 5, 4),  # at most steps = 4
        ("stagger", 0, 1),
        ("clean_pass", "x", "approx"),
        ("sigma_ctx", 1.5, 1.0),
        ("struct_prior", "y", "zero"),
        ("struct_finish_step", 5, 4),
        ("sigma_s_start", 0.0, 1.0),
        ("shift", 0.0, 1e-3),
        ("cfg_struct", -1.0, 0.0),
        ("cfg_audio", float("nan"), 0.0),
        ("noise_share", 1.5, 1.0),
        ("seed", -1, 0),
    ],
)
def test_config_bounds_name_the_field_and_accept_the_edge(field, bad, edge):
    with pytest.raises(ValueError, match=f"SamplerConfig.{field}"):
        SamplerConfig(**{"steps": 4, field: bad})
    assert getattr(SamplerConfig(**{"steps": 4, field: edge}), field) == edge


def test_fusing_needs_the_exact_clean_pass():
    with pytest.raises(ValueError, match="fuse_clean"):
        SamplerConfig(clean_pass="approx", fuse_clean=True)
    with pytest.raises(ValueError, match="fuse_clean"):
        SamplerConfig(fuse_clean=1)


# The compiled hot loop: the whole streaming forward traces into one graph per pass shape (no
# graph breaks, no recompilation as the stream advances and the ring buffer wraps) and gives
# the eager frames. A counting backend stands in for inductor, so this runs in seconds on a
# CPU; the GPU suite runs the real inductor / CUDA-graph path.


@pytest.mark.parametrize(
    ("cfg", "shapes"),
    [
        # fused: the first pass of each frame carries the previous clean frame (2 frames),
        # the other passes 1 frame (and the cache's spare slot means masks throughout)
        (sampler(steps=3, cfg_audio=2.0, shift=2.0, fuse_clean=True), 2),
        # separate clean passes: 1-frame passes with masks until the window is full, then
        # without; once without, the clean pass writes only keys/values (a third graph);
        # with masks it is a full pass, the masked denoising pass's graph
        (sampler(steps=3, cfg_audio=2.0, shift=2.0), 3),
        (sampler(steps=2, clean_pass="approx", shift=2.0), 2),
    ],
)
def test_stream_forward_compiles_once_per_pass_shape(cfg, shapes):
    config = tiny(window=3, bridge_temporal="causal")
    model = random_model(config, seed=0)
    x = random_inputs(config, batch=1, frames=11, seed=1)  # 11 frames: the ring wraps twice
    eager_z, eager_s = _stream(model, x, cfg)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model.forward_chunk = torch.compile(
        model.forward_chunk, backend=counting_backend, fullgraph=True, dynamic=False
    )
    try:
        z, s = _stream(model, x, cfg)
    finally:
        del model.forward_chunk
        torch._dynamo.reset()
    # One graph per distinct pass (frames in the pass, commit or not); none per frame index.
    assert len(graphs) == shapes, f"{len(graphs)} graphs for {shapes} pass shapes (recompiles?)"
    torch.testing.assert_close(z, eager_z, rtol=0, atol=0)
    torch.testing.assert_close(s, eager_s, rtol=0, atol=0)


@pytest.mark.parametrize("clean_pass", ["exact", "approx"])
def test_passes_run_without_masks_once_the_window_is_full(clean_pass, monkeypatch):
    """With separate clean passes and one-frame chunks, every pass from frame ``window - 1``
    on sees the whole cache and runs with no mask; before that, and when fused, masks. The
    exact clean pass is key-only (``outputs=False``) exactly where it has no mask, so that a
    masked clean pass is the masked denoising pass's graph (3 pass shapes, not 4)."""
    config = tiny(window=3, bridge_temporal="causal")
    model = random_model(config, seed=0)
    x = random_inputs(config, batch=1, frames=8, seed=1)
    seen, key_only = [], []
    inner = model.forward_chunk

    def spy(*args, all_visible, outputs=True, **kw):
        seen.append(all_visible)
        key_only.append(not outputs)
        return inner(*args, all_visible=all_visible, outputs=outputs, **kw)

    monkeypatch.setattr(model, "forward_chunk", spy)
    _stream(model, x, sampler(steps=2, clean_pass=clean_pass, shift=2.0))
    per_frame = 3 if clean_pass == "exact" else 2  # 2 steps (+ the clean pass)
    early = 2 * per_frame  # frames 0 and 1: the window of 3 is not full yet
    assert seen == [False] * early + [True] * (len(seen) - early)
    assert len(seen) == 8 * per_frame - (clean_pass == "exact")  # no clean pass after the last
    if clean_pass == "exact":  # the third pass of each frame from frame 2 on, frame 7's none
        assert key_only == [i >= early and i % 3 == 2 for i in range(len(seen))]
    else:
        assert not any(key_only)
    seen.clear()
    _stream(model, x, sampler(steps=2, shift=2.0, fuse_clean=True))
    assert not any(seen)


def test_struct_guidance_scale_moves_only_the_structure_stream_when_it_is_cut_off():
    """With the video stream blind to the structure (bridge off), a structure
    guidance scale of its own leaves the video frames exactly as they were and changes the
    structure; None means the audio scale."""
    config = tiny(window=3, bridge="off")
    model = random_model(config, seed=3)
    x = random_inputs(config, 1, 4, seed=3)
    runs = {
        g: _stream(model, x, sampler(steps=2, cfg_audio=2.0, cfg_struct=g, shift=2.0))
        for g in (None, 2.0, 0.5)
    }
    torch.testing.assert_close(runs[None][0], runs[2.0][0], rtol=0, atol=0)
    torch.testing.assert_close(runs[None][1], runs[2.0][1], rtol=0, atol=0)
    torch.testing.assert_close(runs[0.5][0], runs[2.0][0], rtol=0, atol=0)
    assert not torch.allclose(runs[0.5][1], runs[2.0][1])
    assert SamplerConfig(cfg_struct=2.0).guided and not SamplerConfig().guided


def test_samplers_refuse_training_values_left_to_the_bundle():
    config = tiny(window=3)
    model = random_model(config, seed=0)
    x = random_inputs(config, 1, 2, seed=0)
    for field in ("shift", "sigma_s_start", "sigma_ctx"):
        cfg = sampler(**{field: None})
        with pytest.raises(ValueError, match=f"SamplerConfig.{field} is None"):
            _stream(model, x, cfg)
        with pytest.raises(ValueError, match=f"SamplerConfig.{field} is None"):
            sample_full(model, x["ref_latent_BCHW"], x["audio_BTLDa"], cfg)


@pytest.mark.parametrize("share", [0.0, 0.3, 0.8, 1.0])
def test_shared_noise_is_standard_normal_with_the_stated_frame_correlation(share):
    """Each frame's video noise stays N(0, I) and two frames correlate by ``share``; the
    structure and context noise stay independent, and share 0 is the independent noise."""
    config = tiny(struct_enabled=True)
    gen = noise_generator("cpu")
    n = frames_noise(config, 64, 0, 3, 7, "cpu", gen, share)
    v = n.v.flatten(2)  # [B, n, D]
    assert abs(v.mean().item()) < 0.03 and abs(v.std().item() - 1.0) < 0.03
    corr = torch.corrcoef(torch.stack([v[:, 0].flatten(), v[:, 2].flatten()]))[0, 1].item()
    assert abs(corr - share) < 0.03
    ctx = torch.corrcoef(torch.stack([n.ctx_v[:, 0].flatten(), n.ctx_v[:, 2].flatten()]))
    assert abs(ctx[0, 1].item()) < 0.03
    independent = frames_noise(config, 64, 0, 3, 7, "cpu", gen)
    assert torch.equal(n.s, independent.s)
    if share == 0.0:
        assert torch.equal(n.v, independent.v)
    # A frame's noise depends on (seed, frame, share) only, not on where its chunk starts.
    assert torch.equal(frames_noise(config, 64, 2, 1, 7, "cpu", gen, share).v[:, 0], n.v[:, 2])


def test_per_element_seeds_give_each_element_its_batch_of_one_noise():
    config = tiny(struct_enabled=True)
    gen = noise_generator("cpu")
    batch = frames_noise(config, 3, 4, 2, [7, 8, 7], "cpu", gen, 0.5)
    for b, seed in enumerate([7, 8, 7]):
        alone = frames_noise(config, 1, 4, 2, seed, "cpu", gen, 0.5)
        for field in ("v", "s", "ctx_v", "ctx_s"):
            assert torch.equal(getattr(batch, field)[b], getattr(alone, field)[0])
    assert not torch.equal(batch.v[0], batch.v[1])
    with pytest.raises(ValueError, match="2 seeds for a batch of 3"):
        frames_noise(config, 3, 0, 1, [1, 2], "cpu", gen)
