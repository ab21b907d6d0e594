"""``dualforce bench stream`` runs end to end on a tiny preset on the CPU and reports every
figure BENCHMARKS.md quotes (the H100 numbers come from the same code)."""

from __future__ import annotations

import json

from df_infer.bench_stream import main


def test_bench_stream_tiny_cpu(tmp_path, capsys):
    out = tmp_path / "stream.json"
    argv = ["--preset", "tiny", "--device", "cpu", "--dtype", "fp32", "--frames", "14"]
    assert main([*argv, "--steps", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["frames"] == 14
    assert result["fps"] > 0 and result["first_frame_ms"] > 0
    # A per-frame codec: latent frames are video frames; pixels are frames x H x W.
    assert result["frames_per_latent"] == 1 and result["latent_frames"] == 14
    assert abs(result["latent_fps"] - result["fps"]) < 1e-9
    H, W = result["image_size"]
    assert abs(result["megapixels_per_s"] - result["fps"] * H * W / 1e6) < 1e-9
    assert result["gflop_per_frame"] > 0 and result["mfu"] > 0
    assert result["per_frame_ms_p50"] > 0 and result["cache_mib"] > 0
    assert result["compiled_graphs"] == 0  # --compile none
    assert result["warmup_s"] > 0
    assert result["modulation_cache"] and result["key_only_clean"] and not result["fp8"]
    assert not result["decode_stream"] and "with_decode_stream" not in result
    parts = result["first_frame_parts_ms"]
    assert parts["encode_reference"] > 0 and parts["prefill"] > 0
    assert "| tiny | 2 | 1 |" in capsys.readouterr().out


def test_bench_stream_levers_off_and_fp8_off_a_capable_gpu(tmp_path, capsys):
    out = tmp_path / "stream.json"
    argv = ["--preset", "tiny", "--device", "cpu", "--dtype", "fp32", "--frames", "14"]
    levers = ["--no-modulation-cache", "--full-clean-pass"]
    assert main([*argv, "--steps", "2", *levers, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert not result["modulation_cache"] and not result["key_only_clean"]
    # The decode stream overlaps GPU work: off CUDA a clear error, not a mislabelled figure.
    for mode in ("on", "both"):
        assert main([*argv, "--decode-stream", mode]) == 2
        err = capsys.readouterr().err
        assert f"--decode-stream {mode} needs a CUDA device" in err
    # FP8 needs a CUDA device of compute capability 8.9+: a clear error, not a traceback.
    assert main([*argv, "--fp8"]) == 2
    assert "FP8" in capsys.readouterr().err


def test_bench_stream_guided_times_the_prefill_of_the_doubled_batch(tmp_path):
    out = tmp_path / "stream.json"
    argv = ["--preset", "tiny", "--device", "cpu", "--dtype", "fp32", "--frames", "14"]
    assert main([*argv, "--steps", "2", "--cfg", "2.0", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["first_frame_parts_ms"]["prefill"] > 0


def test_bench_stream_fused_clean_pass(tmp_path):
    out = tmp_path / "stream.json"
    argv = ["--preset", "tiny", "--device", "cpu", "--dtype", "fp32", "--frames", "16"]
    assert main([*argv, "--steps", "2", "--fuse-clean", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["frames"] == 16 and result["fuse_clean"] is True


def test_bench_stream_temporal_codec(tmp_path):
    """4 video frames per latent frame: 62 frames are 17 latent frames (the last group partly
    past the end)."""
    out = tmp_path / "stream.json"
    argv = ["--preset", "tiny", "--device", "cpu", "--dtype", "fp32", "--frames", "62"]
    assert main([*argv, "--steps", "2", "--frames-per-latent", "4", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["frames"] == 62 and r["frames_per_latent"] == 4 and r["latent_frames"] == 17
    assert abs(r["latent_fps"] - r["fps"] * 17 / 62) < 1e-9
    assert r["per_frame_ms_p50"] > 0 and r["gflop_per_frame"] > 0
