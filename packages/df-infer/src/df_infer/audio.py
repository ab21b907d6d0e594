"""Audio for streaming generation: features computed incrementally as audio arrives.

Legend: N samples at 16 kHz, L feature frames (50 Hz, 2 per video frame), Da feature dim,
T video frames, T_lat latent frames (``= T`` for image codecs; ``1 + ceil((T - 1) / k)`` for a
codec of ``k = frames_per_latent`` video frames per latent frame, :mod:`df_core.conventions`),
La the audio window of one latent frame.

:class:`StreamingFeatures` turns a stream of audio chunks into the audio windows the model
reads, frame by frame, and gives exactly the windows training saw for the same audio
(``gather_audio_windows(features_for_frames(audio, T))``): the clip is ``T = ceil(N / 640)``
frames long, its audio zero-padded to ``640 T`` samples, and feature frames outside the clip
are zeros. Frame ``t`` needs feature frames up to ``2 (t + 1 + context) - 1``, i.e. audio up to
``80 ms`` past its end for the default context of 2 video frames: that is the latency floor
of live input.

With ``frames_per_latent = k > 1`` frames and windows are latent frames: latent frame ``j``
reads the audio of its whole group of video frames ``(j - 1) k + 1 .. j k`` (frame 0 alone for
``j = 0``, the group's earlier frames silence) plus ``context`` frames on each side, ``La =
(k + 2 context) 2`` features (``gather_audio_windows(..., frames_per_latent=k)``). Its look-ahead
is then the group's: the group's first frame waits ``k - 1`` more frames plus the context, 200
ms at k = 4 and context 2 (the codec decodes the group's frames together anyway).

For a *local* encoder (the log-mel default: every feature reads only its own 25 ms window)
features are computed on the new audio only, keeping a bounded tail: memory is constant over
hours of input.

A *windowed* encoder (the pretrained HuBERT / wav2vec2 / Whisper encoders of
:mod:`df_data.encoders.speech`, which define their features window by window,
:mod:`df_data.encoders.windows`) computes each window as soon as its last sample has arrived,
exactly as offline extraction cuts it, and keeps only the audio from the next window's start:
memory is bounded by one window plus the features the model still reads. Its look-ahead:
frame ``t``'s own features exist ``lookahead`` to ``hop - 1 + lookahead`` video frames (plus
``pad`` samples) after frame ``t`` ends; the model's audio context adds ``context`` frames.
With the default geometry (hop 5, look-ahead 3) and context 2: at most 9 frames, 360 ms (+2.5
ms). Float32 features agree with the offline ones to about 1e-5 (a window alone or in a batch:
the same numbers up to summation order).

Any other encoder is encoded once the stream has ended, so it serves files but not live input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from df_core.conventions import (
    AUDIO_FEATURES_PER_VIDEO_FRAME,
    group_first_frame,
    latent_frames_covering,
)
from df_data.encoders.windows import cut_windows
from df_data.features import (
    HOP,
    SAMPLES_PER_VIDEO_FRAME,
    WINDOW,
    AudioEncoder,
    LogMelEncoder,
    features_for_frames,
)

R = AUDIO_FEATURES_PER_VIDEO_FRAME
HALF = WINDOW // 2  # samples each side of a feature's centre


def _is_local(encoder: AudioEncoder) -> bool:
    return isinstance(encoder, LogMelEncoder)


def _is_windowed(encoder: AudioEncoder) -> bool:
    return hasattr(encoder, "encode_windows") and hasattr(encoder, "geometry")


class StreamingFeatures:
    """Audio windows of each frame of a (possibly live) audio stream.

    Args:
        encoder: the audio encoder the model was trained with.
        chunks: an iterable of mono float audio chunks ``[n]`` at 16 kHz (any sizes), pulled
            lazily when a frame needs more audio; or None and :meth:`push` / :meth:`end`.
        context: video frames of audio context on each side of a frame (the model's
            ``audio_context``).
        frames_per_latent: video frames per latent frame of the model's codec (the module doc):
            ``ensure``, ``ready``, ``windows`` and ``release`` then count latent frames.

    ``windows(t0, n)`` gives ``[n, La, Da]`` with ``La = (k + 2 context) * 2`` (``[n, La, K, Da]``
    for an encoder of ``K = layers > 1`` stacked layers).
    """

    def __init__(
        self,
        encoder: AudioEncoder,
        chunks: Iterable[np.ndarray | torch.Tensor] | None = None,
        *,
        context: int = 2,
        frames_per_latent: int = 1,
    ) -> None:
        if isinstance(context, bool) or not isinstance(context, int) or context < 0:
            raise ValueError(f"context must be a non-negative integer, got {context!r}")
        k = frames_per_latent
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"frames_per_latent must be a positive integer, got {k!r}")
        self.encoder, self.context, self.frames_per_latent = encoder, context, k
        self.layers = encoder.layers  # K: windows are [n, La, K, Da] when K > 1
        self.windowed = _is_windowed(encoder)
        self.local = _is_local(encoder) or self.windowed  # features as the audio arrives
        self._next_window = 0  # windowed encoders: the next window to compute
        self._source: Iterator | None = iter(chunks) if chunks is not None else None
        self._audio = torch.zeros(0)  # received samples from absolute index self._a0
        self._a0 = 0
        self.received = 0  # samples received so far
        # Features from absolute index self._f0: [L, Da], or [L, K, Da] for K stacked layers.
        layers = (encoder.layers,) if encoder.layers > 1 else ()
        self._feats = torch.zeros(0, *layers, encoder.dim)
        self._f0 = 0
        self.ended = False

    # Input ------------------------------------------------------------------------------------

    def push(self, chunk: np.ndarray | torch.Tensor) -> None:
        """Appends mono float audio ``[n]`` at 16 kHz."""
        if self.ended:
            raise ValueError("push() after end(): the audio stream is closed")
        chunk = torch.as_tensor(np.asarray(chunk, dtype=np.float32)).reshape(-1)
        if chunk.ndim != 1 or not bool(torch.isfinite(chunk).all()):
            raise ValueError("audio chunks must be finite mono float samples [n]")
        self._audio = torch.cat([self._audio, chunk])
        self.received += chunk.numel()
        if self.windowed:
            self._encode_windows(self.received)
        elif self.local:
            self._encode_available()

    def end(self) -> None:
        """Closes the stream: the clip is ``ceil(received / 640)`` frames long."""
        if self.ended:
            return
        if self.received == 0:
            raise ValueError("the audio stream is empty: need at least one sample")
        self.ended = True
        T = self.num_frames
        pad = SAMPLES_PER_VIDEO_FRAME * T - self.received
        self._audio = torch.cat([self._audio, torch.zeros(pad)])
        if not self.local:
            full = features_for_frames(self.encoder, self._audio, T)
            self._feats, self._f0 = full, 0
            return
        if self.windowed:  # the rest of the windows read zeros past the clip's end
            self._encode_windows(None, last=self.encoder.geometry.num_windows(T))
            self._feats = self._feats[: max(R * T - self._f0, 0)]
            return
        # The tail: features up to 2T, the last ones reflection-padded at the clip's end
        # exactly as the whole clip's features are.
        i0 = self._f0 + self._feats.shape[0]
        if i0 < R * T:
            feats = self._encode_from(i0, self._a0 + self._audio.numel())
            self._feats = torch.cat([self._feats, feats[: R * T - i0]])

    def _pull(self) -> bool:
        """Pulls one chunk from the source; False when there is none (then the stream ends)."""
        if self._source is None or self.ended:
            return False
        try:
            chunk = next(self._source)
        except StopIteration:
            self._source = None
            self.end()
            return False
        self.push(chunk)
        return True

    # Features ---------------------------------------------------------------------------------

    def _encode_from(self, i0: int, stop: int) -> torch.Tensor:
        """Features ``i0, i0 + 1, ...`` from the received audio up to absolute sample ``stop``
        (the encoder reflection-pads past ``stop``; callers keep only exact ones)."""
        start = 0 if i0 == 0 else HOP * (i0 - 1)
        seg = self._audio[start - self._a0 : stop - self._a0]
        with _one_thread():
            feats = self.encoder.encode(seg)
        return feats if i0 == 0 else feats[1:]

    def _encode_windows(self, received: int | None, last: int | None = None) -> None:
        """Computes every window whose samples have all arrived (``received``), or, at the
        end of the stream, every window before ``last``; then drops the audio no later window
        reads."""
        g = self.encoder.geometry
        w0 = w1 = self._next_window
        if last is not None:
            w1 = max(last, w0)
        else:
            while g.end_sample(w1) <= received:
                w1 += 1
        if w1 == w0:
            return
        step = getattr(self.encoder, "batch_windows", 32)  # a long chunk: bounded batches
        parts = [self._feats]
        for first in range(w0, w1, step):
            windows = cut_windows(self._audio, self._a0, g, first, min(step, w1 - first))
            feats = self.encoder.encode_windows(windows)  # a model's forward: all threads
            parts.append(feats.reshape(-1, *feats.shape[2:]))
        self._feats = torch.cat(parts)
        self._next_window = w1
        cut = min(max(g.start_sample(w1) - self._a0, 0), self._audio.numel())
        self._audio, self._a0 = self._audio[cut:], self._a0 + cut

    def _encode_available(self) -> None:
        """Encodes every feature whose whole window has been received."""
        i0 = self._f0 + self._feats.shape[0]
        # Feature i reads samples [320 i - 200, 320 i + 200).
        i1 = (self.received - HALF) // HOP + 1 if self.received >= HALF else 0
        if i1 <= i0 or self.received <= HALF:
            return
        stop = HOP * (i1 - 1) + HALF
        if i0 == 0:  # reflection padding at the start reads samples 1..200
            stop = max(stop, HALF + 1)
        feats = self._encode_from(i0, stop)[: i1 - i0]
        self._feats = torch.cat([self._feats, feats])

    def _available_features(self) -> int:
        return self._f0 + self._feats.shape[0]

    @property
    def num_frames(self) -> int | None:
        """Video frames of the clip once the stream has ended, else None."""
        if not self.ended:
            return None
        return -(-self.received // SAMPLES_PER_VIDEO_FRAME)

    @property
    def num_latent_frames(self) -> int | None:
        """Latent frames covering the clip once the stream has ended (the last group may run
        past its end), else None."""
        T = self.num_frames
        return None if T is None else latent_frames_covering(T, self.frames_per_latent)

    def frames_started(self) -> int:
        """Frames that have at least one audio sample (known to exist)."""
        return -(-self.received // SAMPLES_PER_VIDEO_FRAME)

    def ready(self, t_end: int) -> bool:
        """True when the windows of (latent) frames ``< t_end`` can be computed now."""
        if self.ended:
            return True
        if not self.local:
            return False
        # Features up to the last group's last frame, + context: [.., 2 (video_end + context)).
        video_end = group_first_frame(t_end, self.frames_per_latent)
        return self._available_features() >= R * (video_end + self.context)

    def ensure(self, t_end: int) -> int:
        """Pulls audio until the windows of (latent) frames ``< t_end`` are ready or the stream
        ends; returns how many are ready (``min(t_end, num_latent_frames)`` once ended)."""
        while not self.ready(t_end) and self._pull():
            pass
        if not self.ready(t_end):
            raise ValueError(
                "the audio stream has no more chunks but was not ended: call end() or pass an "
                "iterable that finishes"
            )
        return t_end if not self.ended else min(t_end, self.num_latent_frames)

    def windows(self, t0: int, n: int) -> torch.Tensor:
        """Audio windows ``[n, La, Da]`` of (latent) frames ``t0 .. t0 + n - 1`` (must be
        ready)."""
        if not self.ready(t0 + n):
            raise ValueError(f"audio for frames [{t0}, {t0 + n}) has not arrived yet")
        c, k = self.context, self.frames_per_latent
        La = (k + 2 * c) * R
        starts = (group_first_frame(torch.arange(n) + t0, k) - c) * R
        idx = starts[:, None] + torch.arange(La)[None, :]
        end = R * self.num_frames if self.ended else None
        valid = idx >= 0 if end is None else (idx >= 0) & (idx < end)
        rel = (idx - self._f0).clamp(0, max(self._feats.shape[0] - 1, 0))
        if bool((valid & (idx < self._f0)).any()):
            raise ValueError(f"frames from {t0} need features already released ({self._f0})")
        mask = valid.reshape(*valid.shape, *(1,) * (self._feats.dim() - 1))
        return self._feats[rel] * mask.to(self._feats.dtype)

    def release(self, t0: int) -> None:
        """Frees features and audio no (latent) frame ``>= t0`` needs any more (bounded
        memory)."""
        keep_f = max(R * (group_first_frame(t0, self.frames_per_latent) - self.context), 0)
        if self.local and keep_f > self._f0:
            drop = min(keep_f - self._f0, self._feats.shape[0])
            self._feats, self._f0 = self._feats[drop:], self._f0 + drop
            if self.windowed:  # its audio is trimmed as windows are computed
                return
            # Keep the audio from the window of the next feature to compute on.
            keep_a = max(HOP * (self._available_features() - 1) - HALF, 0)
            if keep_a > self._a0:
                cut = min(keep_a - self._a0, self._audio.numel())
                self._audio, self._a0 = self._audio[cut:], self._a0 + cut


class BatchedFeatures:
    """Several audio streams as one batched source for :func:`df_infer.stream.sample_stream`:
    ``windows(t0, n)`` is ``[B, n, La, Da]`` (``[B, n, La, K, Da]``), stream ``b``'s windows
    in row ``b``.

    The streams may differ in length: the batch runs until the longest has ended, and a stream
    that has ended reads zero windows past its end, as the last frames of a single stream read
    zeros past the clip's end. Frames past a stream's own end are the caller's to drop; its
    frames before the end are those it gets alone (the model is causal in time)."""

    def __init__(self, streams: list[StreamingFeatures]) -> None:
        if not streams:
            raise ValueError("BatchedFeatures needs at least one stream")
        layers = {(f.layers, f.context, f.frames_per_latent) for f in streams}
        if len(layers) != 1:
            raise ValueError(
                f"the streams differ in layers, context or frames_per_latent: {sorted(layers)}"
            )
        self.streams = streams
        self.layers, self.context = streams[0].layers, streams[0].context

    def ensure(self, t_end: int) -> int:
        """Frames ``< t_end`` that some stream has (every stream pulled as far as it goes)."""
        return max(f.ensure(t_end) for f in self.streams)

    def windows(self, t0: int, n: int) -> torch.Tensor:
        return torch.stack([f.windows(t0, n) for f in self.streams])

    def release(self, t0: int) -> None:
        for f in self.streams:
            # An ended stream keeps its last features: its zero windows past the end index them.
            end = f.num_latent_frames
            f.release(t0 if end is None else min(t0, end))

    @property
    def num_frames(self) -> list[int | None]:
        """Each stream's frames once it has ended (None before)."""
        return [f.num_frames for f in self.streams]


@contextlib.contextmanager
def _one_thread():
    """Runs the enclosed CPU ops on one intra-op thread. Streaming encodes a few hundred
    samples at a time; waking a thread pool for that costs more than the work (a 1,040-sample
    log-mel: 0.9 ms on one thread, 22 ms with two threads on two busy cores, ~10 ms of padding
    alone on the 16-core H100 host, where it stalled the GPU every frame)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def iter_chunks(audio_N: np.ndarray, chunk_samples: int = SAMPLES_PER_VIDEO_FRAME) -> Iterator:
    """Splits audio into chunks as a live source would deliver them."""
    for start in range(0, len(audio_N), chunk_samples):
        yield audio_N[start : start + chunk_samples]
