"""``LivePortraitExtractor``: LivePortrait's motion extractor on the prepared crops.

Legend: ``T`` frames, ``B`` a batch of frames, ``H W`` frame size.

Preprocessing as LivePortrait's (``live_portrait_wrapper.prepare_source``): the crop resized to
256x256 with ``cv2.INTER_AREA``, RGB float in [0, 1], no normalisation; the model runs under
fp16 autocast on CUDA (outputs cast back to float32), in batches of ``batch_size`` frames on
``device``. Per frame: pitch, yaw, roll in degrees, t (3), scale, exp (63): 70 numbers
(``df_models.liveportrait.struct_names``). The canonical keypoints ``kp`` (63) describe the
identity, not the motion: they are stored once per clip (``per_clip["kp"]``, the mean over the
clip's frames). Mouth boxes are not derived here (LivePortrait's implicit keypoints are not
image points): the prepared clip's RetinaFace mouth-corner boxes are used.

The structure has no known mirror (``research/real_media.md`` §6): the implicit keypoints'
left/right permutation is unknown, so flip augmentation is refused for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from df_core.checks import positive_int
from df_data.structure.base import StructResult
from df_models.codecs import weights_hash
from df_models.io import config_hash
from df_models.liveportrait import (
    MotionExtractorConfig,
    load_motion_extractor,
    motion_struct,
    struct_names,
)

INPUT_SIZE = 256


def preprocess(frames_THWC: np.ndarray) -> torch.Tensor:
    """uint8 RGB ``[T, H, W, 3]`` -> float32 ``[T, 3, 256, 256]`` in [0, 1] (module doc)."""
    frames = np.asarray(frames_THWC)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames_THWC must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}"
        )
    resized = np.stack(
        [
            f
            if f.shape[:2] == (INPUT_SIZE, INPUT_SIZE)
            else cv2.resize(f, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)
            for f in frames
        ]
    )
    return torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255.0


class LivePortraitExtractor:
    """A ``StructExtractor`` with LivePortrait's motion extractor (module doc).

    Args:
        weights: ``motion_extractor.pth`` (or ``.safetensors``) of the release.
        config: the architecture (LivePortrait's by default; tests use tiny ones).
        device: where the model runs.
        batch_size: frames per forward.
    """

    name = "liveportrait"
    mirror = None

    def __init__(
        self,
        weights: str | Path,
        *,
        config: MotionExtractorConfig | None = None,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
    ) -> None:
        self.weights = Path(weights)
        self.device = torch.device(device)
        self.batch_size = positive_int("batch_size", batch_size)
        self.model = load_motion_extractor(self.weights, config, device=self.device)
        self.names = struct_names(self.model.config.num_kp)

    def config(self) -> dict[str, Any]:
        c = self.model.config
        return {"depths": list(c.depths), "dims": list(c.dims), "num_kp": c.num_kp,
                "num_bins": c.num_bins, "input_size": INPUT_SIZE}  # fmt: skip

    def identity(self) -> dict[str, str]:
        return {
            "name": self.name,
            "config_hash": config_hash(self.config()),
            "weights_hash": weights_hash(self.model),
        }

    @torch.no_grad()
    def raw(self, frames_THWC: np.ndarray) -> dict[str, torch.Tensor]:
        """The model's raw outputs for every frame, float32 on the CPU, ``[T, ...]`` each."""
        x_T3HW = preprocess(frames_THWC)
        outs: list[dict[str, torch.Tensor]] = []
        autocast = self.device.type == "cuda"
        for x_B3HW in x_T3HW.split(self.batch_size):
            with torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
                y = self.model(x_B3HW.to(self.device, non_blocking=True))
            outs.append({k: v.float().cpu() for k, v in y.items()})
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}

    def __call__(self, frames_THWC: np.ndarray) -> StructResult:
        raw = self.raw(frames_THWC)
        kp = raw["kp"].mean(0)
        return StructResult(motion_struct(raw), None, {"kp": [float(v) for v in kp]})
