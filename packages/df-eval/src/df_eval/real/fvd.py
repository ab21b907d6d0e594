"""FVD with StyleGAN-V's I3D TorchScript (universome/stylegan-v
``src/metrics/frechet_video_distance.py``; checked against the TensorFlow original by
universome/fvd-comparison).

The detector ``i3d_torchscript.pt`` is the Kinetics-400 I3D of the original FVD paper exported
as TorchScript; it is called as ``detector(x, rescale=True, resize=True,
return_features=True)`` with ``x`` float ``[B, 3, T, H, W]`` in the uint8 range [0, 255] (it
resizes to 224 and rescales to [-1, 1] itself) and returns the 400 logits before the softmax,
the features FVD fits its Gaussians to.

Protocol of this module (``FVD_VARIANT``): every video is cut into consecutive,
non-overlapping 16-frame clips from frame 0 (stride 16; a remainder shorter than 16 frames is
dropped), at the video's native frame rate, full resolution into the detector. StyleGAN-V's
``fvd2048_16f`` samples 2048 random 16-frame clips per side instead; with the few hundred
clips of a talking-head test set the number of clips is reported next to the value, since
FVD is biased upwards for small samples. A video shorter than one clip contributes no clip:
``ClipTooShortError``, which the evaluation records as a skip.

Legend: B batch, N clips, T frames, H W pixels.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from df_eval.metrics import frechet_distance
from df_eval.real.batching import batched_features
from df_eval.real.weights import WeightsMismatchError

FVD_CLIP_LEN = 16
FVD_VARIANT = "fvd_16f: non-overlapping 16-frame clips (stride 16), I3D rescale+resize, 400-d"
I3D_FEATURES = 400
_I3D_KWARGS = ("rescale", "resize", "return_features")  # what StyleGAN-V passes by name


class ClipTooShortError(ValueError):
    """A video has fewer frames than one FVD clip."""


def load_i3d(path: str | Path, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Loads StyleGAN-V's ``i3d_torchscript.pt`` (``torch.jit.load``: a TorchScript archive,
    not a pickle) and checks that its ``forward`` takes StyleGAN-V's arguments."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # torch 2.11 deprecates TorchScript; the published detector exists in no other form.
            warnings.filterwarnings("ignore", message="`torch.jit", category=DeprecationWarning)
            detector = torch.jit.load(str(path), map_location=device)
    except Exception as e:  # TorchScript raises RuntimeError or its own types
        raise WeightsMismatchError(f"{path}: not a TorchScript archive ({e})") from e
    names = tuple(a.name for a in detector.forward.schema.arguments[1:])
    if len(names) < 1 + len(_I3D_KWARGS) or not set(_I3D_KWARGS) <= set(names[1:]):
        raise WeightsMismatchError(
            f"{path}: forward takes {names}, expected StyleGAN-V's I3D signature "
            f"(x, {', '.join(_I3D_KWARGS)})"
        )
    return detector.eval()


def video_clips(frames_THWC: np.ndarray, clip_len: int = FVD_CLIP_LEN, name: str = "video"):
    """Consecutive non-overlapping clips ``[N, clip_len, H, W, 3]`` of a video ``[T, H, W, 3]``
    (a view, no copy); ``ClipTooShortError`` when ``T < clip_len``."""
    frames = np.asarray(frames_THWC)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{name}: frames must be [T, H, W, 3], got {frames.shape}")
    n = len(frames) // clip_len
    if n == 0:
        raise ClipTooShortError(
            f"{name}: {len(frames)} frames, shorter than one {clip_len}-frame FVD clip"
        )
    return frames[: n * clip_len].reshape(n, clip_len, *frames.shape[1:])


@torch.no_grad()
def clip_features(
    detector,
    clips_NTHWC: np.ndarray,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """I3D features ``[N, 400]`` (float64) of uint8 clips ``[N, T, H, W, 3]``, fed as
    StyleGAN-V does: float ``[B, 3, T, H, W]`` in [0, 255], ``rescale=True, resize=True,
    return_features=True``."""
    clips = np.asarray(clips_NTHWC)
    if clips.ndim != 5 or clips.shape[-1] != 3 or clips.dtype != np.uint8:
        raise ValueError(f"clips must be uint8 [N, T, H, W, 3], got {clips.dtype} {clips.shape}")

    def features(chunk: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(chunk).to(device).permute(0, 4, 1, 2, 3).float()
        feats = detector(x, rescale=True, resize=True, return_features=True)
        if feats.ndim != 2 or feats.shape[0] != x.shape[0]:
            raise WeightsMismatchError(
                f"the I3D detector returned {tuple(feats.shape)}, expected [{x.shape[0]}, F]"
            )
        return feats

    return batched_features(clips, batch_size, features, name="clip_features")


def fvd(features_a_NF: np.ndarray, features_b_MF: np.ndarray) -> float:
    """FVD between two sets of I3D clip features (the Fréchet distance of their Gaussians)."""
    return frechet_distance(features_a_NF, features_b_MF)
