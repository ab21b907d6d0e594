"""Loading LivePortrait's released motion extractor weights into ``MotionExtractor``.

The release (HF ``KwaiVGI/LivePortrait``, ``liveportrait/base_models/motion_extractor.pth``)
is a bare state dict that ``torch.load`` reads; it is loaded with ``weights_only=True`` (no
pickled code runs). The safetensors mirror (``Kijai/LivePortrait_safetensors``,
``motion_extractor.safetensors``) has the same keys. Loading is strict: a missing or unexpected
key, or a shape that differs from the configuration's, is a ValueError naming the file and the
keys. Weights are cast to float32 (LivePortrait runs M under fp16 autocast, not in fp16).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from df_models.liveportrait.motion_extractor import MotionExtractor, MotionExtractorConfig
from df_models.pretrained import check_state_dict

SUFFIXES = (".pth", ".pt", ".safetensors")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth`` (bare state dict, ``weights_only``) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"motion extractor weights {str(path)!r}: no such file")
    if path.suffix not in SUFFIXES:
        raise ValueError(f"motion extractor weights {path}: expected one of {SUFFIXES}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path}: not a torch state dict loadable with weights_only ({e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, expected a bare state dict")
    bad = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise ValueError(
            f"{path}: entries {bad[:5]} are not tensors; expected LivePortrait's bare state dict "
            "(keys 'detector.…')"
        )
    return state


def load_motion_extractor(
    path: str | Path,
    config: MotionExtractorConfig | None = None,
    *,
    device: torch.device | str = "cpu",
) -> MotionExtractor:
    """A frozen ``MotionExtractor`` in eval mode with the weights of ``path`` (module doc)."""
    state = read_state_dict(path)
    with torch.device("meta"):
        model = MotionExtractor(config)
    check_state_dict(
        model.state_dict(),
        state,
        f"{path}: not LivePortrait motion extractor weights for {model.config}",
    )
    state = {k: v.to(device=device, dtype=torch.float32) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.requires_grad_(False).eval()
