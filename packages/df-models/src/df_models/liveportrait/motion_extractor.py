"""LivePortrait's motion extractor M (``src/modules/motion_extractor.py``) as our module.

Legend: ``B`` batch (frames), ``K`` implicit keypoints (21), ``D`` backbone width (768),
``Nb`` pose bins (66).

``MotionExtractor`` holds one child, ``detector``: the ConvNeXt V2 backbone plus the linear
heads ``fc_kp`` (3K), ``fc_scale`` (1), ``fc_pitch`` / ``fc_yaw`` / ``fc_roll`` (Nb each),
``fc_t`` (3) and ``fc_exp`` (3K), so the state dict has the released checkpoint's keys
(``detector.downsample_layers.0.0.weight`` ... ``detector.fc_exp.bias``, 212 of them at full
size). Input: RGB ``[B, 3, 256, 256]`` in [0, 1], no mean/std normalisation.

Pose logits become degrees as LivePortrait's ``headpose_pred_to_degree``: the expectation of the
bin index under the softmax, times 3, minus 97.5 (range [-97.5, 97.5]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from df_core.checks import positive_int
from df_models.liveportrait.convnextv2 import ConvNeXtV2

BIN_DEGREES = 3.0  # width of one pose bin
BIN_OFFSET_DEGREES = 97.5  # (66 - 1) * 3 / 2: degrees of bin 0 below the middle
HEADS = ("kp", "scale", "pitch", "yaw", "roll", "t", "exp")


@dataclass(frozen=True, kw_only=True, slots=True)
class MotionExtractorConfig:
    depths: tuple[int, ...] = (3, 3, 9, 3)  # ConvNeXt V2 blocks per stage (tiny)
    dims: tuple[int, ...] = (96, 192, 384, 768)  # widths per stage
    num_kp: int = 21  # implicit keypoints K (models.yaml)
    num_bins: int = 66  # pose bins per angle

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.dims) or not self.depths:
            raise ValueError(
                f"MotionExtractorConfig.depths {self.depths} and dims {self.dims} must be "
                "non-empty and of one length"
            )
        for name, values in (("depths", self.depths), ("dims", self.dims)):
            for v in values:
                positive_int(f"MotionExtractorConfig.{name}", v)
        positive_int("MotionExtractorConfig.num_kp", self.num_kp)
        positive_int("MotionExtractorConfig.num_bins", self.num_bins)


class Detector(ConvNeXtV2):
    """The backbone with LivePortrait's heads: ``forward(x_B3HW) -> dict`` of raw outputs
    ``kp [B, 3K]``, ``scale [B, 1]``, ``pitch/yaw/roll [B, Nb]`` logits, ``t [B, 3]``,
    ``exp [B, 3K]``."""

    def __init__(self, config: MotionExtractorConfig) -> None:
        super().__init__(config.depths, config.dims)
        d, k, nb = config.dims[-1], config.num_kp, config.num_bins
        self.fc_kp = nn.Linear(d, 3 * k)
        self.fc_scale = nn.Linear(d, 1)
        self.fc_pitch = nn.Linear(d, nb)
        self.fc_yaw = nn.Linear(d, nb)
        self.fc_roll = nn.Linear(d, nb)
        self.fc_t = nn.Linear(d, 3)
        self.fc_exp = nn.Linear(d, 3 * k)

    def forward(self, x_B3HW: torch.Tensor) -> dict[str, torch.Tensor]:
        f_BD = self.forward_features(x_B3HW)
        return {name: getattr(self, f"fc_{name}")(f_BD) for name in HEADS}


class MotionExtractor(nn.Module):
    """LivePortrait's M (module doc); build on the meta device and load real weights with
    ``df_models.liveportrait.load_motion_extractor``."""

    def __init__(self, config: MotionExtractorConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else MotionExtractorConfig()
        self.detector = Detector(self.config)

    def init_weights(self) -> None:
        """LivePortrait's init: truncated normal (std 0.02) linear and conv weights, zero biases;
        LayerNorms at (1, 0); GRN at (0, 0)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif hasattr(m, "gamma") and hasattr(m, "beta"):
                nn.init.zeros_(m.gamma)
                nn.init.zeros_(m.beta)
            elif hasattr(m, "weight") and hasattr(m, "bias") and m.weight.ndim == 1:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, image_B3HW: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw head outputs (``Detector.forward``) of RGB ``image_B3HW`` in [0, 1]."""
        return self.detector(image_B3HW)


def headpose_to_degrees(logits_BNb: torch.Tensor) -> torch.Tensor:
    """Degrees ``[B]`` from pose-bin logits ``[B, Nb]``: ``sum(softmax * arange(Nb)) * 3 -
    (Nb - 1) * 3 / 2`` (LivePortrait's ``headpose_pred_to_degree``; 97.5 for Nb = 66)."""
    if logits_BNb.ndim != 2:
        raise ValueError(f"logits_BNb must be [B, Nb], got {tuple(logits_BNb.shape)}")
    nb = logits_BNb.shape[1]
    bins = torch.arange(nb, device=logits_BNb.device, dtype=torch.float32)
    expectation = (logits_BNb.float().softmax(dim=1) * bins).sum(dim=1)
    return expectation * BIN_DEGREES - (nb - 1) * BIN_DEGREES / 2


def struct_names(num_kp: int = 21) -> tuple[str, ...]:
    """Names of ``motion_struct``'s dims: ``pitch, yaw, roll`` (degrees), ``tx, ty, tz``,
    ``scale``, then ``exp_00_x, exp_00_y, exp_00_z, ...`` (keypoint-major, as ``exp`` reshapes
    to ``[K, 3]``): 70 for K = 21."""
    exp = tuple(f"exp_{k:02d}_{axis}" for k in range(num_kp) for axis in "xyz")
    return ("pitch", "yaw", "roll", "tx", "ty", "tz", "scale", *exp)


def motion_struct(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The per-frame structure ``[B, 7 + 3K]`` float32 (``struct_names`` order) of the raw
    outputs ``MotionExtractor.forward`` returns: pose in degrees, ``t``, ``scale``, ``exp``."""
    angles = [headpose_to_degrees(outputs[name])[:, None] for name in ("pitch", "yaw", "roll")]
    rest = [outputs[name].float() for name in ("t", "scale", "exp")]
    return torch.cat([*angles, *rest], dim=1)
