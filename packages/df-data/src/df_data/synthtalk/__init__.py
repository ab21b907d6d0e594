"""SynthTalk: a procedurally generated talking-head corpus with exact ground truth.

Heads are 3-D meshes rendered under a known pose and expression (``structure``), speaking
formant-synthesised (or espeak-ng) speech whose phonemes drive the mouth with a fixed lag
(``DEFAULT_AV_LAG_FRAMES``: mouth frame t follows the audio at time t - lag).
"""

from df_data.synthtalk.espeak import espeak_available
from df_data.synthtalk.face3d import LANDMARK_NAMES
from df_data.synthtalk.generate import (
    SynthClip,
    generate_corpus,
    is_complete,
    synthesize_clip,
    write_clip,
)
from df_data.synthtalk.identity import (
    IDENTITY_DIM,
    Identity,
    identity_seed,
    identity_split,
    sample_identity,
)
from df_data.synthtalk.motion import DEFAULT_AV_LAG_FRAMES
from df_data.synthtalk.render import CAMERA, Camera, mouth_box, project_landmarks, render_frame
from df_data.synthtalk.structure import (
    STRUCT_DIM,
    STRUCT_NAMES,
    STRUCT_UNITS,
    make_struct,
    rest_struct,
)

__all__ = [
    "CAMERA",
    "DEFAULT_AV_LAG_FRAMES",
    "IDENTITY_DIM",
    "LANDMARK_NAMES",
    "STRUCT_DIM",
    "STRUCT_NAMES",
    "STRUCT_UNITS",
    "Camera",
    "Identity",
    "SynthClip",
    "espeak_available",
    "generate_corpus",
    "identity_seed",
    "identity_split",
    "is_complete",
    "make_struct",
    "mouth_box",
    "project_landmarks",
    "render_frame",
    "rest_struct",
    "sample_identity",
    "synthesize_clip",
    "write_clip",
]
