"""Sync-C / Sync-D (LSE-C / LSE-D) with SyncNet, as joonson/syncnet_python computes them and
Wav2Lip's ``evaluation/scores_LSE`` reports them.

- ``SyncNet``: syncnet_python's ``S(num_layers_in_fc_layers=1024)``, layer for layer, so the
  published ``syncnet_v2.model`` (a state dict with keys ``netcnnaud.*``, ``netfcaud.*``,
  ``netcnnlip.*``, ``netfclip.*``) loads strictly. The file predates BatchNorm's
  ``num_batches_tracked``; those counters alone may be absent.
- Audio front end: 16 kHz mono as int16 -> ``python_speech_features.mfcc`` (13 coefficients,
  25 ms rectangular windows every 10 ms: 100 Hz, 4 MFCC frames per 25 fps video frame).
- Video front end: the face crop of ``run_pipeline.py`` (``syncnet_crops``: box centre and
  half-size median-filtered over 13 frames, padding 110, crop scale 0.4, 224x224), fed as
  **BGR float in [0, 255], not normalised**, 5 frames per window.
- ``lse``: ``calc_pdist`` over offsets ``-vshift..vshift`` (zero features beyond the ends, as
  the reference pads), ``mdist`` the mean distance per offset; **LSE-D** = min ``mdist``,
  **LSE-C** = median ``mdist`` - min ``mdist``, offset = ``vshift - argmin``.

What differs from the reference pipeline, by necessity: frames come straight from the decoded
video (the reference writes the crop as XVID and re-reads it as JPEG), audio is resampled by
torchaudio rather than ffmpeg, and the face boxes come from this package's detector interface
(``df_eval.real.faces``) rather than S3FD.

Legend: T video frames, W windows (``T - 5`` per the reference), M MFCC frames, E embedding
size (1024), K offsets (2 vshift + 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from df_core.checks import non_negative_int
from df_eval.real.weights import load_state_dict_strict, load_torch_state_dict

SAMPLE_RATE = 16_000
FPS = 25
MFCC_PER_FRAME = 4  # 100 Hz MFCC over 25 fps video
WINDOW = 5  # video frames per SyncNet window (20 MFCC frames)
VSHIFT = 15  # the offset search of Wav2Lip's LSE scripts, +-15 frames
CROP_SIZE = 224
CROP_SCALE = 0.4  # run_pipeline.py --crop_scale
CROP_PAD_VALUE = 110
SMOOTH_KERNEL = 13  # run_pipeline.py: medfilt of box centre and size


class SyncInputError(ValueError):
    """Audio or video too short (or missing) for SyncNet's windows."""


def _bn_relu(conv: nn.Module, bn: nn.Module, inplace: bool = True) -> list[nn.Module]:
    return [conv, bn, nn.ReLU(inplace=inplace)]


class SyncNet(nn.Module):
    """syncnet_python's ``S``: an audio tower on MFCC ``[B, 1, 13, 20]`` and a lip tower on
    crops ``[B, 3, 5, 224, 224]``, each to an ``[B, E]`` embedding. Sequential indices (hence
    state-dict keys) follow the reference exactly, pools included."""

    def __init__(self, embedding: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_bn_relu(nn.Conv2d(1, 64, 3, 1, 1), nn.BatchNorm2d(64)),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
            *_bn_relu(nn.Conv2d(64, 192, 3, 1, 1), nn.BatchNorm2d(192)),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
            *_bn_relu(nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384)),
            *_bn_relu(nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256)),
            *_bn_relu(nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256)),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            *_bn_relu(nn.Conv2d(256, 512, (5, 4)), nn.BatchNorm2d(512), inplace=False),
        )
        self.netfcaud = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding)
        )
        self.netfclip = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding)
        )
        self.netcnnlip = nn.Sequential(
            *_bn_relu(nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2)), nn.BatchNorm3d(96)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_bn_relu(nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_bn_relu(nn.Conv3d(256, 512, (1, 6, 6)), nn.BatchNorm3d(512)),
        )
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path) -> SyncNet:
        """Loads ``syncnet_v2.model`` strictly (``torch.load(weights_only=True)``)."""
        model = cls()
        load_state_dict_strict(model, load_torch_state_dict(path), str(path))
        return model.eval()

    def forward_aud(self, mfcc_B1CM: torch.Tensor) -> torch.Tensor:
        """MFCC windows ``[B, 1, 13, 20]`` -> ``[B, E]``."""
        return self.netfcaud(self.netcnnaud(mfcc_B1CM).flatten(1))

    def forward_lip(self, crops_B3THW: torch.Tensor) -> torch.Tensor:
        """BGR crops ``[B, 3, 5, 224, 224]`` in [0, 255] -> ``[B, E]``."""
        return self.netfclip(self.netcnnlip(crops_B3THW).flatten(1))


