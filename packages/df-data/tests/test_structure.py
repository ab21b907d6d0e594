"""Structure extractors: the face mesh on a real face (pose signs under rotation, flip and a
3-D turn), mouth boxes, LivePortrait's extractor on tiny weights, mirror rules in the metadata
and the dataset's refusal to flip a structure without one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from df_data.dataset import WindowConfig, WindowDataset
from df_data.prepare.faces import RetinaFaceDetector
from df_data.store import STORE_VERSION, ClipRecord, read_clip, write_clip_record
from df_data.structure import (
    LEGACY_MIRROR,
    StructMirror,
    build_struct_extractor,
    metadata_mirror,
    mirror_from_json,
    mirror_to_json,
)
from df_data.structure.liveportrait import LivePortraitExtractor, preprocess
from df_data.structure.mesh import FaceMeshExtractor
from df_data.structure.mesh_geometry import MESH_MIRROR, MESH_STRUCT_NAMES
from df_models.liveportrait import MotionExtractor, MotionExtractorConfig

skimage_data = pytest.importorskip("skimage.data")
cv2 = pytest.importorskip("cv2")

IDX = {n: i for i, n in enumerate(MESH_STRUCT_NAMES)}


@pytest.fixture(scope="module")
def face():
    """The astronaut photo cut to her head and shoulders (smaller, so warps are fast)."""
    return np.ascontiguousarray(skimage_data.astronaut()[0:300, 80:380])


@pytest.fixture(scope="module")
def mesh():
    return FaceMeshExtractor()


def _pose(mesh, image):
    struct = mesh(image[None]).struct[0]
    return {n: float(struct[IDX[n]]) for n in ("yaw", "pitch", "roll")}


def _rotate(image, degrees):  # counter-clockwise about the face
    centre = (145.0, 117.0)
    rot = cv2.getRotationMatrix2D(centre, degrees, 1.0)
    return cv2.warpAffine(image, rot, image.shape[1::-1])


def _turn(mesh, image, degrees):
    """The face turned about the vertical axis by ``degrees`` (nose to the image right for
    > 0): its mesh points rotated in 3-D and the photo warped piecewise-affinely onto them."""
    from skimage.transform import PiecewiseAffineTransform, warp

    p = mesh.points(image[None])[0].astype(np.float64)
    c = p[[33, 263, 2]].mean(0)
    t = np.radians(degrees)
    x = (p[:, 0] - c[0]) * np.cos(t) - (p[:, 2] - c[2]) * np.sin(t) + c[0]
    h, w = image.shape[:2]
    border = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1], [w / 2, 0], [0, h / 2]])
    keep = np.arange(0, len(p), 4)  # a coarser warp mesh: 117 points are plenty and fast
    dst = np.r_[np.c_[x, p[:, 1]][keep], border]
    src = np.r_[p[keep, :2], border]
    if hasattr(PiecewiseAffineTransform, "from_estimate"):  # skimage >= 0.26
        tf = PiecewiseAffineTransform.from_estimate(dst, src)
    else:
        tf = PiecewiseAffineTransform()
        assert tf.estimate(dst, src)
    return (warp(image, tf, output_shape=(h, w)) * 255).round().astype(np.uint8)


def test_mesh_pose_of_a_real_face(mesh, face):
    pose = _pose(mesh, face)
    assert all(abs(v) < 8.0 for v in pose.values()), pose  # a near-frontal photo
    for degrees in (15.0, -15.0):  # an image rotation is a roll of the same amount
        rolled = _pose(mesh, _rotate(face, degrees))
        assert rolled["roll"] - pose["roll"] == pytest.approx(degrees, abs=4.0)
        assert abs(rolled["yaw"] - pose["yaw"]) < 4.0
    mirrored = _pose(mesh, np.ascontiguousarray(face[:, ::-1]))
    assert np.sign(mirrored["roll"]) == -np.sign(pose["roll"]) and abs(pose["roll"]) > 1.5
    for degrees in (25.0, -25.0):
        turned = _turn(mesh, face, degrees)
        yaw = _pose(mesh, turned)["yaw"]
        assert np.sign(yaw) == np.sign(degrees) and abs(yaw) > 8.0, yaw
        assert np.sign(_pose(mesh, np.ascontiguousarray(turned[:, ::-1]))["yaw"]) == -np.sign(
            degrees
        )


def test_mesh_structure_mirror_and_mouth_box(mesh, face):
    result = mesh(np.stack([face, face]))  # the second frame is tracked from the first
    assert (
        result.struct.shape == (2, len(MESH_STRUCT_NAMES)) and result.struct.dtype == torch.float32
    )
    torch.testing.assert_close(result.struct[1], result.struct[0], atol=0.5, rtol=0.05)
    flipped = mesh(np.ascontiguousarray(face[None, :, ::-1])).struct
    want = MESH_MIRROR.apply(result.struct[:1], MESH_STRUCT_NAMES)
    # Approximately mirror-equivariant: the model itself is not exactly symmetric.
    for name in ("roll", "tx", "eye_open_left", "brow_left", "mouth_width"):
        assert float(flipped[0, IDX[name]]) == pytest.approx(float(want[0, IDX[name]]), abs=2.0)
    # The mesh's mouth box holds RetinaFace's mouth corners and lies below its nose.
    (detected,) = RetinaFaceDetector(det_size=320)(face)[:1]
    x0, y0, x1, y1 = result.mouth_box[0].tolist()
    for cx, cy in detected.points[3:]:
        assert x0 < cx < x1 and y0 < cy < y1
    assert y0 > detected.points[2][1] - 5 and 0 < x1 - x0 < face.shape[1] / 2


def test_mesh_refuses_a_frame_without_a_face(mesh):
    from df_data.sources import SourceError

    with pytest.raises(SourceError, match="no face found in frame 0") as e:
        mesh(np.zeros((1, 128, 128, 3), np.uint8))
    assert e.value.kind == "struct_no_face"
    with pytest.raises(ValueError, match=r"uint8 \[T, H, W, 3\]"):
        mesh(np.zeros((128, 128, 3), np.uint8))


# LivePortrait -----------------------------------------------------------------------------------

TINY_LP = MotionExtractorConfig(depths=(1, 1, 1, 1), dims=(8, 8, 8, 16))


def test_liveportrait_extractor_on_tiny_weights(tmp_path, face):
    torch.manual_seed(0)
    model = MotionExtractor(TINY_LP)
    model.init_weights()
    path = tmp_path / "motion_extractor.pth"
    torch.save(model.state_dict(), path)
    frames = np.stack([face, face[:, ::-1], _rotate(face, 10)])
    one = LivePortraitExtractor(path, config=TINY_LP, batch_size=1)
    many = build_struct_extractor("liveportrait", weights=str(path), config=TINY_LP)
    a, b = one(frames), many(frames)
    assert a.struct.shape == (3, 70) and len(a.per_clip["kp"]) == 63 and a.mouth_box is None
    torch.testing.assert_close(a.struct, b.struct, rtol=1e-5, atol=1e-5)  # batching
    x = preprocess(frames)
    assert x.shape == (3, 3, 256, 256) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    want = cv2.resize(face, (256, 256), interpolation=cv2.INTER_AREA)
    assert torch.equal(
        (x[0].permute(1, 2, 0) * 255).round().to(torch.uint8), torch.from_numpy(want)
    )
    assert many.mirror is None and many.identity()["weights_hash"]
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors")
    )
    c = LivePortraitExtractor(tmp_path / "m.safetensors", config=TINY_LP)(frames)
    torch.testing.assert_close(c.struct, a.struct, rtol=1e-5, atol=1e-5)


def test_build_struct_extractor_arguments():
    assert build_struct_extractor("gt") is None
    with pytest.raises(ValueError, match="--struct-weights"):
        build_struct_extractor("liveportrait")
    with pytest.raises(ValueError, match="unknown structure 'flame'"):
        build_struct_extractor("flame")
    with pytest.raises(ValueError, match="takes no weights"):
        build_struct_extractor("mesh", weights="x.pth")


# Mirror rules -----------------------------------------------------------------------------------


def test_mirror_rule_roundtrip_and_apply():
    assert mirror_from_json(mirror_to_json(MESH_MIRROR)) == MESH_MIRROR
    assert mirror_from_json(mirror_to_json(None)) is None
    rule = StructMirror(negate=("yaw",), swap=(("a", "b"),))
    s = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert rule.apply(s, ["yaw", "a", "b", "c"]).tolist() == [[-1.0, 3.0, 2.0, 4.0]]
    assert torch.equal(rule.apply(rule.apply(s, ["yaw", "a", "b", "c"]), ["yaw", "a", "b", "c"]), s)
    with pytest.raises(ValueError, match=r"names \['b'\], not in struct_names"):
        rule.apply(s[:, :2], ["yaw", "a"])
    with pytest.raises(ValueError, match="boolean 'known'"):
        mirror_from_json({"negate": []})
    with pytest.raises(ValueError, match="pairs of two names"):
        StructMirror(swap=(("a",),))
    assert metadata_mirror({}, "x") is LEGACY_MIRROR


def _store_with(root, mirror_json, names=("yaw", "roll", "tx", "eye_l", "eye_r")):
    """Two 6-frame clips whose structure is ``arange``, with the given ``struct_mirror``."""
    for i in range(2):
        cid = f"train-clip_{i:05d}"
        meta = {
            "clip_id": cid,
            "split": "train",
            "fps": 25,
            "frames": 6,
            "latent_frames": 6,
            "frames_per_latent": 1,
            "audio_rate": 50,
            "audio_feature_dim": 4,
            "struct_names": list(names),
            "store_version": STORE_VERSION,
            "codec": {"name": "test", "config_hash": "0"},
            "audio_encoder": {"name": "test", "config_hash": "0"},
            "source": {"dir": "none", "files": {}},
            "struct_mirror": mirror_json,
        }
        record = ClipRecord(
            cid,
            torch.zeros(6, 2, 2, 4, dtype=torch.float16),
            torch.arange(6 * len(names), dtype=torch.float32).reshape(6, -1),
            torch.zeros(12, 4, dtype=torch.float16),
            torch.zeros(3, 8, 16, dtype=torch.uint8),
            torch.zeros(2, 2, 4, dtype=torch.float16),
            meta,
        )
        write_clip_record(root, record)
    assert read_clip(root, "train-clip_00000").metadata["struct_mirror"] == mirror_json
    return root


def test_dataset_applies_the_stores_mirror_rule(tmp_path):
    rule = StructMirror(negate=("yaw", "tx"), swap=(("eye_l", "eye_r"),))
    store = _store_with(tmp_path, mirror_to_json(rule))
    plain = WindowDataset(store, WindowConfig(frames=3), seed=0)[0]
    flipped = WindowDataset(store, WindowConfig(frames=3, hflip_prob=1.0), seed=0)[0]
    assert flipped["flipped"]
    want = plain["struct"].clone()
    want[:, [0, 2]] *= -1
    want[:, [3, 4]] = plain["struct"][:, [4, 3]]
    assert torch.equal(flipped["struct"], want)


def test_dataset_refuses_flips_without_a_known_mirror(tmp_path):
    store = _store_with(tmp_path, mirror_to_json(None))
    WindowDataset(store, WindowConfig(frames=3))  # no flips: fine
    with pytest.raises(ValueError, match=r"no known mirror.*hflip_prob=0"):
        WindowDataset(store, WindowConfig(frames=3, hflip_prob=0.5))
