"""What a structure extractor returns, and the identity a store records of it.

Legend: ``T`` frames, ``Ds`` structure dimension.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StructResult:
    """A clip's extracted structure.

    Attributes:
        struct: float32 ``[T, Ds]``, one row per frame.
        mouth_box: float32 ``[T, 4]`` pixel boxes ``(x0, y0, x1, y1)`` in the frames, or None
            (the source's own boxes are used then, e.g. the prepared clip's RetinaFace ones).
        per_clip: named per-clip quantities (lists of floats), stored in the clip's metadata
            (``struct_per_clip``), e.g. LivePortrait's canonical keypoints ``kp``.
    """

    struct: torch.Tensor
    mouth_box: torch.Tensor | None = None
    per_clip: dict[str, list[float]] = field(default_factory=dict)


def extractor_identity(extractor: object) -> dict[str, str]:
    """``extractor.identity()`` when it has one, else ``{"name": extractor.name}``."""
    identity = getattr(extractor, "identity", None)
    if callable(identity):
        return dict(identity())
    return {"name": str(extractor.name)}