def to_int16(audio_N: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] -> int16 as ffmpeg's ``pcm_s16le`` does (x * 32768, rounded,
    clipped): the reference reads int16 wavs, and MFCC log energies depend on the scale."""
    a = np.asarray(audio_N, np.float64)
    return np.clip(np.rint(a * 32768.0), -32768, 32767).astype(np.int16)


def mfcc(audio_int16_N: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """syncnet_python's MFCC ``[13, M]``: ``python_speech_features.mfcc`` with its defaults
    (M = 1 + ceil((N - 400) / 160) at 16 kHz)."""
    import python_speech_features

    audio = np.asarray(audio_int16_N)
    if audio.ndim != 1 or len(audio) == 0:
        raise SyncInputError(f"audio must be mono [N] with N > 0, got {audio.shape}")
    return python_speech_features.mfcc(audio, sample_rate).T


def syncnet_windows(frames: int, audio_samples: int) -> int:
    """Number of SyncNet windows the reference scores: ``min(T, floor(N / 640)) - 5`` (its
    ``lastframe``; the final full window is left out there too)."""
    min_length = min(frames, audio_samples // (SAMPLE_RATE // FPS))
    return max(min_length - WINDOW, 0)


@torch.no_grad()
def embed(
    model: SyncNet,
    crops_THWC: np.ndarray,
    audio_N: np.ndarray,
    *,
    batch_size: int = 20,
    device: str | torch.device = "cpu",
    name: str = "video",
) -> tuple[np.ndarray, np.ndarray]:
    """Lip and audio embeddings ``[W, E]`` each, window ``i`` covering video frames
    ``i..i+4`` and MFCC frames ``4i..4i+19``.

    Args:
        crops_THWC: RGB uint8 224x224 face crops (``syncnet_crops``); fed as BGR, unnormalised.
        audio_N: float mono audio at 16 kHz in [-1, 1], aligned with frame 0.
    """
    crops = np.asarray(crops_THWC)
    if crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise SyncInputError(f"{name}: crops must be [T, 224, 224, 3], got {crops.shape}")
    W = syncnet_windows(len(crops), len(audio_N))
    if W < 1:
        raise SyncInputError(
            f"{name}: {len(crops)} frames and {len(audio_N) / SAMPLE_RATE:.2f} s of audio give no "
            f"SyncNet window (needs at least {WINDOW + 1} frames of both)"
        )
    cc = torch.from_numpy(mfcc(to_int16(audio_N))).float()  # [13, M]
    video = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1])).float()  # BGR [T, H, W, 3]
    video = video.permute(3, 0, 1, 2)  # [3, T, H, W]
    lip, aud = [], []
    for start in range(0, W, batch_size):
        idx = range(start, min(W, start + batch_size))
        v = torch.stack([video[:, i : i + WINDOW] for i in idx]).to(device)
        a = torch.stack([cc[:, MFCC_PER_FRAME * i : MFCC_PER_FRAME * i + 4 * WINDOW] for i in idx])
        lip.append(model.forward_lip(v).cpu())
        aud.append(model.forward_aud(a[:, None].to(device)).cpu())
    return torch.cat(lip).double().numpy(), torch.cat(aud).double().numpy()


def calc_pdist(lip_WE: np.ndarray, aud_WE: np.ndarray, vshift: int = VSHIFT) -> np.ndarray:
    """Distances ``[W, K]``: ``d[i, j] = |lip[i] - aud[i + j - vshift]|`` (PyTorch's
    ``pairwise_distance``, eps 1e-6), audio beyond either end being zero vectors as
    syncnet_python's padding makes them."""
    non_negative_int("vshift", vshift)
    lip = torch.as_tensor(lip_WE, dtype=torch.float64)
    aud = torch.as_tensor(aud_WE, dtype=torch.float64)
    if lip.shape != aud.shape or lip.ndim != 2:
        raise ValueError(
            f"calc_pdist needs [W, E] twice, got {tuple(lip.shape)}, {tuple(aud.shape)}"
        )
    K = 2 * vshift + 1
    padded = F.pad(aud, (0, 0, vshift, vshift))
    windows = padded.unfold(0, K, 1).permute(0, 2, 1)  # [W, K, E]
    W, E = lip.shape
    rows = lip[:, None, :].expand(-1, K, -1).reshape(W * K, E)
    return F.pairwise_distance(rows, windows.reshape(W * K, E)).reshape(W, K).numpy()


