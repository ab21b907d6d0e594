"""Training windows: alignment (2 audio feature frames per video frame), determinism, resume,
reference choice and flips."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from df_data.dataset import ResumableSampler, WindowConfig, WindowDataset, collate_windows
from df_data.store import STORE_VERSION, ClipRecord, StoreError, write_clip_record

NAMES = ["yaw", "pitch", "roll", "tx", "ty", "scale", "jaw"]


def make_store(root, clips=3, frames=(12, 10, 5), Da=4, fpl=1):
    """``frames`` are latent frames; a clip has ``1 + fpl (T - 1)`` video frames (``T`` at 1)
    and 2 audio features per video frame, feature ``i`` of value ``i + 1``."""
    for i in range(clips):
        T = frames[i]
        video = T if fpl == 1 else 1 + fpl * (T - 1)
        # Encode the frame index into every tensor so alignment can be read back.
        t = torch.arange(T, dtype=torch.float32)
        latents = (t[:, None, None, None] + 100 * i).expand(T, 2, 2, 4).clone().to(torch.float16)
        latents[..., 0] = -1.0  # left column, to see flips
        tv = torch.arange(video, dtype=torch.float32)  # structure per video frame
        struct = tv[:, None].expand(video, len(NAMES)).clone() + 1.0
        feats = (
            (torch.arange(2 * video, dtype=torch.float32)[:, None] + 1)
            .expand(2 * video, Da)
            .to(torch.float16)
        )
        write_clip_record(
            root,
            ClipRecord(
                clip_id=f"train-clip_{i:05d}",
                latents=latents,
                struct=struct,
                audio_features=feats.clone(),
                ref_image=torch.zeros(3, 8, 16, dtype=torch.uint8),
                ref_latent=torch.full((2, 2, 4), -5.0, dtype=torch.float16),
                metadata={
                    "clip_id": f"train-clip_{i:05d}",
                    "split": "train",
                    "fps": 25,
                    "frames": video,
                    "latent_frames": T,
                    "frames_per_latent": fpl,
                    "audio_rate": 50,
                    "audio_feature_dim": Da,
                    "struct_names": NAMES,
                    "store_version": STORE_VERSION,
                    "codec": {"name": "test", "config_hash": "0"},
                    "audio_encoder": {"name": "test", "config_hash": "0"},
                    "source": {"dir": "none", "files": {}},
                },
            ),
        )
    return root


def test_windows_are_aligned(tmp_path):
    ds = WindowDataset(make_store(tmp_path), WindowConfig(frames=4, audio_context=1), seed=0)
    assert len(ds) == 3  # every clip has at least 4 latent frames
    for i in range(12):
        s = ds[i]
        start = s["start"]
        frame_ids = s["latents"][:, 0, 0, 1] % 100
        assert frame_ids.tolist() == list(range(start, start + 4))
        assert s["struct"][:, 0].tolist() == [float(start + k + 1) for k in range(4)]
        # Latent frame t owns feature frames 2t, 2t+1 (values 2t+1, 2t+2), +-1 frame of context.
        for k in range(4):
            t = start + k
            expected = [
                float(v + 1) if 0 <= v < 2 * 12 else 0.0 for v in range(2 * t - 2, 2 * t + 4)
            ]
            got = s["audio"][k, :, 0].tolist()
            # beyond this clip's feature count the window is zero-padded
            n_feats = 2 * (ds._clip(s["clip_id"]).latents.shape[0])
            expected = [v if 0 < v <= n_feats else 0.0 for v in expected]
            assert got == expected, (t, got, expected)
        assert s["audio"].shape == (4, 6, 4)


def test_windows_of_a_temporal_codec_read_each_groups_audio(tmp_path):
    """4 video frames per latent frame: latent frame t's window is the audio of video frames
    (t - 1) 4 + 1 .. 4 t (frame 0 alone for t = 0, the rest of its group silence), +-1 frame."""
    ds = WindowDataset(
        make_store(tmp_path, clips=1, frames=(4,), fpl=4), WindowConfig(frames=2, audio_context=1)
    )
    n_feats = 2 * 13
    for i in range(8):
        s = ds[i]
        assert s["audio"].shape == (2, 12, 4)
        for k in range(2):
            first = (s["start"] + k - 1) * 4 + 1 - 1  # the group's first frame, minus context
            expected = [
                float(v + 1) if 0 <= v < n_feats else 0.0 for v in range(2 * first, 2 * first + 12)
            ]
            assert s["audio"][k, :, 0].tolist() == expected, (s["start"] + k, expected)


def test_a_temporal_codecs_windows_carry_every_frames_structure(tmp_path):
    """4 video frames per latent frame: latent frame t's structure is its group's 4 frames'
    (frame 0 four times for t = 0, as the codec codes it), flattened to [4 * Ds]."""
    ds = WindowDataset(
        make_store(tmp_path, clips=1, frames=(4,), fpl=4),
        WindowConfig(frames=2, hflip_prob=0.0, normalize_struct=False),
    )
    for i in range(8):
        s = ds[i]
        assert s["struct"].shape == (2, 4 * len(NAMES))
        for k in range(2):
            t = s["start"] + k
            frames = [max((t - 1) * 4 + 1 + j, 0) for j in range(4)]  # the group's video frames
            got = s["struct"][k].reshape(4, len(NAMES))
            assert got[:, 0].tolist() == [f + 1.0 for f in frames], (t, got[:, 0])


def test_short_clips_are_skipped_and_too_long_windows_are_an_error(tmp_path):
    make_store(tmp_path)
    assert len(WindowDataset(tmp_path, WindowConfig(frames=6))) == 2
    with pytest.raises(StoreError, match="frames=20"):
        WindowDataset(tmp_path, WindowConfig(frames=20))
    with pytest.raises(StoreError, match="test"):
        WindowDataset(tmp_path, WindowConfig(frames=2, splits=("test",)))


def test_deterministic_and_resumable_with_workers(tmp_path):
    make_store(tmp_path)
    ds = WindowDataset(tmp_path, WindowConfig(frames=3, ref_other_prob=0.5, hflip_prob=0.5), seed=7)

    def run(start, n, workers):
        loader = DataLoader(
            ds,
            batch_size=2,
            sampler=ResumableSampler(n, start=start),
            num_workers=workers,
            collate_fn=collate_windows,
        )
        return [
            (c, s, r, f)
            for b in loader
            for c, s, r, f in zip(
                b["clip_id"], b["start"], b["ref_index"], b["flipped"], strict=True
            )
        ]

    full = run(0, 10, 0)
    assert full == run(0, 10, 2)
    assert full[:4] + run(4, 10, 0) == full  # resume after 4 samples
    other = WindowDataset(
        tmp_path, WindowConfig(frames=3, ref_other_prob=0.5, hflip_prob=0.5), seed=8
    )
    assert [other[i]["start"] for i in range(10)] != [ds[i]["start"] for i in range(10)]
    # Every epoch visits every clip once.
    epoch = {ds[i]["clip_id"] for i in range(len(ds))}
    assert len(epoch) == len(ds)


def test_reference_is_outside_the_window_and_flip_mirrors_structure(tmp_path):
    make_store(tmp_path)
    ds = WindowDataset(tmp_path, WindowConfig(frames=3, ref_other_prob=1.0, hflip_prob=1.0), seed=1)
    for i in range(10):
        s = ds[i]
        assert not s["start"] <= s["ref_index"] < s["start"] + 3
        assert s["flipped"]
        assert (s["latents"][..., -1] == -1.0).all()  # the marked left column is now on the right
        yaw = NAMES.index("yaw")
        pitch = NAMES.index("pitch")
        assert (s["struct"][:, yaw] < 0).all() and (s["struct"][:, pitch] > 0).all()
    # The cached clip is not modified by the flip.
    assert (ds._clip(ds[0]["clip_id"]).struct > 0).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        ResumableSampler(4, rank=2, world_size=2)


def _add_boxes(root, clip_id, width=16, height=8):
    """Rewrites a clip of ``make_store`` with mouth boxes whose x0 encodes the frame index."""
    from df_data.store import read_clip

    record = read_clip(root, clip_id)
    T = record.latents.shape[0]
    t = torch.arange(T, dtype=torch.float32)
    box = torch.stack([t * 0.5, torch.full((T,), 2.0), t * 0.5 + 4.0, torch.full((T,), 5.0)], 1)
    record.metadata.update(height=height, width=width)
    record.mouth_box = box
    write_clip_record(root, record, manifest=False, overwrite=True)
    return box


def test_mouth_boxes_follow_the_window_and_mirror_on_flip(tmp_path):
    make_store(tmp_path)
    _add_boxes(tmp_path, "train-clip_00000")
    plain = WindowDataset(tmp_path, WindowConfig(frames=3), seed=2)
    flipped = WindowDataset(tmp_path, WindowConfig(frames=3, hflip_prob=1.0), seed=2)
    seen = set()
    for i in range(9):
        s, f = plain[i], flipped[i]
        seen.add(s["clip_id"])
        if s["clip_id"] != "train-clip_00000":
            assert not s["has_mouth_box"] and (s["mouth_box"] == 0).all()
            continue
        assert s["has_mouth_box"] and s["image_size"] == (8, 16)
        t = torch.arange(s["start"], s["start"] + 3, dtype=torch.float32)
        assert s["mouth_box"][:, 0].tolist() == (t * 0.5).tolist()
        # x0' = W - x1, x1' = W - x0; y unchanged.
        assert f["mouth_box"][:, 0].tolist() == (16 - (t * 0.5 + 4)).tolist()
        assert f["mouth_box"][:, 2].tolist() == (16 - t * 0.5).tolist()
        assert torch.equal(f["mouth_box"][:, [1, 3]], s["mouth_box"][:, [1, 3]])
    assert len(seen) == 3
    batch = collate_windows([plain[i] for i in range(3)])
    assert batch["has_mouth_box"].dtype == torch.bool and batch["mouth_box"].shape == (3, 3, 4)
    assert batch["has_mouth_box"].sum() == 1


def test_struct_normalisation_uses_train_statistics_after_the_flip(tmp_path):
    from df_data.store import STRUCT_STATS_NAME, compute_struct_stats, struct_stats

    make_store(tmp_path)
    raw = WindowDataset(tmp_path, WindowConfig(frames=4), seed=0)
    ds = WindowDataset(tmp_path, WindowConfig(frames=4, normalize_struct=True), seed=0)
    stats = ds.struct_stats
    assert (tmp_path / STRUCT_STATS_NAME).is_file()
    # make_store: struct = frame index + 1 in every dim, clips of 12, 10 and 5 frames.
    values = torch.cat([torch.arange(T, dtype=torch.float64) + 1 for T in (12, 10, 5)])
    assert stats.frames == 27 and stats.clips == 3
    torch.testing.assert_close(
        torch.tensor(stats.mean, dtype=torch.float64), values.mean().expand(7)
    )
    torch.testing.assert_close(
        torch.tensor(stats.std, dtype=torch.float64), values.std(unbiased=False).expand(7)
    )
    for i in range(6):
        mean, std = torch.tensor(stats.mean).float(), torch.tensor(stats.std).float()
        assert torch.equal(ds[i]["struct"], (raw[i]["struct"] - mean) / std)
    # The flip negates the raw yaw, then normalises: not the same as negating the normalised.
    flip = WindowDataset(
        tmp_path, WindowConfig(frames=4, normalize_struct=True, hflip_prob=1.0), seed=0
    )
    yaw = NAMES.index("yaw")
    s = flip[0]["struct"][:, yaw]
    expected = (-raw[0]["struct"][:, yaw] - stats.mean[yaw]) / stats.std[yaw]
    torch.testing.assert_close(s, expected)
    # Cached on disk: reloaded, not recomputed, until the train clips change.
    assert struct_stats(tmp_path) == stats
    make_store(tmp_path / "more", clips=1, frames=(7,))
    extra = tmp_path / "more" / "clips" / "train-clip_00000"
    import shutil

    from df_data.store import ClipRecord, read_clip

    rec = read_clip(tmp_path / "more", "train-clip_00000")
    write_clip_record(
        tmp_path,
        ClipRecord(
            **{
                **rec.__dict__,
                "clip_id": "train-extra",
                "metadata": {**rec.metadata, "clip_id": "train-extra"},
            }
        ),
    )
    shutil.rmtree(extra)
    fresh = struct_stats(tmp_path)
    assert fresh.clips == 4 and fresh != stats
    assert fresh == compute_struct_stats(tmp_path)


def test_struct_stats_errors(tmp_path):
    from df_data.store import STRUCT_STATS_NAME, compute_struct_stats, struct_stats

    with pytest.raises(StoreError, match="no clips"):
        compute_struct_stats(tmp_path)
    make_store(tmp_path)
    (tmp_path / STRUCT_STATS_NAME).write_text("{not json")
    assert struct_stats(tmp_path).clips == 3  # an unreadable file is recomputed
