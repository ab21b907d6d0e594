"""The published weight files of the real-video metrics, and loading them strictly.

Nothing is downloaded: the user names a folder (``dualforce eval --real --weights DIR``) that
holds the files under their published names (``WEIGHTS``). A missing file is a
``MissingWeightsError`` naming the file and where it is published.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from df_models.pretrained import check_state_dict


class MissingWeightsError(ValueError):
    """A published weights file is not in the weights folder."""


class WeightsMismatchError(ValueError):
    """A weights file does not hold the published key layout of its network."""


@dataclass(frozen=True)
class WeightsFile:
    metric: str  # which metric needs it
    relpath: str  # the published file name, relative to the weights folder
    source: str  # where it is published
    fmt: str  # how it is read


WEIGHTS: dict[str, WeightsFile] = {
    "inception": WeightsFile(
        "FID",
        "pt_inception-2015-12-05-6726825d.pth",
        "mseitzer/pytorch-fid release 'fid_weights' (github.com/mseitzer/pytorch-fid/releases/"
        "download/fid_weights/pt_inception-2015-12-05-6726825d.pth)",
        "torch state dict (torch.load, weights_only=True)",
    ),
    "i3d": WeightsFile(
        "FVD",
        "i3d_torchscript.pt",
        "universome/stylegan-v, src/metrics/frechet_video_distance.py detector_url "
        "(www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt)",
        "TorchScript archive (torch.jit.load)",
    ),
    "syncnet": WeightsFile(
        "Sync-C / Sync-D",
        "syncnet_v2.model",
        "joonson/syncnet_python download_model.sh "
        "(www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model)",
        "torch state dict (torch.load, weights_only=True)",
    ),
    "arcface": WeightsFile(
        "CSIM",
        "ms1mv3_arcface_r100_fp16/backbone.pth",
        "deepinsight/insightface recognition/arcface_torch model zoo, ms1mv3_arcface_r100_fp16 "
        "(non-commercial research use only)",
        "torch state dict (torch.load, weights_only=True)",
    ),
    "alexnet": WeightsFile(
        "LPIPS",
        "alexnet-owt-7be5be79.pth",
        "torchvision AlexNet_Weights.IMAGENET1K_V1 "
        "(download.pytorch.org/models/alexnet-owt-7be5be79.pth)",
        "torch state dict (torch.load, weights_only=True)",
    ),
}


def weights_path(weights_dir: str | Path, key: str) -> Path:
    """The path of ``WEIGHTS[key]`` inside ``weights_dir``; ``MissingWeightsError`` (naming
    the file and where it is published) when it is not there."""
    entry = WEIGHTS[key]
    path = Path(weights_dir) / entry.relpath
    if not path.is_file():
        raise MissingWeightsError(
            f"{path}: {entry.metric} needs the weights file {entry.relpath!r} ({entry.fmt}) in "
            f"the weights folder {weights_dir}; it is published by {entry.source}"
        )
    return path


def load_torch_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A third-party ``.pth`` state dict (these exist in no other format), read with
    ``weights_only=True``; a file that is not a flat name -> tensor mapping is an error."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler raises many types; all mean "not a state dict"
        raise WeightsMismatchError(f"{path}: not a weights_only torch state dict ({e})") from e
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsMismatchError(f"{path}: expected a state dict of name -> tensor")
    return state


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Loads ``state`` into ``module``: every key and shape must match, except BatchNorm's
    ``num_batches_tracked`` counters, which checkpoints written before PyTorch 0.4.1 (SyncNet's,
    2017) lack and which evaluation never reads. Errors name the file (``name``) and keys."""
    own = module.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    check_state_dict(
        own,
        state,
        f"{name} ({type(module).__name__})",
        optional=optional,
        error=WeightsMismatchError,
    )
    full = dict(state)
    for k in optional - set(state):
        full[k] = own[k]
    module.load_state_dict(full, strict=True)
