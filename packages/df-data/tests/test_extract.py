"""Extraction into the clip store (tiny sources, tiny random codecs) and store inspection."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from df_data import extract as extract_module
from df_data import inspect_store as inspect_module
from df_data.extract import extract_store
from df_data.features import LogMelEncoder, features_for_frames
from df_data.inspect_store import format_report, inspect_store
from df_data.media import read_video, read_wav, write_video, write_wav
from df_data.record import group_mouth_boxes
from df_data.sources import SourceError, read_source
from df_data.store import (
    CLIPS_DIR,
    MANIFEST_NAME,
    clip_dir,
    finished_clip_ids,
    load_failures,
    load_manifest,
    read_clip,
)
from df_models.codecs import TinyAutoencoder, codec_identity, load_codec, tiny_autoencoder_debug
from df_models.testing import tiny_wan_vae

STRUCT_NAMES = ["yaw", "pitch", "roll"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: intra-op threads only add contention on a busy runner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_source(
    root: Path,
    name: str,
    *,
    frames: int = 10,
    size: int = 32,
    split: str = "train",
    fps: int = 25,
    metadata_fps: int | None = None,
    audio_extra_s: float = 0.0,
    nan_struct: bool = False,
    seed: int = 0,
) -> Path:
    """A source clip directory like SynthTalk's: video.mp4, audio.wav, gt.safetensors, metadata."""
    rng = np.random.default_rng(seed)
    directory = root / name
    directory.mkdir(parents=True)
    base = rng.integers(0, 256, (1, size, size, 3))
    video = np.clip(base + rng.integers(-20, 21, (frames, size, size, 3)), 0, 255).astype(np.uint8)
    write_video(directory / "video.mp4", video, fps=fps)
    n = round((frames / fps + audio_extra_s) * 16000)
    t = np.arange(n) / 16000
    write_wav(
        directory / "audio.wav", 0.2 * np.sin(2 * np.pi * 200 * t) + 0.01 * rng.standard_normal(n)
    )
    struct = rng.standard_normal((frames, len(STRUCT_NAMES))).astype(np.float32)
    if nan_struct:
        struct[frames // 2, 1] = np.nan
    gt = {"struct": torch.from_numpy(struct), "identity": torch.randn(6)}
    save_file(gt, directory / "gt.safetensors")
    meta = {
        "fps": metadata_fps if metadata_fps is not None else fps,
        "frames": frames,
        "sample_rate": 16000,
        "struct_names": STRUCT_NAMES,
        "split": split,
        "identity_seed": seed,
    }
    (directory / "metadata.json").write_text(json.dumps(meta))
    return directory


def save_tiny_codec(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    codec = TinyAutoencoder(tiny_autoencoder_debug())
    codec.init_weights()
    codec.set_normalization([0.1, -0.1, 0.2, 0.0], [1.5, 0.5, 2.0, 1.0])
    codec.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory) -> Path:
    return save_tiny_codec(tmp_path_factory.mktemp("codec") / "tiny")


@pytest.fixture(scope="module")
def good_sources(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    make_source(src, "a", frames=12, seed=1)
    make_source(src / "nested" / "deeper", "b", frames=7, seed=2)
    make_source(src, "c", frames=10, split="test", seed=3)
    make_source(src / ".tmp-generator", "partial", seed=4)  # a generator's temp dir: ignored
    return src


def snapshot(store: Path) -> dict[str, int]:
    return {
        str(p.relative_to(store)): p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()
    }


def test_extract_three_clips_then_rerun_skips(good_sources, codec_dir, tmp_path):
    out = tmp_path / "store"
    summary = extract_store(good_sources, out, codec=codec_dir, progress=False, batch_frames=4)
    assert summary["sources"] == 3 and summary["written"] == 3 and summary["failed"] == 0
    assert summary["latent_frames_written"] == 12 + 7 + 10
    assert finished_clip_ids(out) == {"train-a", "train-b", "test-c"}
    assert not (out / "failures.jsonl").exists()

    codec = TinyAutoencoder.from_pretrained(codec_dir)
    encoder = LogMelEncoder()
    for clip_id, src in (
        ("train-a", good_sources / "a"),
        ("train-b", good_sources / "nested/deeper/b"),
        ("test-c", good_sources / "c"),
    ):
        record = read_clip(out, clip_id)
        frames, _ = read_video(src / "video.mp4")
        T = frames.shape[0]
        video = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float() / 127.5 - 1.0
        with torch.no_grad():
            expected = codec.encode(video)[0]
        assert record.latents.shape == (T, 4, 8, 8) and record.latents.dtype == torch.float16
        torch.testing.assert_close(record.latents.float(), expected, atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(record.ref_latent, record.latents[0])
        assert torch.equal(record.ref_image, torch.from_numpy(frames[0]).permute(2, 0, 1))
        torch.testing.assert_close(record.struct, load_file(src / "gt.safetensors")["struct"])
        audio = features_for_frames(encoder, read_wav(src / "audio.wav"), T)
        assert record.audio_features.shape == (2 * T, 80)
        torch.testing.assert_close(record.audio_features, audio.half())
        meta = record.metadata
        assert meta["frames"] == T and meta["latent_frames"] == T and meta["frames_per_latent"] == 1
        assert meta["audio_rate"] == 50 and meta["audio_feature_dim"] == 80
        assert meta["struct_names"] == STRUCT_NAMES
        assert meta["split"] == clip_id.split("-")[0]
        assert meta["codec"] == codec_identity(codec)
        assert meta["codec"]["name"] == "TinyAutoencoder"
        assert meta["audio_encoder"] == encoder.identity()
        assert meta["source"]["dir"] == str(src.resolve())
        for name, digest in meta["source"]["files"].items():
            assert digest == hashlib.sha256((src / name).read_bytes()).hexdigest()
        assert set(meta["source"]["files"]) == {
            "video.mp4",
            "audio.wav",
            "gt.safetensors",
            "metadata.json",
        }
        assert "identity_seed" in meta and meta["store_version"] == 1

    manifest = {e["clip_id"]: e for e in load_manifest(out)}
    assert manifest["train-b"] == {
        "clip_id": "train-b",
        "path": "clips/train-b",
        "split": "train",
        "latent_frames": 7,
        "frames": 7,
    }

    before, manifest_text = snapshot(out), (out / MANIFEST_NAME).read_text()
    again = extract_store(good_sources, out, codec=codec_dir, progress=False)
    assert again["written"] == 0 and again["skipped_finished"] == 3 and again["failed"] == 0
    assert snapshot(out) == before
    assert (out / MANIFEST_NAME).read_text() == manifest_text


def test_crash_leftovers_are_repaired_not_recomputed(good_sources, codec_dir, tmp_path):
    out = tmp_path / "store"
    extract_store(good_sources, out, codec=codec_dir, progress=False)
    # Crash between rename and manifest append for train-b; a crash mid-build left a temp dir.
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    (out / MANIFEST_NAME).write_text("".join(f"{x}\n" for x in lines if '"train-b"' not in x))
    probe = subprocess.Popen([sys.executable, "-c", "pass"])
    probe.wait()
    stale = out / CLIPS_DIR / f".tmp-test-c@{socket.gethostname()}@{probe.pid}"
    stale.mkdir()
    (stale / "video_latents.safetensors").write_bytes(b"half")
    before = {k: v for k, v in snapshot(out).items() if k.startswith("clips/train-")}

    summary = extract_store(good_sources, out, codec=codec_dir, progress=False)
    assert summary["relisted"] == 1 and summary["removed_tmp"] == 1
    assert summary["written"] == 0 and summary["skipped_finished"] == 3
    assert not stale.exists()
    assert {k: v for k, v in snapshot(out).items() if k.startswith("clips/train-")} == before
    assert finished_clip_ids(out) == {"train-a", "train-b", "test-c"}


@pytest.fixture(scope="module")
def bad_sources(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("bad")
    make_source(src, "ok", seed=10)
    corrupt = make_source(src, "corrupt_mp4", seed=11)
    (corrupt / "video.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    truncated = make_source(src, "truncated_mp4", frames=20, seed=12)
    data = (truncated / "video.mp4").read_bytes()
    (truncated / "video.mp4").write_bytes(data[: len(data) // 2])
    (make_source(src, "missing_wav", seed=13) / "audio.wav").unlink()
    make_source(src, "av_offset", audio_extra_s=0.1, seed=14)
    make_source(src, "nan_gt", nan_struct=True, seed=15)
    make_source(src, "fps30", fps=30, seed=16)
    make_source(src, "fps_lie", fps=30, metadata_fps=25, seed=17)
    frames_lie = make_source(src, "frames_lie", seed=18)
    meta = json.loads((frames_lie / "metadata.json").read_text())
    (frames_lie / "metadata.json").write_text(json.dumps({**meta, "frames": 11}))
    return src


EXPECTED_KINDS = {
    "corrupt_mp4": {"decode_video"},
    "truncated_mp4": {"decode_video", "frame_count"},  # depends on where the file was cut
    "missing_wav": {"missing_file"},
    "av_offset": {"av_duration"},
    "nan_gt": {"nan_gt"},
    "fps30": {"bad_fps"},
    "fps_lie": {"bad_fps"},
    "frames_lie": {"frame_count"},
}


def test_bad_inputs_are_recorded_and_the_run_goes_on(bad_sources, codec_dir, tmp_path):
    out = tmp_path / "store"
    summary = extract_store(bad_sources, out, codec=codec_dir, progress=False)
    assert summary["written"] == 1 and summary["failed"] == len(EXPECTED_KINDS)
    assert finished_clip_ids(out) == {"train-ok"}
    read_clip(out, "train-ok")
    failures = {Path(f["source"]).name: f for f in load_failures(out)}
    assert set(failures) == set(EXPECTED_KINDS)
    for name, failure in failures.items():
        assert failure["kind"] in EXPECTED_KINDS[name], (name, failure)
        assert failure["reason"] and failure["source"] == str((bad_sources / name).resolve())
    assert "audio.wav" in failures["missing_wav"]["reason"]
    assert "40 ms" in failures["av_offset"]["reason"]
    assert "fps is 30" in failures["fps30"]["reason"]
    assert "decodes at 30 fps" in failures["fps_lie"]["reason"]
    assert failures["nan_gt"]["clip_id"] == "train-nan_gt"
    assert not list((out / CLIPS_DIR).glob(".tmp-*"))

    # Failures that are properties of the data are not retried by default...
    again = extract_store(bad_sources, out, codec=codec_dir, progress=False)
    assert again["skipped_failed"] == len(EXPECTED_KINDS) and again["failed"] == 0
    assert again["skipped_finished"] == 1
    assert len(load_failures(out)) == len(EXPECTED_KINDS)
    # ...unless asked.
    retried = extract_store(bad_sources, out, codec=codec_dir, progress=False, retry_failed=True)
    assert retried["failed"] == len(EXPECTED_KINDS) and retried["written"] == 0

    report = inspect_store(out)
    assert report["ok"] and report["clips"] == 1
    assert report["failures"]["sources"] == len(EXPECTED_KINDS)
    assert sum(report["failures"]["kinds"].values()) == len(EXPECTED_KINDS)
    assert report["failures"]["lines"] == 2 * len(EXPECTED_KINDS)


def test_duplicate_clip_ids_fail_both(codec_dir, tmp_path):
    src = tmp_path / "src"
    make_source(src / "one", "x", seed=1)
    make_source(src / "two", "x", seed=2)
    make_source(src / "two", "y", seed=3)
    summary = extract_store(src, tmp_path / "store", codec=codec_dir, progress=False)
    assert summary["written"] == 1 and summary["failures"] == {"duplicate_clip_id": 2}


def test_hooks_frame_transform_and_vad(codec_dir, tmp_path):
    src = tmp_path / "src"
    make_source(src, "a", frames=8, seed=1)
    make_source(src, "quiet", frames=8, seed=2)

    def center_crop(video_BTCHW):
        return video_BTCHW[..., 8:24, 8:24]

    def vad(audio_N, frames):
        assert len(audio_N) == frames * 640
        return np.arange(frames) < (frames // 2 if len(audio_N) else 0)

    center_crop.name = "center_crop_16"
    out = tmp_path / "store"
    summary = extract_store(
        src,
        out,
        codec=codec_dir,
        progress=False,
        frame_transform=center_crop,
        vad=vad,
        min_speech_ratio=0.4,
    )
    assert summary["written"] == 2
    record = read_clip(out, "train-a")
    assert record.latents.shape == (8, 4, 4, 4) and record.ref_image.shape == (3, 16, 16)
    frames, _ = read_video(src / "a" / "video.mp4")
    assert torch.equal(record.ref_image, torch.from_numpy(frames[0, 8:24, 8:24]).permute(2, 0, 1))
    meta = record.metadata
    assert meta["frame_transform"] == "center_crop_16" and (meta["height"], meta["width"]) == (
        16,
        16,
    )
    assert meta["vad"] == {"name": "vad", "speech_ratio": 0.5, "segments": [[0, 4]]}

    out2 = tmp_path / "store2"
    strict = extract_store(
        src, out2, codec=codec_dir, progress=False, vad=vad, min_speech_ratio=0.9
    )
    assert strict["written"] == 0 and strict["failures"] == {"no_speech": 2}
    odd = extract_store(
        src,
        tmp_path / "store3",
        codec=codec_dir,
        progress=False,
        frame_transform=lambda v: v[..., :6, :6],
    )
    assert odd["failures"] == {"bad_size": 2}


def test_clip_written_meanwhile_by_another_process(good_sources, codec_dir, tmp_path, monkeypatch):
    out = tmp_path / "store"
    extract_store(good_sources, out, codec=codec_dir, progress=False)
    before = snapshot(out)
    # As if another process finished every clip after this run listed the store.
    monkeypatch.setattr(extract_module, "finished_clip_ids", lambda store: set())
    summary = extract_store(good_sources, out, codec=codec_dir, progress=False)
    assert summary["skipped_finished"] == 3 and summary["failed"] == 0
    assert snapshot(out) == before


def test_store_of_one_codec_only(good_sources, codec_dir, tmp_path):
    out = tmp_path / "store"
    extract_store(good_sources, out, codec=codec_dir, progress=False)
    other = TinyAutoencoder.from_pretrained(save_tiny_codec(tmp_path / "other", seed=1))
    with pytest.raises(ValueError, match="use a new output directory"):
        extract_store(good_sources, out, codec=other, progress=False)


def test_temporal_codec_groups_struct_and_trims_frames(tmp_path):
    pytest.importorskip("diffusers")
    vae = tiny_wan_vae([0.1, -0.2, 0.3, -0.4], [1.5, 2.0, 0.5, 3.0])
    vae.save_pretrained(tmp_path / "wan" / "vae")  # a pipeline layout
    src = tmp_path / "src"
    make_source(src, "a", frames=12, seed=1)
    summary = extract_store(src, tmp_path / "store", codec=tmp_path / "wan", progress=False)
    assert summary["written"] == 1, load_failures(tmp_path / "store")
    record = read_clip(tmp_path / "store", "train-a")
    assert record.latents.shape == (3, 4, 8, 8)  # 12 frames -> 9 = 1 + 2 * 4 -> 3 latent frames
    assert record.audio_features.shape == (18, 80)
    gt = load_file(src / "a" / "gt.safetensors")["struct"]
    torch.testing.assert_close(record.struct, gt[:9])  # every video frame's
    meta = record.metadata
    assert (meta["frames"], meta["source_frames"], meta["frames_per_latent"]) == (9, 12, 4)
    assert meta["codec"]["name"] == "diffusers.AutoencoderKLWan"
    codec = load_codec(tmp_path / "wan")
    frames, _ = read_video(src / "a" / "video.mp4")
    video = torch.from_numpy(frames[:9]).permute(0, 3, 1, 2)[None].float() / 127.5 - 1.0
    with torch.no_grad():
        torch.testing.assert_close(
            record.latents.float(), codec.encode(video)[0], atol=3e-3, rtol=3e-3
        )


def test_inspect_store_report(good_sources, bad_sources, codec_dir, tmp_path):
    out = tmp_path / "store"
    extract_store(good_sources, out, codec=codec_dir, progress=False)
    for name in ("corrupt_mp4", "nan_gt"):
        shutil.copytree(bad_sources / name, tmp_path / "more" / name)
    extract_store(tmp_path / "more", out, codec=codec_dir, progress=False)

    report = inspect_store(out)
    assert report["ok"], format_report(report)
    assert (report["clips"], report["clips_listed"], report["clips_on_disk"]) == (3, 3, 3)
    assert report["frames"] == report["latent_frames"] == 29
    assert report["hours"] == pytest.approx(29 / 25 / 3600)
    assert (
        report["per_split"]["train"]["clips"] == 2 and report["per_split"]["train"]["frames"] == 19
    )
    assert report["per_split"]["test"] == {
        "clips": 1,
        "latent_frames": 10,
        "frames": 10,
        "hours": pytest.approx(10 / 25 / 3600),
    }
    assert report["shapes"]["latents"] == {"4x8x8": 3}
    assert report["shapes"]["audio_features"] == {"80": 3}
    assert report["shapes"]["ref_image"] == {"3x32x32": 3}
    assert report["dtypes"]["latents"] == {"float16": 3} and report["dtypes"]["ref_image"] == {
        "uint8": 3
    }
    assert report["nonfinite"] == [] and report["misaligned"] == [] and report["invalid"] == {}
    assert report["failures"]["sources"] == 2
    assert report["failures"]["kinds"] == {"decode_video": 1, "nan_gt": 1}
    assert len(report["codecs"]) == 1
    text = format_report(report)
    assert "clips: 3" in text and "split test: 1 clips" in text and "failed sources: 2" in text
    json.dumps(report)  # serialisable
    headers = inspect_store(out, check_values=False)
    assert headers["shapes"] == report["shapes"] and headers["ok"]

    # Break things: NaN features, misaligned audio, a missing and an unlisted directory.
    path = clip_dir(out, "train-a") / "audio_features.safetensors"
    features = load_file(path)["features"]
    save_file({"features": features.index_fill(0, torch.tensor([0]), float("nan"))}, path)
    path = clip_dir(out, "train-b") / "audio_features.safetensors"
    save_file({"features": features[:5].contiguous()}, path)
    shutil.rmtree(clip_dir(out, "test-c"))
    shutil.copytree(clip_dir(out, "train-a"), out / CLIPS_DIR / "train-zz")
    report = inspect_store(out)
    assert not report["ok"]
    assert report["nonfinite"] == ["train-a"] and report["misaligned"] == ["train-b"]
    assert set(report["invalid"]) == {"train-a", "train-b"}
    assert "NaN" in report["invalid"]["train-a"] and "L=5" in report["invalid"]["train-b"]
    assert report["listed_missing"] == ["test-c"] and report["unlisted"] == ["train-zz"]
    assert "PROBLEMS FOUND" in format_report(report)


def test_command_lines(good_sources, codec_dir, tmp_path, capsys):
    out = tmp_path / "store"
    argv = [
        "--src",
        str(good_sources),
        "--out",
        str(out),
        "--codec",
        str(codec_dir),
        "--no-progress",
    ]
    assert extract_module.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 3
    assert inspect_module.main([str(out)]) == 0
    assert "clips: 3" in capsys.readouterr().out
    os.remove(clip_dir(out, "train-a") / "ref.safetensors")
    assert inspect_module.main([str(out), "--json"]) == 1
    assert "train-a" in json.loads(capsys.readouterr().out)["invalid"]


def test_bad_inputs_raise_a_clear_error_when_loaded_directly(bad_sources):
    """Outside extraction, reading a bad source raises, naming the source and the problem."""
    for name, kinds in EXPECTED_KINDS.items():
        with pytest.raises(SourceError) as info:
            read_source(bad_sources / name)
        assert info.value.kind in kinds, (name, info.value.kind)
        assert name in str(info.value), (name, str(info.value))
    read_source(bad_sources / "ok")


def test_mouth_boxes_are_carried_into_the_store(codec_dir, tmp_path):
    from df_data.store import read_store_info

    src = tmp_path / "src"
    directory = make_source(src, "boxed", frames=6, seed=5)
    gt = load_file(directory / "gt.safetensors")
    boxes = torch.tensor([[4.0 + t, 10.0, 20.0 + t, 18.0] for t in range(6)])
    save_file({**gt, "mouth_box": boxes}, directory / "gt.safetensors")
    make_source(src, "plain", frames=6, seed=6)
    summary = extract_store(src, tmp_path / "store", codec=codec_dir, progress=False)
    assert summary["written"] == 2, load_failures(tmp_path / "store")
    record = read_clip(tmp_path / "store", "train-boxed")
    assert torch.equal(record.mouth_box, boxes)
    assert record.metadata["mouth_box"] and (
        record.metadata["height"],
        record.metadata["width"],
    ) == (32, 32)
    assert read_clip(tmp_path / "store", "train-plain").mouth_box is None
    info = read_store_info(tmp_path / "store")
    assert info["codec_dir"] == str(codec_dir.resolve())
    assert info["codec"] == record.metadata["codec"]
    assert info["audio_encoder"] == record.metadata["audio_encoder"]
    assert inspect_store(tmp_path / "store")["clips_with_mouth_box"] == 1
    # A box per frame is required.
    save_file({**gt, "mouth_box": boxes[:5]}, directory / "gt.safetensors")
    with pytest.raises(SourceError, match="mouth_box must be float"):
        read_source(directory)


def test_mouth_boxes_group_as_the_union_per_latent_frame():
    box = torch.tensor([[float(t), 10.0 - t, 20.0 + t, 30.0 - t] for t in range(9)])
    got = group_mouth_boxes(box, 4)  # latent frames cover {0}, {1..4}, {5..8}
    expected = torch.tensor(
        [[0.0, 10.0, 20.0, 30.0], [1.0, 6.0, 24.0, 29.0], [5.0, 2.0, 28.0, 25.0]]
    )
    assert torch.equal(got, expected)
    assert torch.equal(group_mouth_boxes(box, 1), box)


def test_read_ahead_threads_write_the_same_store(good_sources, bad_sources, codec_dir, tmp_path):
    """Sources decoded ahead on several threads give the store (and failure records) a single
    reading thread gives, clip for clip."""
    stores = {}
    for workers in (1, 3):
        out = tmp_path / f"store{workers}"
        for src in (good_sources, bad_sources):
            extract_store(src, out, codec=codec_dir, progress=False, read_workers=workers)
        stores[workers] = out
    one, three = (read_manifest_ids(stores[w]) for w in (1, 3))
    assert one == three and len(one) >= 3
    for clip_id in one:
        a, b = read_clip(stores[1], clip_id), read_clip(stores[3], clip_id)
        assert torch.equal(a.latents, b.latents) and torch.equal(a.struct, b.struct)
        assert torch.equal(a.audio_features, b.audio_features)
    failures = [sorted(f["source"] for f in load_failures(stores[w])) for w in (1, 3)]
    assert failures[0] == failures[1] and failures[0]
    with pytest.raises(ValueError, match="read_workers"):
        extract_store(good_sources, tmp_path / "x", codec=codec_dir, read_workers=0)


def read_manifest_ids(store):
    return sorted(finished_clip_ids(store))


def test_unsynced_clips_make_the_same_store_and_sync_once(
    good_sources, codec_dir, tmp_path, monkeypatch
):
    """``sync_each_clip=False`` writes the store a synced run writes, clip for clip, with no
    clip or manifest fsync, and makes it durable with one ``os.sync()`` before it returns."""
    import types

    import df_data.extract as extract_mod
    import df_data.store.manifest as manifest_mod
    import df_data.store.writes as writes_mod

    calls = {"fsync": 0, "sync": 0}

    def count(name):
        def f(*args):
            calls[name] += 1

        return f

    # The clip writer's and the manifest's own fsyncs (not the store-level json files').
    for module in (writes_mod, manifest_mod):
        proxy = types.SimpleNamespace(
            **{k: getattr(os, k) for k in dir(os) if not k.startswith("__")}
        )
        proxy.fsync = count("fsync")
        monkeypatch.setattr(module, "os", proxy)
    monkeypatch.setattr(writes_mod, "fsync_path", count("fsync"))
    monkeypatch.setattr(extract_mod.os, "sync", count("sync"))
    synced = tmp_path / "synced"
    extract_store(good_sources, synced, codec=codec_dir, progress=False)
    assert calls["fsync"] >= 3 and calls["sync"] == 0  # the count sees the default's fsyncs
    calls.update(fsync=0, sync=0)
    unsynced = tmp_path / "unsynced"
    summary = extract_store(
        good_sources, unsynced, codec=codec_dir, progress=False, sync_each_clip=False
    )
    assert summary["written"] >= 3 and calls == {"fsync": 0, "sync": 1}
    ids = read_manifest_ids(synced)
    assert read_manifest_ids(unsynced) == ids
    for clip_id in ids:
        a, b = read_clip(synced, clip_id), read_clip(unsynced, clip_id)
        assert torch.equal(a.latents, b.latents) and torch.equal(a.struct, b.struct)
        assert torch.equal(a.audio_features, b.audio_features)
