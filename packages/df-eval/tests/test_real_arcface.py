"""ArcFace: the iresnet100 key layout, strict reload of a small IResNet in the published
format, the 5-point similarity alignment recovering the template, CSIM of a face with itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from df_eval.real import arcface as A
from df_eval.real.weights import WEIGHTS, WeightsMismatchError, weights_path

# RetinaFace's five points on skimage's astronaut (research/real_media.md).
ASTRONAUT_POINTS = np.array([[204, 100], [247, 103], [223, 129], [202, 138], [244, 140]], float)


def test_iresnet100_has_the_published_layout():
    with torch.device("meta"):
        net = A.IResNet()
    state = net.state_dict()
    assert sum(v.numel() for v in state.values()) == 65_225_946
    assert state["fc.weight"].shape == (512, 25088) and state["features.weight"].shape == (512,)
    assert "layer3.29.conv2.weight" in state and "layer3.30.conv1.weight" not in state
    assert state["layer1.0.downsample.0.weight"].shape == (64, 64, 1, 1)
    assert {"conv1.weight", "bn1.running_var", "prelu.weight", "layer1.0.prelu.weight"} <= set(
        state
    )


def test_small_iresnet_reloads_strictly_and_embeds(tmp_path):
    torch.manual_seed(0)
    net = A.IResNet(layers=(1, 1, 1, 1))
    path = tmp_path / WEIGHTS["arcface"].relpath
    path.parent.mkdir()
    torch.save(net.state_dict(), path)
    loaded = A.IResNet.from_file(weights_path(tmp_path, "arcface"), layers=(1, 1, 1, 1))
    faces = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    emb = A.face_embeddings(loaded, faces, batch_size=2)
    assert emb.shape == (3, 512)
    np.testing.assert_allclose(emb, A.face_embeddings(net, faces), rtol=1e-5, atol=1e-5)
    sims = A.cosine_similarity(emb, emb[0])
    assert sims[0] == pytest.approx(1.0) and (sims[1:] < 1 - 1e-6).all()
    with pytest.raises(WeightsMismatchError, match=r"missing keys \[.layer1\.1\."):
        A.IResNet.from_file(path)  # an iresnet100 needs more blocks than the file holds


def test_similarity_transform_recovers_the_template():
    rng = np.random.default_rng(0)
    for _ in range(5):
        angle, scale, shift = rng.uniform(-0.6, 0.6), rng.uniform(0.5, 3), rng.uniform(-50, 200, 2)
        R = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        src = A.ARCFACE_TEMPLATE @ R.T + shift  # the template seen in a frame
        M = A.similarity_transform(src, A.ARCFACE_TEMPLATE)
        back = src @ M[:, :2].T + M[:, 2]
        np.testing.assert_allclose(back, A.ARCFACE_TEMPLATE, atol=1e-9)
    # Noisy points: the same least-squares answer as skimage's SimilarityTransform (insightface).
    from skimage.transform import SimilarityTransform

    noisy = ASTRONAUT_POINTS + rng.normal(0, 2, (5, 2))
    ref = SimilarityTransform.from_estimate(noisy, A.ARCFACE_TEMPLATE)
    np.testing.assert_allclose(
        A.similarity_transform(noisy, A.ARCFACE_TEMPLATE), ref.params[:2], atol=1e-9
    )


def test_align_face_puts_the_landmarks_on_the_template():
    # Five bright dots where a rotated, scaled face has its landmarks.
    c, s_ = 1.5 * np.cos(0.3), 1.5 * np.sin(0.3)
    points = A.ARCFACE_TEMPLATE @ np.array([[c, s_], [-s_, c]]) + [60.0, 40.0]
    yy, xx = np.mgrid[:300, :300]
    frame = np.zeros((300, 300, 3), np.uint8)
    for x, y in points:  # anti-aliased discs of radius 3 centred on the landmarks
        frame[np.hypot(xx - x, yy - y) < 3] = 255
    aligned = A.align_face(frame, points)[..., 0].astype(float)
    assert aligned.shape == (112, 112)
    gy, gx = np.mgrid[:112, :112]
    for x, y in A.ARCFACE_TEMPLATE:
        near = np.hypot(gx - x, gy - y) < 5
        w = aligned * near
        centroid = np.array([(w * gx).sum(), (w * gy).sum()]) / w.sum()
        assert np.hypot(*(centroid - [x, y])) < 0.5
    assert aligned[5, 5].max() == 0
    with pytest.raises(ValueError, match="five"):
        A.align_face(frame, ASTRONAUT_POINTS[:4])


def test_csim_of_the_astronaut_with_itself_is_one():
    from skimage.data import astronaut

    torch.manual_seed(0)
    net = A.IResNet(layers=(1, 1, 1, 1))
    img = astronaut()
    faces = np.stack(
        [A.align_face(img, ASTRONAUT_POINTS), A.align_face(img[:, ::-1].copy(), ASTRONAUT_POINTS)]
    )
    emb = A.face_embeddings(net, faces)
    sims = A.cosine_similarity(emb, emb[0])
    assert sims[0] == pytest.approx(1.0, abs=1e-9) and sims[1] < 0.9999
