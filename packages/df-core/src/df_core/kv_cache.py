"""The multi-modal KV cache for streaming generation: a sink plus a rolling window of frames.

Layout, per stream (``video``, ``struct``, ...) and layer, preallocated once::

    k[stream][layer]: [B, Hd, S + P * N, Dh]      (v alike)
                      |-- S sink tokens --|-- P ring slots of N tokens each --|

``S`` is the stream's sink tokens (the clean reference frame, written once), ``N`` its tokens
per frame and ``P = window - 1 + max_chunk`` frame slots: enough for the ``window - 1`` past
frames the oldest query of a chunk may see, plus the chunk itself. ``kv_frames[stream]``
holds the frame id of every slot (:data:`~df_core.masks.SINK_FRAME`,
:data:`~df_core.masks.EMPTY_FRAME` or the frame index), which is all the masks and RoPE need.

A pass over one chunk of ``C`` frames:

1. ``q_frames = cache.begin_chunk(C)``: the chunk's frame ids; their ring slots (the oldest
   ones, which no query of this chunk may see any more) are labelled with them.
2. Per layer and stream: ``cache.write(...)`` the chunk's keys/values into those slots, then
   ``cache.view(...)`` returns everything a query may attend to, chunk included, with the
   frame ids to build the mask from. Writing before reading means no concatenation.
3. ``cache.commit(n)`` after the clean pass (sigma = 0): the first ``n`` frames of the chunk
   become part of the cache. Denoising steps never commit, so the next pass overwrites their
   keys: the committed cache only ever holds clean frames (DESIGN.md, correction 4).

The write pointer and next frame id are 0-dim device tensors and the slots are computed with
tensor arithmetic, so a pass has no host sync and no allocation that grows with the stream,
and it traces under ``torch.compile`` without value guards (a host-side Python counter read
inside a compiled pass would be guarded on and recompile every frame). ``commit`` also counts
on the host; it is called outside compiled code, and only :meth:`all_visible` and
``frames_committed`` read that count.

**Mask-free passes.** Once the window is full, a one-frame pass over a cache with no spare slot
(``max_chunk = 1``, so ``P = window``) sees every slot: the sink plus the ``window - 1`` past
frames plus itself. :meth:`all_visible` says so (a host bool, from the host count), and the
caller may then attend over the whole view with no mask at all: a dense fused kernel (cuDNN
attention on the H100) instead of a block-sparse one, the same result (checked against the
mask in the tests).

Every buffer is allocated once and marked as a static address for ``torch.compile``: a compiled
pass writes the cache in place, and CUDA graphs (``mode="reduce-overhead"``) may replay such
in-place writes only on tensors whose address never changes (otherwise inductor skips graphs
for "mutated inputs"). Each layer has its own tensors, written with ``index_copy_`` on the
whole tensor: a write through a view of one stacked ``[L, ...]`` buffer is functionalised by
the compiler into a scatter of the entire buffer at every layer (all layers' keys copied per
layer and pass), while a per-layer ``index_copy_`` on a graph input is done in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from df_core.checks import non_negative_int, positive_int
from df_core.masks import EMPTY_FRAME, SINK_FRAME


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamSpec:
    """Shape of one stream's cache."""

    num_layers: int  # attention layers of this stream that cache keys/values
    heads: int  # Hd, key/value heads
    head_dim: int  # Dh
    tokens_per_frame: int  # N
    sink_tokens: int = 0  # S, tokens of the reference sink frame

    def __post_init__(self) -> None:
        for name in ("num_layers", "heads", "head_dim", "tokens_per_frame"):
            positive_int(f"StreamSpec.{name}", getattr(self, name))
        non_negative_int("StreamSpec.sink_tokens", self.sink_tokens)


