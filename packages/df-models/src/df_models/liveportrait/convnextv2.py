"""ConvNeXt V2 as LivePortrait's motion extractor uses it (``src/modules/convnextv2.py``), with
its module names, so that a state dict of the released checkpoint loads key for key.

Legend: ``B`` batch, ``C`` channels, ``H W`` feature map size, ``D`` the last stage's width.

A block is a 7x7 depthwise conv, LayerNorm (channels last), Linear to 4C, GELU, global
response normalisation (GRN), Linear back to C, plus the residual. The stem is a 4x4/4 conv and
a channels-first LayerNorm; each of the three downsamplings a channels-first LayerNorm and a
2x2/2 conv. The features are the global average pool of the last stage, layer-normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6  # LivePortrait's LayerNorms, both formats
GRN_EPS = 1e-6


class LayerNorm(nn.Module):
    """LayerNorm over channels, for channels-last ``[..., C]`` or channels-first
    ``[B, C, H, W]`` input; parameters ``weight`` and ``bias`` ``[C]``."""

    def __init__(self, channels: int, *, channels_first: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.channels_first = channels_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_first:
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, LN_EPS)
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + LN_EPS)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    """Global response normalisation of channels-last ``x_BHWC``: each channel's spatial L2
    norm divided by the mean of those norms over channels scales the channel;
    ``gamma`` and ``beta`` are ``[1, 1, 1, C]``, zero at init (the block starts as identity)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels))

    def forward(self, x_BHWC: torch.Tensor) -> torch.Tensor:
        g = torch.norm(x_BHWC, p=2, dim=(1, 2), keepdim=True)
        n = g / (g.mean(dim=-1, keepdim=True) + GRN_EPS)
        return self.gamma * (x_BHWC * n) + self.beta + x_BHWC


class Block(nn.Module):
    """One ConvNeXt V2 block of width ``dim`` on ``x_BCHW`` (module doc)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x_BCHW).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y)))))
        return x_BCHW + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    """The backbone: ``forward_features(x_B3HW) -> [B, D]`` (module doc).

    Args:
        depths: blocks per stage (LivePortrait's tiny: 3, 3, 9, 3).
        dims: widths per stage (96, 192, 384, 768).
        in_channels: input channels (3, RGB).
    """

    def __init__(
        self,
        depths: tuple[int, ...] = (3, 3, 9, 3),
        dims: tuple[int, ...] = (96, 192, 384, 768),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(depths) != len(dims) or not depths:
            raise ValueError(f"depths {depths} and dims {dims} must be non-empty, of one length")
        self.downsample_layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(in_channels, dims[0], kernel_size=4, stride=4),
                    LayerNorm(dims[0], channels_first=True),
                )
            ]
        )
        for i in range(len(dims) - 1):
            self.downsample_layers.append(
                nn.Sequential(
                    LayerNorm(dims[i], channels_first=True),
                    nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2),
                )
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*[Block(dim) for _ in range(depth)])
            for depth, dim in zip(depths, dims, strict=True)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)

    def forward_features(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        x = x_B3HW
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
        return self.norm(x.mean((-2, -1)))
