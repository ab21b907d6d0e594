"""``dualforce data prepare``'s parts on tiny generated media: 25 fps by timestamps, audio on the
video clock, rotation, the detector on a real photo, tracking, the crop, splitting, filters,
manifests and the configuration's checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data

from df_data.prepare.config import PrepareConfig
from df_data.prepare.crop import CropBox, average_crop_box, crop_frame, mouth_boxes, to_crop
from df_data.prepare.decode import PrepareError, iter_frames, probe, read_audio
from df_data.prepare.faces import Face, RetinaFaceDetector
from df_data.prepare.inputs import read_inputs, read_manifest
from df_data.prepare.segments import Piece, failures, measure, split
from df_data.prepare.testing import encode
from df_data.prepare.track import SpeakerTracker, Track


def grey_frames(n: int, size: int = 32) -> list[np.ndarray]:
    """Frame i is uniformly coloured (red and green levels 16..240 in steps of 16 encode i), so
    a decoded frame names its source index."""
    assert n <= 225
    return [
        np.full((size, size, 3), [16 * (1 + i % 15), 16 * (1 + i // 15), 128], np.uint8)
        for i in range(n)
    ]


def source_index(frame: np.ndarray) -> int:
    r, g = (round(float(frame[..., c].mean()) / 16) - 1 for c in (0, 1))
    return r + 15 * g


# Decoding ---------------------------------------------------------------------------------------


def test_variable_frame_rate_maps_to_25_fps_by_timestamps(tmp_path):
    rng = np.random.default_rng(0)
    gaps = rng.uniform(0.01, 0.08, 30)
    pts = np.round(np.concatenate([[0.0], np.cumsum(gaps)[:-1]]), 3)
    path = encode(tmp_path / "vfr.mp4", grey_frames(30), pts_s=list(pts))
    got = [source_index(f) for f in iter_frames(path)]
    # Output frame k shows the source frame on screen at k/25 + 20 ms; the last one stays on
    # screen for one nominal frame (the stream's average rate).
    last_end = pts[-1] + 1.0 / probe(path).fps
    expected, k = [], 0
    while k / 25 + 0.02 < last_end:
        expected.append(int(np.searchsorted(pts, k / 25 + 0.02 + 1e-9, side="right") - 1))
        k += 1
    assert got == expected
    assert len(set(got)) < 30  # some source frames were dropped, others repeated


@pytest.mark.parametrize("fps", [30, 50, 24])
def test_constant_rates_give_exactly_25_frames_per_second(tmp_path, fps):
    path = encode(tmp_path / f"c{fps}.mp4", grey_frames(2 * fps), fps=fps)
    got = [source_index(f) for f in iter_frames(path)]
    assert len(got) == 50
    assert got == [int(np.floor((k / 25 + 0.02) * fps + 1e-9)) for k in range(50)]


def test_audio_sits_on_the_video_clock_to_the_sample(tmp_path):
    audio = np.zeros(5 * 16000, np.float32)
    onset = 3 * 16000 + 123
    audio[onset : onset + 800] = 0.5
    path = encode(tmp_path / "a.mp4", grey_frames(125), fps=25, audio_N=audio)
    whole = read_audio(path)
    assert int(np.argmax(np.abs(whole) > 0.25)) == onset
    # start beyond the seek margin: the file is sought, then samples are placed by timestamp
    cut = read_audio(path, start=2.4, end=4.0)
    assert int(np.argmax(np.abs(cut) > 0.25)) == onset - round(2.4 * 16000)
    assert cut.shape[0] == round(1.6 * 16000)
    frames = list(iter_frames(path, start=2.4, end=4.0))
    assert [source_index(f) for f in frames] == list(range(60, 100))


def test_rotation_metadata_is_applied(tmp_path):
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:8, :8] = 255  # a mark at the stored frame's top-left
    # A phone held upright records landscape frames with "rotate 90" (clockwise): the display
    # matrix rotates by -90 degrees (counter-clockwise convention).
    path = encode(tmp_path / "phone.mp4", [stored] * 3, fps=25, rotation=-90)
    info = probe(path)
    assert (info.width, info.height, info.rotation) == (32, 64, 270)
    frame = next(iter(iter_frames(path)))
    assert frame.shape == (64, 32, 3)
    upright = np.rot90(stored, -1)  # clockwise: the mark goes to the top-right
    assert np.abs(frame.astype(int) - upright).mean() < 8
    assert frame[:8, -8:].mean() > 200 and frame[:8, :8].mean() < 50


def test_unusable_files_are_named(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(PrepareError) as e:
        probe(empty)
    assert e.value.kind == "empty_file"
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(PrepareError) as e:
        probe(junk)
    assert e.value.kind == "unreadable"
    silent = encode(tmp_path / "silent.mp4", grey_frames(5), fps=25)
    with pytest.raises(PrepareError) as e:
        read_audio(silent)
    assert e.value.kind == "no_audio"
    assert e.value.record()["field"] == "audio_streams"


# Faces, tracking, crop ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector():
    return RetinaFaceDetector(det_size=512, threads=1)


def test_detector_finds_the_astronaut_in_floats(detector):
    photo = skimage.data.astronaut()
    faces = detector(photo)
    assert len(faces) == 1
    face = faces[0]
    x0, y0, x1, y1 = face.box
    assert 170 < x0 < 185 and 50 < y0 < 65 and 265 < x1 < 280 and 170 < y1 < 185
    eyes, mouth = face.points[:2], face.points[3:]
    assert eyes[0, 0] < eyes[1, 0] and (eyes[:, 1] < mouth[:, 1].min()).all()
    assert not np.allclose(face.points, face.points.round())  # not rounded to integers
    assert detector(np.zeros((240, 320, 3), np.uint8)) == []
    # the same face at a quarter of the size and shifted: the box follows
    small = np.zeros((512, 512, 3), np.uint8)
    small[200:328, 100:228] = photo[::4, ::4]
    (f,) = detector(small)
    assert f.box[0] == pytest.approx(100 + x0 / 4, abs=4) and f.box[1] == pytest.approx(
        200 + y0 / 4, abs=4
    )


def face_at(x: float, y: float, size: float = 100.0) -> Face:
    pts = np.array([[-0.2, -0.1], [0.2, -0.1], [0.0, 0.1], [-0.15, 0.25], [0.15, 0.25]])
    box = (x - size / 2, y - size / 2, x + size / 2, y + size / 2)
    return Face(box, pts * size + [x, y], 0.99)


def test_tracker_interpolates_short_gaps_and_breaks_on_long_ones():
    tracker = SpeakerTracker(iou_min=0.3, max_gap=2)
    seq = [[face_at(100, 100)], [], [face_at(110, 100)], [face_at(112, 100), face_at(300, 100, 80)]]
    seq += [[], [], [], [face_at(400, 300)], [face_at(402, 300)]]
    for k, faces in enumerate(seq):
        tracker.update(k, faces)
    first, second = tracker.finish()
    a = first.arrays()
    assert (first.start, first.end) == (0, 4)
    assert a["detected"].tolist() == [True, False, True, True]
    np.testing.assert_allclose(
        a["boxes"][1], (np.array(face_at(100, 100).box) + face_at(110, 100).box) / 2
    )
    assert a["other_ratio"].tolist() == [0.0, 0.0, 0.0, 0.8]
    assert (second.start, second.end) == (7, 9)


def test_crop_box_follows_liveportrait_convention_and_crops_those_pixels():
    boxes = np.array([face_at(200 + dx, 150).box for dx in (-3, 0, 3)])
    points = np.stack([face_at(200 + dx, 150).points for dx in (-3, 0, 3)])
    box = average_crop_box(boxes, points, scale=2.3, vy=-0.125)
    assert box.side == pytest.approx(230.0)
    centre = points.mean((0, 1)) + np.array([0.0, -0.125 * 230])  # eye-to-mouth axis is +y here
    assert box.x0 + box.side / 2 == pytest.approx(centre[0])
    assert box.y0 + box.side / 2 == pytest.approx(centre[1])
    assert CropBox(-50, 0, 100).outside_fraction(100, 100) == pytest.approx(0.5)
    frame = np.zeros((300, 400, 3), np.uint8)
    frame[140:143, 260:263] = 255  # a dot
    crop = crop_frame(frame, box, 128)
    assert crop.shape == (128, 128, 3)
    ys, xs = np.nonzero(crop[..., 0] > 60)
    dot = to_crop(np.array([[261.0, 141.0]]), box, 128)[0]
    assert abs(xs.mean() - dot[0]) < 1.0 and abs(ys.mean() - dot[1]) < 1.0
    mouth = mouth_boxes(points)
    assert (mouth[:, 0] < points[:, 3, 0]).all() and (mouth[:, 2] > points[:, 4, 0]).all()
    assert (mouth[:, 1] < points[:, 3, 1]).all() and (mouth[:, 3] > points[:, 3, 1]).all()


# Splitting and filters ---------------------------------------------------------------------------


def track_over(start: int, end: int, size: float = 300.0) -> Track:
    t = Track(start=start)
    for _ in range(start, end):
        f = face_at(640, 360, size)
        t.boxes.append(np.array(f.box))
        t.points.append(f.points)
        t.detected.append(True)
        t.other_ratio.append(0.0)
        t.sharpness.append(100.0)
    return t


def test_split_at_cuts_silences_and_max_length():
    cfg = PrepareConfig(
        min_seconds=1.0, max_seconds=4.4, min_silence_seconds=1.0, silence_pad_seconds=0.2
    )
    speech = np.ones(500, bool)
    speech[200:240] = False  # 1.6 s of silence
    speech[300:310] = False  # 0.4 s: too short to split
    cuts = np.zeros(500, bool)
    cuts[100] = True
    tracks = [track_over(0, 350), track_over(380, 500)]
    pieces = split(tracks, cuts, speech, cfg)
    spans = [(p.start, p.end, p.track) for p in pieces]
    # the cut at 100; the silence 200..240 less 5 frames (0.2 s) each side; 235..350 (115
    # frames) and the second track (120) are longer than 110 frames: halves
    assert spans == [
        (0, 100, 0),
        (100, 205, 0),
        (205, 235, 0),
        (235, 292, 0),
        (292, 350, 0),
        (380, 440, 1),
        (440, 500, 1),
    ]


def test_filters_name_the_first_failure_and_record_all_values():
    cfg = PrepareConfig()
    track = track_over(0, 100, size=200.0)
    track.detected[10:40] = [False] * 30
    speech = np.zeros(100, bool)
    values, _ = measure(Piece(0, 100, 0), track, speech, 720, 1280, cfg)
    assert values["seconds"] == 4.0 and values["lost_fraction"] == 0.3
    assert values["face_px"] == 200.0 and values["speech_ratio"] == 0.0
    reasons = [f.kind for f in failures(values, cfg)]
    assert reasons == ["face_lost", "face_too_small", "low_speech"]
    first = failures(values, cfg)[0].record()
    assert first == {
        "reason": "face_lost",
        "field": "lost_fraction",
        "value": 0.3,
        "expected": "<= 0.2",
        "message": first["message"],
    }
    good = dict(values, lost_fraction=0.0, face_px=300.0, speech_ratio=0.9)
    assert failures(good, cfg) == []


# Inputs and configuration ------------------------------------------------------------------------


def test_manifests_and_folders(tmp_path):
    (tmp_path / "v").mkdir()
    for name in ("b.mp4", "a.MOV", "c.txt", ".hidden.mp4"):
        (tmp_path / "v" / name).write_bytes(b"x")
    assert [p.path.rsplit("/", 1)[1] for p in read_inputs(tmp_path / "v")] == ["a.MOV", "b.mp4"]
    csv = tmp_path / "m.csv"
    csv.write_text("path,start,end,split,speaker\nv/b.mp4,1.5,9,test,spk1\nv/a.MOV,,,,\n")
    a, b = read_manifest(csv)
    assert (a.path, a.start, a.end, a.split, a.speaker) == (
        str(tmp_path / "v/b.mp4"),
        1.5,
        9.0,
        "test",
        "spk1",
    )
    assert (b.start, b.end, b.split, b.speaker) == (0.0, None, "train", None)
    assert a.key() != b.key() and a.key() == read_manifest(csv)[0].key()
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"path": "v/b.mp4", "start": 2, "end": 1}) + "\n")
    with pytest.raises(ValueError, match=r"m.jsonl:1: end \(1.0\) must be after start"):
        read_manifest(jsonl)
    csv.write_text("path,split\nv/b.mp4,holdout\n")
    with pytest.raises(ValueError, match=r"m\.csv:2: split must be one of"):
        read_manifest(csv)


@pytest.mark.parametrize(
    "field, value",
    [("size", 63), ("size", 2048), ("size", 513), ("min_speech_ratio", 1.5), ("max_seconds", 3.0)],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"PrepareConfig.{field}"):
        PrepareConfig(**{field: value})


def test_reference_photo_is_cut_around_its_face(detector, caplog):
    from df_data.prepare.reference import crop_reference

    photo = skimage.data.astronaut()
    crop, box = crop_reference(photo, detector=detector)
    (face,) = detector(photo)
    assert crop.shape[0] == crop.shape[1] == round(box.side)
    assert box.side == pytest.approx(2.3 * max(95, 0.8 * 120), rel=0.05)  # not the whole photo
    x0, y0, x1, y1 = face.box
    assert box.x0 < x0 and box.x0 + box.side > x1 and box.y0 < y0 and box.y0 + box.side > y1
    (again,) = detector(crop)  # the face is in the crop, and central
    assert abs((again.box[0] + again.box[2]) / 2 - crop.shape[1] / 2) < 0.1 * crop.shape[1]
    with pytest.raises(ValueError, match="no face found in the reference image"):
        crop_reference(np.full((200, 300, 3), 90, np.uint8), detector=detector)
    two = np.zeros((512, 1024, 3), np.uint8)
    two[:, :512] = photo
    two[128:384, 640:896] = photo[::2, ::2]
    caplog.set_level("WARNING")
    _, box2 = crop_reference(two, detector=detector)
    assert "holds 2 faces; using the largest" in caplog.text
    assert box2.x0 + box2.side < 512  # the large face, on the left


def test_first_pass_scores_a_scene_cut_and_not_smooth_motion(tmp_path):
    from df_data.prepare.analysis import analyse
    from df_data.prepare.testing import background

    frames = [background(72, 128, t / 25, (40.0, 15.0)) for t in range(25)]
    frames += [np.full((72, 128, 3), (30, 200, 60), np.uint8)] * 25
    path = encode(tmp_path / "cut.mp4", frames, fps=25)

    def one_face(frame):
        return [face_at(64, 36, 30)]

    an = analyse(str(path), one_face, start=0.0, end=None, iou_min=0.3, max_gap=2)
    assert an.frames == 50 and (an.height, an.width) == (72, 128)
    assert len(an.tracks) == 1 and an.tracks[0].end == 50
    threshold = PrepareConfig().scene_cut_threshold
    assert np.flatnonzero(an.cut_score >= threshold).tolist() == [25]
    assert an.cut_score[1:25].max() < threshold / 3  # the moving background is no cut
