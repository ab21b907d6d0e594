"""Which hidden states of a speech encoder become the audio features: the layer choice.

Legend: ``B`` windows, ``L`` feature frames, ``K`` layers kept, ``Da`` hidden size.

A layer spec is a string: ``"last"``, a layer index ``"k"`` (negative counts from the end), a
comma list ``"k1,k2,..."``, or ``"all"``. Its meaning, in transformers 5.x (the range df-data
pins) with ``output_hidden_states=True`` and ``n`` transformer layers:

- ``hidden_states`` has ``n + 1`` entries: ``[0]`` the input of the first transformer layer
  (the CNN features after projection and the convolutional position embedding), ``[k]`` the
  output of layer ``k``. For *stable-layer-norm* models (``do_stable_layer_norm=True``:
  hubert-large, wav2vec2-large*) ``[n]`` is the last layer **before** the encoder's final
  LayerNorm; transformers 4.x put the normalised output there instead (research/real_media.md
  §2), so a 4.x install would silently change ``"all"`` and ``"-1"``. Whisper's encoder and
  the base (group-norm) models have ``[n] == last_hidden_state`` in both.
- ``"last"`` is ``last_hidden_state``: the model's output, final LayerNorm applied.
- ``"k"`` is ``hidden_states[k]``; ``"all"`` stacks all ``n + 1`` entries (embeddings and every
  layer, for the model's learned softmax-weighted sum, ``DualForceConfig.audio_layers``).
"""

from __future__ import annotations

from typing import Any

import torch

HIDDEN_STATES_SEMANTICS = "transformers>=5: hidden_states[n] before the final LayerNorm"


def parse_layer_spec(spec: str | int) -> str:
    """The canonical string of a layer spec; ValueError naming what is allowed."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        return str(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            f"audio layer must be 'last', 'all', an index or 'k1,k2,...', got {spec!r}"
        )
    spec = spec.strip().lower()
    if spec in ("last", "all"):
        return spec
    try:
        indices = [int(p) for p in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"audio layer must be 'last', 'all', an index or 'k1,k2,...', got {spec!r}"
        ) from None
    if len(set(indices)) != len(indices):
        raise ValueError(f"audio layer list {spec!r} repeats a layer")
    return ",".join(str(i) for i in indices)


def layer_indices(spec: str, num_layers: int) -> list[int] | None:
    """``hidden_states`` indices a spec reads (None for ``"last"``); ValueError when an index
    is outside ``[-(n + 1), n]`` for a model of ``n = num_layers`` transformer layers."""
    if spec == "last":
        return None
    if spec == "all":
        return list(range(num_layers + 1))
    out = []
    for i in (int(p) for p in spec.split(",")):
        if not -(num_layers + 1) <= i <= num_layers:
            raise ValueError(
                f"audio layer {i} does not exist: the model has hidden_states 0..{num_layers} "
                f"(embeddings + {num_layers} layers)"
            )
        out.append(i % (num_layers + 1))
    return out


def num_kept(spec: str, num_layers: int) -> int:
    """``K``: 1 for ``"last"`` and a single index (features ``[L, Da]``), else the number of
    stacked layers (features ``[L, K, Da]``)."""
    indices = layer_indices(spec, num_layers)
    return 1 if indices is None or (len(indices) == 1 and spec != "all") else len(indices)


def select(outputs: Any, spec: str, num_layers: int) -> torch.Tensor:
    """``[B, L, Da]`` (one layer) or ``[B, L, K, Da]`` (stacked) from a model's outputs (run
    with ``output_hidden_states=True`` unless ``spec == "last"``)."""
    indices = layer_indices(spec, num_layers)
    if indices is None:
        return outputs.last_hidden_state
    states = outputs.hidden_states
    if len(states) != num_layers + 1:
        raise ValueError(f"expected {num_layers + 1} hidden states, the model gave {len(states)}")
    if num_kept(spec, num_layers) == 1:
        return states[indices[0]]
    return torch.stack([states[i] for i in indices], dim=2)