@dataclass(frozen=True)
class SyncScore:
    lse_d: float  # min over offsets of the mean distance (Sync-D; lower is better)
    lse_c: float  # median minus min of the mean distances (Sync-C; higher is better)
    offset: int  # vshift - argmin: > 0 means the mouth lags the audio by that many frames
    windows: int
    mdist: list[float]  # mean distance per offset -vshift..vshift (the offset curve)


def lse(lip_WE: np.ndarray, aud_WE: np.ndarray, vshift: int = VSHIFT) -> SyncScore:
    """LSE-D, LSE-C and the AV offset from window embeddings (syncnet_python ``evaluate``)."""
    dists = calc_pdist(lip_WE, aud_WE, vshift)
    mdist = dists.mean(axis=0)
    best = int(np.argmin(mdist))  # the first minimum, as torch.min returns
    minval = float(mdist[best])
    # torch.median of an even count returns the lower middle value, not the mean of the two.
    median = float(np.sort(mdist)[(len(mdist) - 1) // 2])
    return SyncScore(
        lse_d=minval,
        lse_c=median - minval,
        offset=vshift - best,
        windows=int(dists.shape[0]),
        mdist=mdist.tolist(),
    )


def smooth_boxes(boxes_T4: np.ndarray, kernel: int = SMOOTH_KERNEL) -> np.ndarray:
    """run_pipeline.py's smoothing: box centres ``x, y`` and half-size ``s = max(w, h) / 2``
    ``[T, 3]``, each median-filtered over ``kernel`` frames (``scipy.signal.medfilt``, whose
    zero padding the reference keeps)."""
    from scipy.signal import medfilt

    b = np.asarray(boxes_T4, np.float64)
    if b.ndim != 2 or b.shape[1] != 4 or len(b) == 0:
        raise ValueError(f"boxes must be [T, 4] (x0, y0, x1, y1), got {b.shape}")
    if len(b) < kernel:
        # medfilt zero-pads: on a shorter track the zeros would be the median.
        raise SyncInputError(
            f"a face track of {len(b)} frames is shorter than the {kernel}-frame smoothing"
        )
    s = np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2
    x, y = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    return np.stack([medfilt(v, kernel_size=kernel) for v in (x, y, s)], axis=1)


def syncnet_crops(
    frames_THWC: np.ndarray, boxes_T4: np.ndarray, crop_scale: float = CROP_SCALE
) -> np.ndarray:
    """run_pipeline.py's ``crop_video``: per frame, pad by ``bs (1 + 2 cs)`` with value 110,
    cut ``[my - bs, my + bs (1 + 2 cs)] x [mx - bs (1 + cs), mx + bs (1 + cs)]`` around the
    smoothed box (more chin than forehead) and resize to 224x224 (bilinear). Returns RGB uint8
    ``[T, 224, 224, 3]``."""
    import cv2

    frames = np.asarray(frames_THWC)
    if len(frames) != len(boxes_T4):
        raise ValueError(f"{len(frames)} frames but {len(boxes_T4)} face boxes")
    dets = smooth_boxes(boxes_T4)
    out = np.empty((len(frames), CROP_SIZE, CROP_SIZE, 3), np.uint8)
    for t, (frame, (x, y, bs)) in enumerate(zip(frames, dets, strict=True)):
        bsi = int(bs * (1 + 2 * crop_scale))
        padded = np.pad(frame, ((bsi, bsi), (bsi, bsi), (0, 0)), constant_values=CROP_PAD_VALUE)
        my, mx = y + bsi, x + bsi
        face = padded[
            int(my - bs) : int(my + bs * (1 + 2 * crop_scale)),
            int(mx - bs * (1 + crop_scale)) : int(mx + bs * (1 + crop_scale)),
        ]
        out[t] = cv2.resize(face, (CROP_SIZE, CROP_SIZE))
    return out
