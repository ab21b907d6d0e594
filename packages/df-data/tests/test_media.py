"""The mp4 writer: frame by frame, audio fitted or as given, atomic on failure."""

from __future__ import annotations

import numpy as np
import pytest

from df_data.media import MediaError, VideoWriter, probe_video, read_video, write_video


def _frames(n, h=16, w=24, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


def test_streamed_frames_and_fitted_audio(tmp_path):
    out = tmp_path / "a.mp4"
    ramp = np.linspace(0, 255, 24)[None, :, None] * np.ones((16, 1, 3))
    frames = np.stack([np.roll(ramp, t, axis=1) for t in range(10)]).astype(np.uint8)
    with VideoWriter(out, fps=25) as w:
        w.set_audio(np.zeros(16000 * 3, np.float32))  # 3 s of audio for 0.4 s of video: cut
        for f in frames:
            w.write(f)
    info = probe_video(out)
    assert (info.frames, info.width, info.height, info.fps) == (10, 24, 16, 25)
    assert info.has_audio
    got, _ = read_video(out)
    assert np.abs(got.astype(int) - frames.astype(int)).mean() < 8  # lossy, but these frames


def test_write_video_without_audio(tmp_path):
    out = write_video(tmp_path / "b.mp4", _frames(3))
    assert not probe_video(out).has_audio


def test_failure_keeps_the_previous_file(tmp_path):
    out = tmp_path / "c.mp4"
    write_video(out, _frames(2))
    before = out.read_bytes()
    with pytest.raises(MediaError, match="earlier frames"), VideoWriter(out) as w:
        w.write(_frames(1)[0])
        w.write(_frames(1, h=32)[0])
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.mp4"]  # no temporary left behind
    with pytest.raises(MediaError, match="no frames"), VideoWriter(tmp_path / "d.mp4"):
        pass
    assert not (tmp_path / "d.mp4").exists()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: VideoWriter(p.with_suffix(".avi")), r"\.mp4"),
        (lambda p: write_video(p, _frames(1, h=15)), "even height"),
        (lambda p: write_video(p, np.zeros((0, 4, 4, 3), np.uint8)), "at least one frame"),
        (lambda p: write_video(p, np.zeros((2, 4, 4), np.uint8)), r"uint8 \[T, H, W, 3\]"),
    ],
)
def test_bad_input_is_named(tmp_path, make, match):
    with pytest.raises(MediaError, match=match):
        make(tmp_path / "e.mp4")
    assert not (tmp_path / "e.mp4").exists()


def test_encoding_is_deterministic(tmp_path):
    """The same frames give the same file: a fixed seed must give a fixed corpus (this libx264
    build's B-frame and macroblock-tree paths did not)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    frames = [np.roll(np.kron(base, np.ones((4, 4, 1), np.uint8)), t, axis=1) for t in range(30)]
    digests = set()
    for i in range(6):
        with VideoWriter(tmp_path / f"v{i}.mp4", audio=False) as w:
            for f in frames:
                w.write(f)
        digests.add(read_video(tmp_path / f"v{i}.mp4")[0].tobytes())
    assert len(digests) == 1
