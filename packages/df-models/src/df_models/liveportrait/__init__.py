"""LivePortrait's motion extractor (ConvNeXt V2 tiny + pose/expression heads) with the
released checkpoint's state-dict keys, its loading, and the 70-number per-frame structure."""

from df_models.liveportrait.loading import load_motion_extractor, read_state_dict
from df_models.liveportrait.motion_extractor import (
    MotionExtractor,
    MotionExtractorConfig,
    headpose_to_degrees,
    motion_struct,
    struct_names,
)

__all__ = [
    "MotionExtractor",
    "MotionExtractorConfig",
    "headpose_to_degrees",
    "load_motion_extractor",
    "motion_struct",
    "read_state_dict",
    "struct_names",
]