class KVCache:
    """Preallocated keys/values of the sink plus a rolling window, per stream and layer."""

    def __init__(
        self,
        streams: Mapping[str, StreamSpec],
        *,
        batch: int,
        window: int,
        max_chunk: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not streams:
            raise ValueError("streams must name at least one stream")
        positive_int("batch", batch)
        positive_int("window", window)
        positive_int("max_chunk", max_chunk)
        self.streams = dict(streams)
        self.batch = batch
        self.window = window
        self.max_chunk = max_chunk
        self.slots = window - 1 + max_chunk  # P
        self.k: dict[str, list[torch.Tensor]] = {}  # per stream, per layer
        self.v: dict[str, list[torch.Tensor]] = {}
        self.kv_frames: dict[str, torch.Tensor] = {}
        self._in_frame: dict[str, torch.Tensor] = {}
        for name, s in self.streams.items():
            shape = (batch, s.heads, s.sink_tokens + self.slots * s.tokens_per_frame, s.head_dim)
            kw = dict(device=device, dtype=dtype)
            self.k[name] = [torch.zeros(shape, **kw) for _ in range(s.num_layers)]
            self.v[name] = [torch.zeros(shape, **kw) for _ in range(s.num_layers)]
            self.kv_frames[name] = torch.full(
                (shape[2],), EMPTY_FRAME, dtype=torch.long, device=device
            )
            self._in_frame[name] = torch.arange(s.tokens_per_frame, device=device)
        self._ptr = torch.zeros((), dtype=torch.long, device=device)  # next ring slot
        self._next_frame = torch.zeros((), dtype=torch.long, device=device)  # next frame id
        self._chunk_slots = torch.zeros(max_chunk, dtype=torch.long, device=device)
        self._chunk_len = 0
        self._committed = 0  # host count of committed frames (read by all_visible)
        self._sinks: set[str] = set()  # streams whose sink has been written since reset
        for t in self._buffers():
            torch._dynamo.mark_static_address(t)

    @property
    def frames_committed(self) -> int:
        """Frames committed since the last reset (the host count: no device sync)."""
        return self._committed

    def all_visible(self, num_frames: int) -> bool:
        """Whether every slot of the view is visible to every query of the next chunk of
        ``num_frames`` frames, so that the chunk may attend with no mask.

        True exactly when the chunk is one frame, the ring has no spare slot
        (``max_chunk == 1``: ``P == window``), every slot holds a frame of the window
        (``window - 1`` frames committed) and every stream with a sink has it written. A
        host-side answer: call it outside compiled code and pass the bool in.
        """
        sinks = all(s.sink_tokens == 0 or n in self._sinks for n, s in self.streams.items())
        return (
            num_frames == 1
            and self.slots == self.window
            and self._committed >= self.window - 1
            and sinks
        )

    # Step-free verbs -------------------------------------------------------------------------

    def reset(self) -> None:
        """Forgets every frame and the sink; buffers are reused, nothing is reallocated."""
        for name in self.streams:
            for t in (*self.k[name], *self.v[name]):
                t.zero_()
            self.kv_frames[name].fill_(EMPTY_FRAME)
        self._ptr.zero_()
        self._next_frame.zero_()
        self._chunk_len = 0
        self._committed = 0
        self._sinks.clear()

    def write_sink(self, stream: str, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Stores the sink's keys/values ``[B, Hd, S, Dh]`` for one layer (kept until reset)."""
        s = self._spec(stream)
        expected = (self.batch, s.heads, s.sink_tokens, s.head_dim)
        self._check_kv("sink", k, v, expected)
        self.k[stream][layer][:, :, : s.sink_tokens].copy_(k)
        self.v[stream][layer][:, :, : s.sink_tokens].copy_(v)
        self.kv_frames[stream][: s.sink_tokens] = SINK_FRAME
        self._sinks.add(stream)

    def begin_chunk(self, num_frames: int) -> torch.Tensor:
        """Claims ring slots for the next ``num_frames`` frames and labels them.

        Returns:
            ``q_frames_C``: int64 ``[num_frames]``, the absolute frame ids of the chunk.
        """
        positive_int("num_frames", num_frames)
        if num_frames > self.max_chunk:
            raise ValueError(
                f"num_frames must be at most max_chunk={self.max_chunk}, got {num_frames}"
            )
        offsets = torch.arange(num_frames, device=self._ptr.device)
        slots_C = (self._ptr + offsets) % self.slots
        q_frames_C = self._next_frame + offsets
        self._chunk_slots[:num_frames] = slots_C
        self._chunk_len = num_frames
        for name, s in self.streams.items():
            self.kv_frames[name].index_copy_(
                0,
                self._token_slots(name, slots_C),
                q_frames_C.repeat_interleave(s.tokens_per_frame),
            )
        return q_frames_C

    def write(self, stream: str, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Writes the current chunk's keys/values ``[B, Hd, C * N, Dh]`` (frame-major)."""
        s = self._spec(stream)
        if self._chunk_len == 0:
            raise ValueError("write called before begin_chunk")
        expected = (self.batch, s.heads, self._chunk_len * s.tokens_per_frame, s.head_dim)
        self._check_kv("chunk", k, v, expected)
        idx = self._token_slots(stream, self._chunk_slots[: self._chunk_len])
        self.k[stream][layer].index_copy_(2, idx, k)  # in place on the layer's own tensor
        self.v[stream][layer].index_copy_(2, idx, v)

    def view(self, stream: str, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything a query of the current chunk may attend to, in slot order.

        Returns:
            ``(k, v, kv_frames)``: ``[B, Hd, S + P*N, Dh]`` twice and int64 ``[S + P*N]``; slots
            that must not be seen (empty, or too old for the window) are excluded by the mask
            built from ``kv_frames``, not by slicing, so shapes are static.
        """
        self._spec(stream)
        return self.k[stream][layer], self.v[stream][layer], self.kv_frames[stream]

    def commit(self, num_frames: int) -> None:
        """Makes the first ``num_frames`` frames of the current chunk part of the cache.

        Call it after the pass that wrote them clean (sigma = 0 or the context level), outside
        compiled code (it keeps the host count that :meth:`all_visible` reads).
        """
        non_negative_int("num_frames", num_frames)
        if num_frames > self._chunk_len:
            raise ValueError(
                f"num_frames must be at most the chunk length {self._chunk_len}, got {num_frames}"
            )
        self._ptr.add_(num_frames).remainder_(self.slots)
        self._next_frame.add_(num_frames)
        self._chunk_len = 0
        self._committed += num_frames

    # Reporting -------------------------------------------------------------------------------

    def memory_bytes(self) -> int:
        """Bytes held by all buffers; constant for the life of the cache."""
        return sum(t.numel() * t.element_size() for t in self._buffers())

    def memory_report(self) -> dict[str, int]:
        """Bytes of keys+values per stream, plus ``total``."""
        report = {
            name: sum(t.numel() * t.element_size() for t in (*self.k[name], *self.v[name]))
            for name in self.streams
        }
        report["total"] = self.memory_bytes()
        return report

    # Helpers ---------------------------------------------------------------------------------

    def _buffers(self) -> list[torch.Tensor]:
        layers = [t for d in (self.k, self.v) for ts in d.values() for t in ts]
        ids = [*self.kv_frames.values(), *self._in_frame.values()]
        return [*layers, *ids, self._ptr, self._next_frame, self._chunk_slots]

    def _spec(self, stream: str) -> StreamSpec:
        if stream not in self.streams:
            raise ValueError(f"stream must be one of {sorted(self.streams)}, got {stream!r}")
        return self.streams[stream]

    def _token_slots(self, stream: str, slots_C: torch.Tensor) -> torch.Tensor:
        s = self.streams[stream]
        return (
            s.sink_tokens + slots_C[:, None] * s.tokens_per_frame + self._in_frame[stream][None, :]
        ).flatten()

    @staticmethod
    def _check_kv(what: str, k: torch.Tensor, v: torch.Tensor, expected: tuple[int, ...]) -> None:
        if tuple(k.shape) != expected or tuple(v.shape) != expected:
            raise ValueError(
                f"{what} keys/values must have shape {expected} [B, Hd, tokens, Dh], "
                f"got k {tuple(k.shape)} and v {tuple(v.shape)}"
            )
