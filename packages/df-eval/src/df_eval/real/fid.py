"""FID with pytorch-fid's InceptionV3 (mseitzer/pytorch-fid 0.3.0 ``inception.py``).

The network is torchvision's ``Inception3(num_classes=1008, aux_logits=False)`` with the
Mixed_5b..7c blocks replaced by the FID variants, which reproduce two quirks of the 2015
TensorFlow graph the FID statistics of the literature come from: the average pools exclude the
zero padding (``count_include_pad=False``), and the last block pools with a max instead of an
average. Its weights file ``pt_inception-2015-12-05-6726825d.pth`` is a state dict with
torchvision's ``Inception3`` key names, so the module built here loads it strictly.

Input: RGB in [0, 1], resized bilinearly to 299x299 (``align_corners=False``), mapped to
[-1, 1]; output: the 2048-d pool3 features (``dims=2048``, the default block of pytorch-fid).

Legend: B batch, N images, H W pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.inception import Inception3, InceptionA, InceptionC, InceptionE

from df_eval.metrics import frechet_distance
from df_eval.real.batching import batched_features
from df_eval.real.weights import load_state_dict_strict, load_torch_state_dict

FID_SIZE = 299  # pytorch-fid resizes every image to the 2015 graph's input size
FID_DIMS = 2048


class FIDInceptionA(InceptionA):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        # TensorFlow's average pool ignores the padded zeros.
        pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, self.branch_pool(pool)], 1)


class FIDInceptionC(InceptionC):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b = self.branch7x7dbl_1(x)
        b = self.branch7x7dbl_3(self.branch7x7dbl_2(b))
        branch7x7dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(b))
        pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, self.branch_pool(pool)], 1)


class FIDInceptionE1(InceptionE):
    """Mixed_7b: the average pool excludes padding."""

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pool = self.branch_pool(self._pool(x))
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, pool], 1)


class FIDInceptionE2(FIDInceptionE1):
    """Mixed_7c: the 2015 graph max-pools here (a bug in it that FID inherited)."""

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def fid_inception_v3() -> Inception3:
    """pytorch-fid's ``fid_inception_v3()`` with random weights (no download)."""
    net = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE1(1280)
    net.Mixed_7c = FIDInceptionE2(2048)
    return net


class FIDInceptionFeatures(nn.Module):
    """pytorch-fid's ``InceptionV3([3], resize_input=True, normalize_input=True)``: images
    ``[B, 3, H, W]`` in [0, 1] -> pool3 features ``[B, 2048]``."""

    def __init__(self, inception: Inception3 | None = None):
        super().__init__()
        self.inception = fid_inception_v3() if inception is None else inception
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path) -> FIDInceptionFeatures:
        """Loads ``pt_inception-2015-12-05-6726825d.pth`` strictly."""
        model = cls()
        load_state_dict_strict(model.inception, load_torch_state_dict(path), str(path))
        return model.eval()

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        n = self.inception
        x = F.interpolate(x_BCHW, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = n.maxpool1(n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x))))
        x = n.maxpool2(n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x)))
        for block in (n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c):
            x = block(x)
        for block in (n.Mixed_6d, n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def frames_to_unit(frames_NHWC: np.ndarray) -> torch.Tensor:
    """uint8 RGB ``[N, H, W, 3]`` -> float ``[N, 3, H, W]`` in [0, 1] (torchvision's
    ``ToTensor``, as pytorch-fid reads images)."""
    frames = np.asarray(frames_NHWC)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def image_features(
    model: nn.Module,
    frames_NHWC: np.ndarray,
    *,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Features ``[N, F]`` (float64) of uint8 RGB frames ``[N, H, W, 3]`` through any model
    taking ``[B, 3, H, W]`` in [0, 1] (``FIDInceptionFeatures``), in batches."""
    frames = np.asarray(frames_NHWC)
    return batched_features(
        frames,
        batch_size,
        lambda chunk: model(frames_to_unit(chunk).to(device)),
        name="image_features",
    )


def fid(features_a_NF: np.ndarray, features_b_MF: np.ndarray) -> float:
    """FID between two sets of Inception features (the Fréchet distance of their Gaussians)."""
    return frechet_distance(features_a_NF, features_b_MF)
