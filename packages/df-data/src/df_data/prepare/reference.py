"""The reference photo cut as training clips are (``dualforce generate --ref``): the face that
the detector finds, one LivePortrait-style box (``crop``: scale 2.3, shifted -0.125 along the
eye-to-mouth axis, no rotation), so the reference frames the face as the clips' frames do."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from df_data.prepare.crop import CropBox, average_crop_box, crop_frame
from df_data.prepare.faces import Face, RetinaFaceDetector

logger = logging.getLogger(__name__)


def crop_reference(
    image_HW3: np.ndarray,
    *,
    scale: float = 2.3,
    vy: float = -0.125,
    detector: Callable[[np.ndarray], list[Face]] | None = None,
) -> tuple[np.ndarray, CropBox]:
    """The square face crop of a uint8 RGB photo ``[H, W, 3]`` at its own resolution (black
    where the box leaves the photo) and the box. No face: ValueError; several: the largest,
    with a warning."""
    image = np.ascontiguousarray(image_HW3)
    faces = (detector or RetinaFaceDetector())(image)
    if not faces:
        raise ValueError(
            "no face found in the reference image; use a photo with a visible face (or "
            "--no-face-crop to use the whole image, centre-cropped)"
        )
    if len(faces) > 1:
        logger.warning(
            "the reference image holds %d faces; using the largest (%.0f px; the next is %.0f px)",
            len(faces),
            faces[0].size,
            faces[1].size,
        )
    face = faces[0]
    box = average_crop_box(
        np.asarray(face.box, np.float64)[None], face.points[None], scale=scale, vy=vy
    )
    return crop_frame(image, box, max(2, round(box.side))), box
