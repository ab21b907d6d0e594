"""CSIM: cosine similarity of ArcFace embeddings (insightface ``arcface_torch``'s iresnet100)
of 5-point-aligned 112x112 face crops, generated frame against the reference.

- ``IResNet``: ``recognition/arcface_torch/backbones/iresnet.py`` layer for layer; its
  published ``backbone.pth`` (e.g. ``ms1mv3_arcface_r100_fp16``) is a bare state dict with
  keys ``conv1.weight, bn1.*, prelu.weight, layer1.0.bn1.*, ..., fc.weight [512, 25088],
  features.*`` and loads strictly. The fp16 flavour differs only in running under autocast.
- Alignment: insightface ``face_align.norm_crop``: the similarity transform (Umeyama least
  squares, as ``skimage.transform.SimilarityTransform.estimate``) from the five landmarks
  (left eye, right eye, nose, left and right mouth corner, in image coordinates) to
  ``ARCFACE_TEMPLATE``, then ``cv2.warpAffine`` to 112x112 (bilinear, black border).
- Input: RGB, ``(x / 255 - 0.5) / 0.5``; output 512-d. Models are licensed for
  non-commercial research only (insightface).

Legend: N faces, T frames, H W pixels, D embedding (512).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from df_eval.real.batching import batched_features
from df_eval.real.weights import load_state_dict_strict, load_torch_state_dict

ALIGNED_SIZE = 112
# insightface face_align.arcface_dst: left eye, right eye, nose tip, left / right mouth corner.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)
IRESNET100_LAYERS = (3, 13, 30, 3)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """insightface's IResNet (``IBasicBlock``; ``layers=(3, 13, 30, 3)`` is iresnet100):
    aligned faces ``[B, 3, 112, 112]`` in [-1, 1] -> embeddings ``[B, 512]``."""

    fc_scale = 7 * 7

    def __init__(self, layers: tuple[int, ...] = IRESNET100_LAYERS, num_features: int = 512):
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"IResNet.layers must be 4 positive block counts, got {layers}")
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        self.eval()

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-05),
        )
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @classmethod
    def from_file(cls, path: str | Path, layers: tuple[int, ...] = IRESNET100_LAYERS) -> IResNet:
        """Loads an arcface_torch ``backbone.pth`` strictly (``torch.load(weights_only=True)``)."""
        model = cls(layers)
        load_state_dict_strict(model, load_torch_state_dict(path), str(path))
        return model.eval()

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x_B3HW)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def similarity_transform(src_P2: np.ndarray, dst_P2: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, translation) mapping ``src``
    points ``[P, 2]`` onto ``dst`` (Umeyama 1991, eq. 40-42), as a ``[2, 3]`` affine matrix."""
    src, dst = np.asarray(src_P2, np.float64), np.asarray(dst_P2, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(
            f"similarity_transform needs [P, 2] twice (P >= 2), got {src.shape}, {dst.shape}"
        )
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    U, S, Vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        sign[1, 1] = -1
    R = U @ sign @ Vt
    var_s = (s**2).sum() / len(src)
    if var_s == 0:
        raise ValueError("similarity_transform: the source points coincide")
    scale = np.trace(np.diag(S) @ sign) / var_s
    t = mu_d - scale * R @ mu_s
    return np.concatenate([scale * R, t[:, None]], axis=1)


def align_face(
    frame_HWC: np.ndarray, points_52: np.ndarray, size: int = ALIGNED_SIZE
) -> np.ndarray:
    """insightface ``norm_crop``: the face warped so its five landmarks ``[5, 2]`` (x, y) fall
    on ``ARCFACE_TEMPLATE`` (scaled by ``size / 112``); uint8 ``[size, size, 3]``."""
    import cv2

    pts = np.asarray(points_52, np.float64)
    if pts.shape != (5, 2) or not np.isfinite(pts).all():
        raise ValueError(f"align_face needs five finite (x, y) landmarks [5, 2], got {pts.shape}")
    M = similarity_transform(pts, ARCFACE_TEMPLATE * (size / ALIGNED_SIZE))
    return cv2.warpAffine(np.asarray(frame_HWC), M, (size, size), borderValue=0.0)


@torch.no_grad()
def face_embeddings(
    model: nn.Module,
    aligned_NHWC: np.ndarray,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Embeddings ``[N, D]`` (float64) of aligned RGB uint8 faces ``[N, 112, 112, 3]``."""
    faces = np.asarray(aligned_NHWC)
    if faces.ndim != 4 or faces.shape[1:] != (ALIGNED_SIZE, ALIGNED_SIZE, 3):
        raise ValueError(f"aligned faces must be [N, 112, 112, 3], got {faces.shape}")

    def embed(chunk: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(chunk).to(device)
        return model((x.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5)

    return batched_features(faces, batch_size, embed, name="face_embeddings")


def cosine_similarity(a_ND: np.ndarray, b_D: np.ndarray) -> np.ndarray:
    """Cosine similarity ``[N]`` of each row of ``a`` with ``b`` (CSIM per frame)."""
    a, b = np.asarray(a_ND, np.float64), np.asarray(b_D, np.float64)
    if a.ndim != 2 or b.shape != a.shape[1:]:
        raise ValueError(f"cosine_similarity needs [N, D] and [D], got {a.shape} and {b.shape}")
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b)
    if (den == 0).any():
        raise ValueError("cosine_similarity: a zero embedding has no direction")
    return (a @ b) / den
