"""FP8 linears for streaming on Hopper (and Ada): torchao's float8 inference recipe.

Every linear that runs over the video tokens of a pass (1,024 per frame at ``base``) becomes
a torchao float8 linear: e4m3 weights, quantized once with one scale per output row, and
activations quantized dynamically per pass with one scale per token row (``PerRow``), the
matmul on the FP8 tensor cores with float32 accumulation. Everything else stays in the model's
dtype: the struct stream and the cross-attention keys of audio, reference and struct tokens
(a handful of rows each, where quantizing costs more than it saves), the modulation layers
(computed once per noise level by the streaming sampler), embeddings and heads.

Accuracy is checked against bf16 by ``dualforce bench stream --fp8`` and the GPU tests.
"""

from __future__ import annotations

import re

import torch
from torch import nn

# Linears over the video tokens of a pass: the video stream's attention, MLP, and the query /
# output sides of its cross-attentions; and the struct stream's bridge keys, which read the
# video tokens.
VIDEO_TOKEN_LINEARS = re.compile(
    r"blocks\.\d+\.(video\.(attn\.(q|kv|out)|mlp\.(up|down)|(bridge|audio|ref)\.(q|out))"
    r"|struct\.bridge\.kv)"
)
MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (8.9) and Hopper (9.0) and later


def fp8_linear_names(model: nn.Module) -> list[str]:
    """The names of the linears :func:`fp8_linears` converts (sizes divisible by 16, as the
    FP8 matmul needs)."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and VIDEO_TOKEN_LINEARS.fullmatch(name)
        and m.in_features % 16 == 0
        and m.out_features % 16 == 0
    ]


def check_fp8(model: nn.Module) -> None:
    """A ValueError unless ``model`` is in bf16 on a CUDA device with FP8 tensor cores."""
    param = next(model.parameters())
    if param.device.type != "cuda":
        raise ValueError(f"FP8 linears need the model on a CUDA device, it is on {param.device}")
    cap = torch.cuda.get_device_capability(param.device)
    if cap < MIN_CAPABILITY:
        raise ValueError(
            f"FP8 linears need compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}+ "
            f"(Ada, Hopper); {torch.cuda.get_device_name(param.device)} has {cap[0]}.{cap[1]}"
        )
    if param.dtype != torch.bfloat16:
        raise ValueError(f"FP8 linears convert a bf16 model, this one is {param.dtype}")


def fp8_linears(model: nn.Module) -> list[str]:
    """Converts the video-token linears of a bf16 model on a CUDA device of compute capability
    8.9+ to float8 rowwise (in place; before ``torch.compile``); returns their names."""
    check_fp8(model)
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    names = set(fp8_linear_names(model))
    if not names:
        raise ValueError("the model has no linear over video tokens to convert")
    quantize_(
        model,
        Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
        filter_fn=lambda module, fqn: fqn in names,
    )
    return sorted(names)
