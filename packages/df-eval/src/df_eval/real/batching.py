"""One way to run a feature network over many inputs: in batches, on a device, to float64."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def batched_features(
    inputs: np.ndarray,
    batch_size: int,
    features: Callable[[np.ndarray], torch.Tensor],
    *,
    name: str,
) -> np.ndarray:
    """``features(chunk) -> [b, F]`` over ``inputs`` in chunks of ``batch_size`` rows,
    concatenated as float64 ``[N, F]`` on the host; ``ValueError`` naming ``name`` when there
    is no input."""
    if len(inputs) == 0:
        raise ValueError(f"{name}: no inputs")
    out = [
        features(np.ascontiguousarray(inputs[i : i + batch_size])).double().cpu().numpy()
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(out)
