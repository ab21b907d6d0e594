"""The streaming talking-head generator: checkpoint + reference image + audio -> frames.

    gen = StreamingGenerator.from_bundle("runs/demo/bundle", device="auto")
    for frame in gen.frames("face.png", "speech.wav", gen.default_sampler(steps=4)):
        frame.image   # uint8 [H, W, 3], ready as soon as its last denoising step is done
        frame.struct  # float32 [Ds]: the generated head pose + expression (raw units)

Audio may be a wav path (any rate and channel count: downmixed, resampled to 16 kHz), a mono
float array at 16 kHz, or an iterable of such chunks (live input: each frame is generated once
its audio, plus the model's look-ahead, has arrived).

A codec that compresses time (``frames_per_latent = k > 1``, the 1 + 4n layout of
:mod:`df_core.conventions`) streams too: the sampler works in latent frames, each reading its
group's audio, and each latent frame is decoded to its video frames (``decode_groups``: the
first latent frame to frame 0, every later one to its k frames) as soon as it is clean. A clip
of any length works: the last group is cut at the audio's end. The structure stream carries the
structure of all k frames of a latent frame's group (``struct_raw_dim = k Ds``, as training
windows group it, :mod:`df_data.dataset`): each video frame gets its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from df_core.conventions import latent_frames_covering, video_span
from df_data.encoders import audio_encoder_from_identity
from df_data.features import AudioEncoder
from df_data.media import read_wav
from df_infer.audio import BatchedFeatures, StreamingFeatures, iter_chunks
from df_infer.sampler_config import SamplerConfig, bundle_sampler, resolve_sampler
from df_infer.stream import sample_stream
from df_models import DualForceDiT
from df_models.bundle import InferenceMeta, read_bundle
from df_models.codecs import load_codec

COMPILE_MODES = ("none", "blocks", "stream", "stream-graphs")


@dataclass(frozen=True, kw_only=True, slots=True)
class Frame:
    index: int  # video frame index (25 fps)
    image: np.ndarray  # uint8 [H, W, 3]
    struct: np.ndarray | None  # float32 [Ds] in the units of the training data
    ready_s: float  # seconds since the generator started


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
    return device


def load_image(image: str | Path | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An RGB image as uint8 ``[H, W, 3]`` at ``size = (H, W)``: centre-cropped to the aspect
    ratio, then resized (Lanczos). Paths are read with Pillow; arrays may be uint8 or float in
    [0, 1], HWC, RGB or grey."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"reference image {str(path)!r} does not exist")
        try:
            with Image.open(path) as im:
                pil = im.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"reference image {str(path)!r} is not a readable image ({e})") from e
    else:
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4) or min(arr.shape[:2]) < 1:
            raise ValueError(f"reference image array must be [H, W, 3], got shape {arr.shape}")
        if arr.dtype != np.uint8:
            if not np.isfinite(arr).all():
                raise ValueError("reference image array has NaN or inf values")
            arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        pil = Image.fromarray(arr[..., :3])
    H, W = size
    w, h = pil.size
    scale = min(w / W, h / H)
    cw, ch = round(W * scale), round(H * scale)
    left, top = (w - cw) // 2, (h - ch) // 2
    pil = pil.crop((left, top, left + cw, top + ch))
    if pil.size != (W, H):
        pil = pil.resize((W, H), Image.Resampling.LANCZOS)
    return np.array(pil, dtype=np.uint8)


def audio_source(audio) -> Iterable:
    """A wav path, a mono float array at 16 kHz, or an iterable of chunks -> an iterable of
    chunks."""
    if isinstance(audio, str | Path):
        return iter_chunks(read_wav(audio))
    if isinstance(audio, np.ndarray | torch.Tensor):
        arr = np.asarray(audio, dtype=np.float32)
        if arr.ndim != 1:
            raise ValueError(f"audio array must be mono [N] at 16 kHz, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError("audio array is empty")
        return iter_chunks(arr)
    return audio


class StreamingGenerator:
    """A model, its codec and its audio encoder on one device, ready to stream."""

    def __init__(
        self,
        model: DualForceDiT,
        codec,
        meta: InferenceMeta,
        *,
        encoder: AudioEncoder | None = None,
        ref_encoder=None,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
        audio_model: str | None = None,
        ref_model: str | None = None,
    ) -> None:
        """``encoder`` / ``ref_encoder``: default, the ones ``meta`` records, rebuilt (from
        ``audio_model`` / ``ref_model`` when given: where their files are now) and refused
        when their weights or settings differ from the record."""
        self.device = resolve_device(device)
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        k, c_model = codec.frames_per_latent, model.config
        if k != c_model.frames_per_latent:
            raise ValueError(
                f"the codec puts {k} video frames in a latent frame, the model was built for "
                f"frames_per_latent={c_model.frames_per_latent}"
            )
        if c_model.struct_enabled and c_model.struct_raw_dim % k:
            raise ValueError(
                f"the model's struct_raw_dim {c_model.struct_raw_dim} is not a whole number of "
                f"structures for the {k} video frames of a latent frame"
            )
        if k != 1 and not hasattr(codec, "decode_groups"):
            raise ValueError(
                f"streaming decodes each latent frame as soon as it is clean; the codec "
                f"{type(codec).__name__} (frames_per_latent={k}) has no decode_groups (a "
                "causal video VAE that needs a temporal cache is not supported yet)"
            )
        self.model = model.to(self.device, dtype).eval()
        self.codec = codec.to(self.device).eval()
        self.meta = meta
        self.encoder = (
            encoder
            if encoder is not None
            else audio_encoder_from_identity(
                meta.audio_encoder, model=audio_model, device=self.device
            )
        )
        c = model.config
        if self.encoder.dim != c.audio_dim or self.encoder.layers != c.audio_layers:
            raise ValueError(
                f"audio encoder {self.encoder.name!r} gives {self.encoder.layers} layer(s) of "
                f"{self.encoder.dim} features, the model expects audio_layers={c.audio_layers} "
                f"of audio_dim={c.audio_dim}"
            )
        self.ref_encoder = _ref_encoder(meta, c, ref_encoder, ref_model, self.device)
        if meta.struct_mean is not None and len(meta.struct_mean) * k != c.struct_raw_dim:
            group = f" ({k} video frames per latent frame)" if k > 1 else ""
            raise ValueError(
                f"inference.json struct_mean has {len(meta.struct_mean)} values, the model's "
                f"struct_raw_dim is {c.struct_raw_dim}{group}"
            )
        f = codec.spatial_factor
        if (meta.image_size[0] // f, meta.image_size[1] // f) != (c.latent_height, c.latent_width):
            raise ValueError(
                f"inference.json image_size {meta.image_size} with the codec's factor {f} gives "
                f"latents {meta.image_size[0] // f}x{meta.image_size[1] // f}, the model expects "
                f"{c.latent_height}x{c.latent_width}"
            )
        bundle_sampler(meta)  # a bad recommended sampler is named now, not at the first frame
        # The exact streaming levers (df_infer.stream.sample_stream); off only to measure them.
        self.cache_modulations = True
        self.key_only_clean = True
        # Decode on a second CUDA stream, beside the next chunk's passes (see _queue_decode;
        # a no-op off CUDA). The same kernels on the same values; off until its speed is
        # measured (issue 18).
        self.decode_stream = False
        self._side: torch.cuda.Stream | None = None
        self._cache = None
        self._struct_stats = None  # on the device once, not copied per frame
        if meta.struct_mean is not None:
            self._struct_stats = tuple(
                torch.tensor(v, dtype=torch.float32, device=self.device)
                for v in (meta.struct_mean, meta.struct_std)
            )

    @classmethod
    def from_bundle(
        cls,
        directory: str | Path,
        *,
        device: str | torch.device = "auto",
        dtype=None,
        audio_model: str | None = None,
        ref_model: str | None = None,
    ) -> StreamingGenerator:
        """The bundle's model, codec and encoders (``audio_model`` / ``ref_model``: where the
        recorded encoders' files are, when not where extraction found them)."""
        model_dir, codec_dir, meta = read_bundle(directory)
        model = DualForceDiT.from_pretrained(model_dir)
        codec = load_codec(codec_dir)
        return cls(
            model,
            codec,
            meta,
            device=device,
            dtype=dtype,
            audio_model=audio_model,
            ref_model=ref_model,
        )

    def fp8(self) -> StreamingGenerator:
        """Runs the video-token linears in FP8 (rowwise scales; compute capability 8.9+, a
        bf16 generator, before :meth:`compile`); returns ``self``. See :mod:`df_infer.fp8`."""
        from df_infer.fp8 import fp8_linears

        fp8_linears(self.model)
        return self

    def compile(self, mode: str = "stream") -> StreamingGenerator:
        """Compiles the hot loop with ``torch.compile`` (returns ``self``).

        Modes: ``none``; ``blocks`` (each transformer block); ``stream`` (the whole streaming
        pass, ``model.forward_chunk``: one graph per pass shape, the KV cache written in place;
        and the codec's decoder, whose GroupNorms over one 512 x 512 frame are slow eager
        kernels); ``stream-graphs`` (the same, the pass replayed as CUDA graphs,
        ``mode="reduce-overhead"``: removes the per-kernel launch cost that dominates
        one-frame passes). The first passes of each shape compile (minutes for large models);
        later streams reuse the compiled code.
        """
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
        if mode == "blocks":
            for block in self.model.blocks:
                block.compile(dynamic=False)
        elif mode in ("stream", "stream-graphs"):
            # One graph per pass shape: masked or not, full or key-only clean pass, and the
            # chunk lengths of the schedule (fused clean passes and a shorter last chunk add
            # more). Past dynamo's default limit of 8 a pass would silently run eagerly.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
            options = {"mode": "reduce-overhead"} if mode == "stream-graphs" else {}
            self.model.forward_chunk = torch.compile(
                self.model.forward_chunk, dynamic=False, **options
            )
            self.codec.decode = torch.compile(self.codec.decode, dynamic=False)
        return self

    def default_sampler(self, **overrides) -> SamplerConfig:
        """The sampler the bundle recommends (``InferenceMeta.sampler``: the settings it was
        evaluated with) with ``overrides`` by field name, and the training's noise settings
        (shift, sigma_s_max, sigma_ctx) wherever neither sets them."""
        return bundle_sampler(self.meta, **overrides)

    @torch.no_grad()
    def encode_reference(self, image) -> torch.Tensor:
        """The reference image's normalised latent ``[1, C, h, w]``."""
        img = load_image(image, self.meta.image_size)
        video = torch.from_numpy(img).permute(2, 0, 1).float().div(127.5).sub(1.0)
        z = self.codec.encode(video[None, None].to(self.device), check_range=False)
        return z[:, 0]

    @torch.no_grad()
    def reference_tokens(self, image) -> torch.Tensor | None:
        """The global reference tokens ``[1, R, ref_feature_dim]`` of the image (at the
        training frames' size, as extraction computed them), or None for a model without."""
        if not self.model.config.ref_tokens_enabled:
            return None
        if self.ref_encoder is None:
            raise ValueError(
                "the model has reference tokens (ref_tokens_enabled), but inference.json records "
                "no ref_encoder to compute them with: pass ref_feats_BRD, or re-export the "
                "bundle from a store extracted with --ref-encoder"
            )
        img = load_image(image, self.meta.image_size)
        return self.ref_encoder.encode(img[None]).to(self.device, self.dtype)

    def _struct_raw(self, s_BnDs: torch.Tensor) -> torch.Tensor:
        if self._struct_stats is None:
            return s_BnDs
        mean, std = self._struct_stats
        return s_BnDs * std + mean

    @torch.no_grad()
    def frames(
        self,
        reference,
        audio,
        sampler: SamplerConfig | None = None,
        *,
        max_frames: int | None = None,
        window: int | None = None,
        ref_feats_BRD: torch.Tensor | None = None,
    ) -> Iterator[Frame]:
        """Yields each frame as soon as it is generated and decoded (see the module doc).

        ``sampler``: None is :meth:`default_sampler`; a :class:`SamplerConfig` built by hand
        is taken as it is, except the noise settings it leaves None (shift, sigma_s_start,
        sigma_ctx), which come from the bundle's training. ``ref_feats_BRD`` are the global
        reference features ``[1, R, ref_feature_dim]`` of a model with reference tokens (from
        the image encoder it was trained with); None computes them from ``reference`` with the
        bundle's reference encoder."""
        ref_feats = None if ref_feats_BRD is None else [ref_feats_BRD]
        for frames in self._stream([reference], [audio], sampler, max_frames, window, ref_feats):
            yield frames[0]

    @torch.no_grad()
    def frames_batch(
        self,
        references: list,
        audios: list,
        sampler: SamplerConfig | None = None,
        *,
        seeds: list[int] | None = None,
        max_frames: int | None = None,
        window: int | None = None,
    ) -> Iterator[list[Frame | None]]:
        """Several clips generated together, one batch through the model: yields, per frame
        index, one :class:`Frame` per clip (None for a clip whose audio has ended).

        Clip ``b`` is the video :meth:`frames` makes of ``references[b]`` and ``audios[b]``
        with the sampler's seed, or ``seeds[b]``: its noise is its own, and the model is
        causal in time, so a shorter clip's frames do not see the longer clips' audio (to the
        float rounding of a larger batch). Small models are bound by per-op overhead, so a batch
        costs little more than one clip (measured on 1 CPU thread, the demo's model: 4 clips
        in 24 s, one in 23 s)."""
        if len(references) != len(audios) or not references:
            raise ValueError(
                f"frames_batch: {len(references)} references for {len(audios)} audio sources; "
                "give one reference per audio source (at least one)"
            )
        cfg = self.default_sampler() if sampler is None else resolve_sampler(sampler, self.meta)
        if seeds is None:
            seeds = [cfg.seed] * len(references)
        yield from self._stream(references, audios, cfg, max_frames, window, None, seeds)

    def _stream(self, references, audios, sampler, max_frames, window, ref_feats, seeds=None):
        """The frames of a batch of streams, per frame index a list (None: that clip ended)."""
        start = time.perf_counter()
        cfg = self.default_sampler() if sampler is None else resolve_sampler(sampler, self.meta)
        ref = torch.cat([self.encode_reference(r) for r in references]).to(self.dtype)
        if ref_feats is None:
            tokens = [self.reference_tokens(r) for r in references]
            ref_feats = None if tokens[0] is None else tokens
        ref_feats_BRD = None if ref_feats is None else torch.cat(ref_feats)
        context, k = self.model.config.audio_context, self.codec.frames_per_latent
        streams = [
            StreamingFeatures(self.encoder, audio_source(a), context=context, frames_per_latent=k)
            for a in audios
        ]
        feats = streams[0] if len(streams) == 1 else BatchedFeatures(streams)
        B = len(references)
        batch = 2 * B if cfg.guided else B
        # Take the cache for this stream: a second stream started while this one runs gets a
        # cache of its own instead of overwriting this one's keys and values.
        cache, self._cache = self._cache, None
        want_window = window if window is not None else self.model.config.window
        if (
            cache is None
            or cache.batch != batch
            or cache.max_chunk < cfg.max_pass_frames
            or cache.window != want_window
        ):
            cache = self.model.new_cache(
                batch, window=window, max_chunk=cfg.max_pass_frames, device=self.device
            )
        stream = sample_stream(
            self.model,
            ref,
            feats,
            cfg,
            max_frames=None if max_frames is None else latent_frames_covering(max_frames, k),
            cache=cache,
            ref_feats_BRD=ref_feats_BRD,
            seeds=seeds,
            cache_modulations=self.cache_modulations,
            key_only_clean=self.key_only_clean,
        )
        lookahead = all(isinstance(a, str | Path | np.ndarray | torch.Tensor) for a in audios)
        try:
            for frames in self._decoded(stream, start, lookahead):
                if max_frames is not None and frames[0].index >= max_frames:
                    break  # the rest of the last group
                ends = [f.num_frames for f in streams]
                kept = [
                    f if end is None or f.index < end else None
                    for f, end in zip(frames, ends, strict=True)
                ]
                if any(f is not None for f in kept):  # not past every clip's end
                    yield kept
        finally:
            self._cache = cache  # reused (reset) by the next call: no reallocation

    def _decoded(self, stream, start: float, lookahead: bool) -> Iterator[list[Frame]]:
        """Decodes each chunk of the sampler to host frames (per frame index, one per batch
        element).

        Decoding and the copy to the host are queued on the device without waiting. With
        ``lookahead`` (audio already all there: a file or an array) a chunk's frames are handed
        out only after the next chunk's passes have been queued, so the device does not wait
        while the host waits for a copy, hands out frames or prepares the next passes; a
        chunk is still handed out as soon as its copy has landed (the queued passes run
        behind it). Live input hands each chunk out at once: the next chunk may have to wait
        for audio that has not arrived.
        """
        pending = None
        for out in stream:
            queued = self._queue_decode(out)
            if pending is not None:
                yield from self._hand_out(pending, start)
            if lookahead:
                pending = queued
            else:
                yield from self._hand_out(queued, start)
        if pending is not None:
            yield from self._hand_out(pending, start)

    def _queue_decode(self, out) -> _Decoded:
        """Queues the decode of a chunk of latent frames ``out`` to its video frames.

        With ``decode_stream`` (CUDA) the decode and the copy to the host go on a second
        stream, which waits for the passes that made the chunk and nothing after: the next
        chunk's passes, queued behind on the main stream, run beside it and fill the GPU
        where one-frame passes leave it idle."""
        if self.device.type != "cuda" or not self.decode_stream:
            return self._decode(out)
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        self._side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._side):
            decoded = self._decode(out)
        # The chunk's tensors came from the main stream's pool: not to be reused there
        # before the side stream has read them (the sampler makes new ones each step, so
        # nothing writes them in place).
        for t in (out.z, out.s):
            if t is not None:
                t.record_stream(self._side)
        return decoded

    def _decode(self, out) -> _Decoded:
        cuda = self.device.type == "cuda"
        half = cuda and self.dtype in (torch.bfloat16, torch.float16)
        k = self.codec.frames_per_latent
        z = out.z.to(torch.float32)
        with torch.autocast(self.device.type, self.dtype, enabled=half):
            # [B, n_video, 3, H, W] in [-1, 1]
            video = self.codec.decode(z) if k == 1 else self.codec.decode_groups(z, out.t0 == 0)
        images = video.float().permute(0, 1, 3, 4, 2).add(1.0).mul(127.5).round().clamp(0, 255)
        images = images.to(torch.uint8)
        structs = None
        if out.s is not None:
            structs = self._struct_raw(frame_structs(out.s.float(), out.t0 == 0, k))
        t0 = video_span(out.t0, k)[0]  # the chunk's first video frame
        if not cuda:
            return _Decoded(t0, images, structs, None)
        host = torch.empty(images.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(images, non_blocking=True)
        host_s = None
        if structs is not None:
            host_s = torch.empty(structs.shape, dtype=structs.dtype, pin_memory=True)
            host_s.copy_(structs, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return _Decoded(t0, host, host_s, done)

    def _hand_out(self, d: _Decoded, start: float) -> Iterator[list[Frame]]:
        if d.done is not None:
            d.done.synchronize()
        # Copies out of the pinned buffers, which go back to the allocator's pool.
        images = d.images.numpy().copy()
        structs = d.structs.numpy().copy() if d.structs is not None else None
        now = time.perf_counter() - start
        for j in range(images.shape[1]):
            yield [
                Frame(
                    index=d.t0 + j,
                    image=images[b, j],
                    struct=structs[b, j] if structs is not None else None,
                    ready_s=now,
                )
                for b in range(images.shape[0])
            ]


def frame_structs(s_BnDs: torch.Tensor, first: bool, frames_per_latent: int) -> torch.Tensor:
    """Per video frame structure ``[B, n_video, Ds]`` of ``n`` consecutive latent frames'
    grouped structure ``[B, n, k Ds]`` (each latent frame: its group's k frames side by side;
    ``first``: the chunk starts at latent frame 0, which stands for frame 0 alone, the last of
    its k equal slots). For ``k = 1`` the input itself."""
    k = frames_per_latent
    if k == 1:
        return s_BnDs
    groups = s_BnDs.reshape(*s_BnDs.shape[:2], k, -1)  # [B, n, k, Ds]
    if not first:
        return groups.flatten(1, 2)
    return torch.cat([groups[:, 0, -1:], groups[:, 1:].flatten(1, 2)], 1)


@dataclass(frozen=True, slots=True)
class _Decoded:
    """A chunk's frames on their way to the host: ``images`` uint8 ``[B, n, H, W, 3]``,
    ``structs`` ``[B, n, Ds]``, ready once ``done`` (None: already on the host)."""

    t0: int
    images: torch.Tensor
    structs: torch.Tensor | None
    done: torch.cuda.Event | None


def _ref_encoder(meta: InferenceMeta, c, given, model: str | None, device: torch.device):
    """The reference encoder of a model with reference tokens, checked against the model's
    ``ref_feature_dim``; None for a model without them or a bundle that records none."""
    if not c.ref_tokens_enabled:
        return None
    if given is None:
        if meta.ref_encoder is None:
            return None  # the caller must pass ref_feats_BRD (reference_tokens says so)
        from df_data.encoders.image import ref_encoder_from_identity

        given = ref_encoder_from_identity(meta.ref_encoder, model=model, device=device)
    if given.dim != c.ref_feature_dim:
        raise ValueError(
            f"reference encoder {given.name!r} gives {given.dim} features, the model expects "
            f"ref_feature_dim={c.ref_feature_dim}"
        )
    return given
