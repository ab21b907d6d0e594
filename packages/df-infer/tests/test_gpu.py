"""GPU checks of the fast streaming path: the whole streaming forward compiled by inductor and
replayed as CUDA graphs (the KV cache written in place at static addresses) gives the eager
frames, and inductor does not skip the graphs."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from df_infer.sampler import SamplerConfig, sample_stream
from df_models import tiny
from df_models.testing import random_inputs, random_model

pytestmark = pytest.mark.gpu


class Windows:
    def __init__(self, audio_BTLaDa):
        self.a = audio_BTLaDa

    def ensure(self, t_end):
        return min(t_end, self.a.shape[1])

    def windows(self, t0, n):
        return self.a[:, t0 : t0 + n]


def _run(model, x, cfg):
    out = list(sample_stream(model, x["ref_latent_BCHW"], Windows(x["audio_BTLDa"]), cfg))
    return torch.cat([o.z for o in out], 1).float(), torch.cat([o.s for o in out], 1).float()


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_stream_is_as_accurate_as_eager_on_cuda(mode, fuse):
    """bf16 rollouts drift apart over frames whatever the kernels, so the compiled rollout is
    judged against the float32 eager one, as accurately as the bf16 eager rollout is."""
    # 256 video tokens per frame: the FlexAttention block-table path, as at base scale
    config = tiny(latent_height=32, latent_width=32, video_dim=64, video_heads=2, window=3)
    x = random_inputs(config, 1, 9, seed=1)
    x = {k: (v.cuda() if v is not None else None) for k, v in x.items()}
    # unfused: mask-free (cuDNN) passes once the window is full; fused: FlexAttention masks
    cfg = SamplerConfig(steps=3, shift=2.0, sigma_s_start=0.7, sigma_ctx=0.0, fuse_clean=fuse)
    model = random_model(config, seed=0).cuda()
    reference = _run(model, x, cfg)  # float32, eager
    model = model.to(torch.bfloat16)
    x["ref_latent_BCHW"] = x["ref_latent_BCHW"].to(torch.bfloat16)
    eager = _run(model, x, cfg)
    torch._dynamo.reset()
    counters.clear()
    model.forward_chunk = torch.compile(
        model.forward_chunk, mode=mode, dynamic=False, fullgraph=True
    )
    try:
        _run(model, x, cfg)  # compile (and record the graphs)
        compiled = _run(model, x, cfg)  # replay
    finally:
        del model.forward_chunk
        torch._dynamo.reset()
    if mode == "reduce-overhead":
        assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])
    for name, got, want, ref in zip(("video", "struct"), compiled, eager, reference, strict=True):
        e_eager, e_comp = _rel(want, ref), _rel(got, ref)
        assert e_comp < 1.5 * e_eager + 1e-3, (
            f"{name}: compiled bf16 is {e_comp:.3g} from float32, eager bf16 {e_eager:.3g}"
        )


def test_pipeline_decodes_in_bf16_and_hands_frames_out_in_order():
    """The compiled generator decodes under bf16 autocast on the GPU and copies frames to the
    host asynchronously, one chunk behind the queued passes: frames arrive in order, and match
    an eager float32 decode of the same latents to within bf16 rounding."""
    import numpy as np

    from df_infer.bench_stream import build
    from df_infer.sampler import SampledFrames

    gen = build("tiny", torch.device("cuda"), torch.bfloat16, "auto")
    eager_decode = gen.codec.decode
    torch._dynamo.reset()
    gen.compile("stream-graphs")  # the pass as CUDA graphs, the decoder compiled
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(640 * 12)).astype(np.float32)
    ref = rng.integers(0, 255, (*gen.meta.image_size, 3), dtype=np.uint8)
    frames = list(gen.frames(ref, audio, SamplerConfig(steps=2, shift=3.0)))
    assert [f.index for f in frames] == list(range(12))
    assert all(f.image.dtype == np.uint8 for f in frames)
    c = gen.model.config
    z = torch.randn(1, 3, c.latent_channels, c.latent_height, c.latent_width, device="cuda")
    got = np.stack(
        [f.image for f in gen._hand_out(gen._queue_decode(SampledFrames(0, z, None)), 0)]
    )
    with torch.no_grad():
        want = eager_decode(z)[0].permute(0, 2, 3, 1).add(1).mul(127.5).round().clamp(0, 255)
    diff = np.abs(got.astype(np.float32) - want.to(torch.uint8).cpu().numpy())
    torch._dynamo.reset()
    assert diff.mean() < 2.0, f"bf16 decode is {diff.mean():.2f} grey levels from float32"


def test_decoding_on_a_second_stream_gives_the_same_frames():
    """``decode_stream``: each chunk is decoded on a side stream beside the next chunk's
    CUDA-graph passes; it waits for exactly the passes that made the chunk, so the frames are
    bit-identical to decoding on the main stream, and still arrive in order."""
    import numpy as np

    from df_infer.bench_stream import build

    gen = build("tiny", torch.device("cuda"), torch.bfloat16, "auto")
    torch._dynamo.reset()
    gen.compile("stream-graphs")
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(640 * 16)).astype(np.float32)
    ref = rng.integers(0, 255, (*gen.meta.image_size, 3), dtype=np.uint8)
    cfg = SamplerConfig(steps=2, shift=3.0)
    runs = {}
    for side in (False, True, False):
        gen.decode_stream = side
        runs.setdefault(side, []).append(list(gen.frames(ref, audio, cfg)))
    torch._dynamo.reset()
    main, twice = runs[False]
    (side,) = runs[True]
    assert [f.index for f in side] == list(range(16))
    assert gen._side is not None  # the side stream was used
    for a, b, c in zip(main, side, twice, strict=True):
        np.testing.assert_array_equal(a.image, c.image)  # the main stream is deterministic
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.struct, b.struct)


def test_bench_times_the_stream_with_and_without_the_decode_stream(tmp_path):
    """``bench stream --decode-stream both``: the second timed stream, after the same
    compile, is reported beside the first."""
    import json

    from df_infer.bench_stream import main

    out = tmp_path / "stream.json"
    argv = ["--preset", "tiny", "--device", "cuda", "--frames", "14", "--steps", "2"]
    assert main([*argv, "--decode-stream", "both", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    side = result["with_decode_stream"]
    assert not result["decode_stream"] and result["frames"] == side["frames"] == 14
    assert side["fps"] > 0 and side["per_frame_ms_p50"] > 0
