"""The clip store: round trip, atomic writes and crash recovery, validation errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from df_data.store import (
    CLIPS_DIR,
    LATENTS_FILE,
    MANIFEST_NAME,
    STORE_VERSION,
    ClipRecord,
    StoreError,
    append_failure,
    append_manifest,
    clip_dir,
    finished_clip_ids,
    load_failures,
    load_manifest,
    read_clip,
    repair_store,
    write_clip_record,
)


def make_record(
    clip_id: str = "train-a", frames: int = 5, fpl: int = 1, seed: int = 0
) -> ClipRecord:
    g = torch.Generator().manual_seed(seed)
    t_lat = frames if fpl == 1 else 1 + (frames - 1) // fpl
    meta = {
        "split": clip_id.split("-", 1)[0],
        "fps": 25.0,
        "frames": frames,
        "frames_per_latent": fpl,
        "audio_rate": 50,
        "struct_names": ["yaw", "pitch", "roll"],
        "codec": {"name": "TinyAutoencoder", "config_hash": "c0"},
        "audio_encoder": {"name": "logmel", "config_hash": "a0"},
        "source": {"dir": "/src/a", "files": {}},
        "identity_seed": 7,
    }
    return ClipRecord(
        clip_id=clip_id,
        latents=torch.randn(t_lat, 4, 2, 3, generator=g).half(),
        struct=torch.randn(frames, 3, generator=g),  # per video frame
        audio_features=torch.randn(2 * frames, 8, generator=g).half(),
        ref_image=torch.randint(0, 256, (3, 8, 12), generator=g, dtype=torch.uint8),
        ref_latent=torch.randn(4, 2, 3, generator=g).half(),
        metadata=meta,
    )


def test_round_trip(tmp_path):
    record = make_record()
    path = write_clip_record(tmp_path, record)
    assert path == tmp_path / CLIPS_DIR / "train-a"
    back = read_clip(tmp_path, "train-a")
    for name in ("latents", "struct", "audio_features", "ref_image", "ref_latent"):
        a, b = getattr(record, name), getattr(back, name)
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert back.metadata["clip_id"] == "train-a"
    assert back.metadata["latent_frames"] == 5
    assert back.metadata["audio_feature_dim"] == 8
    assert back.metadata["store_version"] == STORE_VERSION
    assert back.metadata["identity_seed"] == 7
    assert load_manifest(tmp_path) == [
        {
            "clip_id": "train-a",
            "path": "clips/train-a",
            "split": "train",
            "latent_frames": 5,
            "frames": 5,
        }
    ]
    assert finished_clip_ids(tmp_path) == {"train-a"}
    # The exact on-disk keys and dtypes the training loader reads.
    assert set(load_file(path / LATENTS_FILE)) == {"latents"}
    assert load_file(path / "ref.safetensors")["image"].dtype == torch.uint8


def test_round_trip_temporal_codec(tmp_path):
    record = make_record("test-b", frames=9, fpl=4)
    write_clip_record(tmp_path, record)
    back = read_clip(tmp_path, "test-b")
    assert back.latents.shape[0] == 3 and back.audio_features.shape[0] == 18


def test_existing_clip_needs_overwrite(tmp_path):
    write_clip_record(tmp_path, make_record(seed=0))
    with pytest.raises(StoreError, match="already exists"):
        write_clip_record(tmp_path, make_record(seed=1))
    write_clip_record(tmp_path, make_record(seed=1), overwrite=True)
    torch.testing.assert_close(read_clip(tmp_path, "train-a").latents, make_record(seed=1).latents)
    assert [p.name for p in (tmp_path / CLIPS_DIR).iterdir()] == ["train-a"]
    assert len(load_manifest(tmp_path)) == 1  # the re-listed clip appears once


def test_write_validates_before_touching_disk(tmp_path):
    record = make_record()
    record.audio_features = record.audio_features[:-1]
    with pytest.raises(StoreError, match=r"'train-a'.*L=9.*2 \* frames = 10"):
        write_clip_record(tmp_path, record)
    assert not (tmp_path / CLIPS_DIR).exists() or not any((tmp_path / CLIPS_DIR).iterdir())
    with pytest.raises(StoreError, match="safe directory name"):
        write_clip_record(tmp_path, make_record("../evil"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_crash_recovery(tmp_path):
    write_clip_record(tmp_path, make_record("train-a"))
    # A crash while building a clip: its temporary directory is left behind.
    stale = tmp_path / CLIPS_DIR / f".tmp-train-b@{socket.gethostname()}@{_dead_pid()}"
    stale.mkdir()
    (stale / LATENTS_FILE).write_bytes(b"partial")
    # A live writer's temporary directory (this process) must be left alone.
    live = tmp_path / CLIPS_DIR / f".tmp-train-d@{socket.gethostname()}@{os.getpid()}"
    live.mkdir()
    # A crash between the rename and the manifest append: complete directory, no manifest line.
    write_clip_record(tmp_path, make_record("train-c"), manifest=False)
    mtime = os.stat(clip_dir(tmp_path, "train-c") / LATENTS_FILE).st_mtime_ns
    assert finished_clip_ids(tmp_path) == {"train-a"}
    # A crash in the middle of a manifest line.
    with open(tmp_path / MANIFEST_NAME, "a") as f:
        f.write('{"clip_id": "train-x", "pa')

    report = repair_store(tmp_path)
    assert report == {
        "removed_tmp": [stale.name],
        "relisted": ["train-c"],
        "removed_incomplete": [],
    }
    assert not stale.exists() and live.exists()
    assert finished_clip_ids(tmp_path) == {"train-a", "train-c"}
    assert os.stat(clip_dir(tmp_path, "train-c") / LATENTS_FILE).st_mtime_ns == mtime
    assert [e["clip_id"] for e in load_manifest(tmp_path)] == ["train-a", "train-c"]
    assert repair_store(tmp_path) == {"removed_tmp": [], "relisted": [], "removed_incomplete": []}


def test_repair_removes_incomplete_directory(tmp_path):
    write_clip_record(tmp_path, make_record("train-a"), manifest=False)
    (clip_dir(tmp_path, "train-a") / LATENTS_FILE).unlink()
    assert repair_store(tmp_path)["removed_incomplete"] == ["train-a"]
    assert not clip_dir(tmp_path, "train-a").exists()


def test_manifest_lists_only_existing_directories(tmp_path):
    write_clip_record(tmp_path, make_record("train-a"))
    write_clip_record(tmp_path, make_record("train-b"))
    shutil.rmtree(clip_dir(tmp_path, "train-b"))
    assert finished_clip_ids(tmp_path) == {"train-a"}
    with pytest.raises(StoreError, match="lacks keys"):
        append_manifest(tmp_path, {"clip_id": "x"})


def test_failures_log(tmp_path):
    append_failure(tmp_path, "/src/x", "bad fps", kind="bad_fps", clip_id="train-x")
    append_failure(tmp_path, "/src/y", "oops")
    lines = (tmp_path / "failures.jsonl").read_text().splitlines()
    assert [json.loads(line)["source"] for line in lines] == ["/src/x", "/src/y"]
    failures = load_failures(tmp_path)
    assert failures[0]["kind"] == "bad_fps" and failures[1]["kind"] == "error"
    assert failures[0]["reason"] == "bad fps"


def _corrupt(tmp_path, file: str, key: str, fn) -> None:
    path = clip_dir(tmp_path, "train-a") / file
    tensors = load_file(path)
    tensors[key] = fn(tensors[key]).contiguous()
    save_file(tensors, path)


@pytest.mark.parametrize(
    ("file", "key", "fn", "match"),
    [
        (
            "audio_features.safetensors",
            "features",
            lambda x: x.index_fill(0, torch.tensor([3]), float("nan")),
            r"audio features has 8 NaN/inf values",
        ),
        (
            "audio_features.safetensors",
            "features",
            lambda x: x[:7],
            r"audio features have L=7 frames, expected 2 \* frames = 10",
        ),
        (
            "video_latents.safetensors",
            "latents",
            lambda x: x.float(),
            r"latents must be torch.float16",
        ),
        (
            "struct.safetensors",
            "struct",
            lambda x: x[:4],
            r"struct has 4 frames, the clip has 5 video frames",
        ),
        ("ref.safetensors", "latent", lambda x: x[:, :1], r"ref latent has shape \(4, 1, 3\)"),
        (
            "video_latents.safetensors",
            "latents",
            lambda x: x.clone().fill_(float("inf")),
            r"latents has 120 NaN/inf",
        ),
    ],
)
def test_read_clip_errors_name_clip_and_problem(tmp_path, file, key, fn, match):
    write_clip_record(tmp_path, make_record())
    _corrupt(tmp_path, file, key, fn)
    with pytest.raises(StoreError, match=r"clip 'train-a': " + match):
        read_clip(tmp_path, "train-a")


def test_read_clip_missing_and_broken_files(tmp_path):
    write_clip_record(tmp_path, make_record())
    directory = clip_dir(tmp_path, "train-a")
    (directory / "struct.safetensors").unlink()
    with pytest.raises(StoreError, match=r"clip 'train-a': missing file struct.safetensors"):
        read_clip(tmp_path, "train-a")
    (directory / "struct.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(StoreError, match=r"clip 'train-a': struct.safetensors is not a readable"):
        read_clip(tmp_path, "train-a")
    save_file({"other": torch.zeros(1)}, directory / "struct.safetensors")
    with pytest.raises(
        StoreError, match=r"clip 'train-a': struct.safetensors lacks tensors \['struct'\]"
    ):
        read_clip(tmp_path, "train-a")
    with pytest.raises(StoreError, match=r"clip 'train-zz': no clip directory"):
        read_clip(tmp_path, "train-zz")


def test_read_clip_metadata_errors(tmp_path):
    write_clip_record(tmp_path, make_record())
    path = clip_dir(tmp_path, "train-a") / "metadata.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "frames": 6}))
    with pytest.raises(StoreError, match=r"clip 'train-a': 6 video frames .* do not give 5"):
        read_clip(tmp_path, "train-a")
    path.write_text(json.dumps({**meta, "store_version": STORE_VERSION + 1}))
    with pytest.raises(StoreError, match=r"clip 'train-a': store_version 2 is newer"):
        read_clip(tmp_path, "train-a")
    del meta["codec"]
    path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"clip 'train-a': metadata lacks keys \['codec'\]"):
        read_clip(tmp_path, "train-a")
    path.write_text("{")
    with pytest.raises(StoreError, match=r"clip 'train-a': metadata.json is not valid JSON"):
        read_clip(tmp_path, "train-a")


def test_mouth_box_round_trip_and_validation(tmp_path):
    from df_data.store import MOUTH_BOX_FILE

    rec = make_record("train-box", frames=3)
    rec.metadata.update(height=32, width=32)
    rec.mouth_box = torch.tensor([[1.0, 2.0, 10.0, 12.0]] * 3)
    write_clip_record(tmp_path, rec)
    assert (clip_dir(tmp_path, "train-box") / MOUTH_BOX_FILE).is_file()
    assert torch.equal(read_clip(tmp_path, "train-box").mouth_box, rec.mouth_box)
    assert read_clip(tmp_path, "train-box").metadata["width"] == 32
    bad = [
        (torch.tensor([[1.0, 2.0, 10.0, 12.0]] * 2), r"\[3, 4\]"),
        (torch.tensor([[10.0, 2.0, 1.0, 12.0]] * 3), "x0 <= x1"),
        (torch.tensor([[1.0, 2.0, 40.0, 12.0]] * 3), "outside the 32x32 frame"),
    ]
    for box, match in bad:
        rec.mouth_box = box
        with pytest.raises(StoreError, match=match):
            write_clip_record(tmp_path / "bad", rec)
