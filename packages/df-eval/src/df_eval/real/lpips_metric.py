"""LPIPS with the ``lpips`` package (v0.1, AlexNet trunk, the linear heads its wheel ships).

``lpips.LPIPS(pretrained=True, net="alex")`` would fetch the AlexNet trunk through
torchvision's downloader; here the trunk is built random (``pnet_rand=True``, no network) and
then loaded strictly from torchvision's published ``alexnet-owt-7be5be79.pth`` in the weights
folder: its ``features.{i}.*`` tensors are exactly lpips's ``net.slice{k}.{i}.*`` (the slices
keep torchvision's layer indices as names). The heads (``lin0..lin4``) come from the wheel.

Input: RGB frames, scaled to [-1, 1] as lpips expects; LPIPS is computed per frame pair and
is only defined where frames correspond (same size, same count).

Legend: T frames, H W pixels.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from df_eval.real.weights import load_state_dict_strict, load_torch_state_dict

# lpips's AlexNet slices: torchvision ``features`` indices per slice (lpips/pretrained_networks).
_ALEX_SLICES = {1: range(0, 2), 2: range(2, 5), 3: range(5, 8), 4: range(8, 10), 5: range(10, 12)}


class MismatchedFramesError(ValueError):
    """Two videos compared frame by frame differ in frame count or size."""


def build_lpips() -> nn.Module:
    """``lpips.LPIPS`` v0.1 AlexNet with the wheel's calibrated heads and a random trunk."""
    import lpips

    with warnings.catch_warnings():
        # lpips 0.1.4 passes torchvision's deprecated ``pretrained=False``.
        warnings.filterwarnings("ignore", message=".*pretrained.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*weights.*", category=UserWarning)
        return lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()


def alexnet_to_lpips_trunk(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision AlexNet ``features.{i}.*`` keys -> lpips ``slice{k}.{i}.*`` keys (the
    classifier, which lpips does not use, is dropped)."""
    out = {}
    for k, idx in _ALEX_SLICES.items():
        for i in idx:
            for p in ("weight", "bias"):
                key = f"features.{i}.{p}"
                if key in state:
                    out[f"slice{k}.{i}.{p}"] = state[key]
    return out


def load_lpips(alexnet_path: str | Path) -> nn.Module:
    """LPIPS with the AlexNet trunk of ``alexnet-owt-7be5be79.pth`` (checked strictly against
    torchvision's ``alexnet`` key layout first, then copied into lpips's slices)."""
    from torchvision.models import alexnet

    state = load_torch_state_dict(alexnet_path)
    reference = alexnet(weights=None)
    load_state_dict_strict(reference, state, str(alexnet_path))  # the published layout
    model = build_lpips()
    load_state_dict_strict(model.net, alexnet_to_lpips_trunk(state), str(alexnet_path))
    return model.eval()


def _to_pm1(frames_THWC: np.ndarray) -> torch.Tensor:
    return (
        torch.from_numpy(np.ascontiguousarray(frames_THWC)).permute(0, 3, 1, 2).float() / 127.5 - 1
    )


@torch.no_grad()
def lpips_per_frame(
    model: nn.Module,
    pred_THWC: np.ndarray,
    ref_THWC: np.ndarray,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    name: str = "video",
) -> np.ndarray:
    """LPIPS ``[T]`` of each generated frame against its reference frame (uint8 RGB
    ``[T, H, W, 3]`` each); ``MismatchedFramesError`` unless both have the same shape."""
    pred, ref = np.asarray(pred_THWC), np.asarray(ref_THWC)
    if pred.shape != ref.shape or pred.ndim != 4 or pred.shape[-1] != 3:
        raise MismatchedFramesError(
            f"{name}: LPIPS needs frames that correspond, got {pred.shape} and {ref.shape}"
        )
    if pred.dtype != np.uint8 or ref.dtype != np.uint8:
        raise ValueError(f"{name}: LPIPS frames must be uint8, got {pred.dtype} and {ref.dtype}")
    out = []
    for i in range(0, len(pred), batch_size):
        a = _to_pm1(pred[i : i + batch_size]).to(device)
        b = _to_pm1(ref[i : i + batch_size]).to(device)
        out.append(model(a, b).flatten().double().cpu().numpy())
    return np.concatenate(out)
