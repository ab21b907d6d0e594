"""Training windows from a clip store: T latent frames with aligned audio windows, structure
and a reference frame.

Sample ``i`` of a :class:`WindowDataset` is a pure function of ``(seed, i)``: epoch
``e = i // num_clips`` visits the clips in a permutation drawn from ``(seed, e)``, and the
window start and augmentations of sample ``i`` come from a generator seeded with
``(seed, i)``. A run is therefore deterministic given the seed, whatever the number of loader
workers, and resuming is just starting from the number of samples already consumed
(:class:`ResumableSampler`), with no hidden iterator state to save.

Augmentations are the ones that are correct in latent space: the choice of window and of
reference frame, and an optional horizontal flip of the latents (a convolutional codec is
close to flip-equivariant) that applies the clip's structure mirror rule (its metadata's
``struct_mirror``, ``df_data.structure.mirror``: negated and swapped dimensions; SynthTalk's
yaw, roll, tx for stores without one) and mirrors the mouth box (``x0' = W - x1``). A structure
with no known mirror (LivePortrait's) refuses flips: a ValueError when the dataset is built.

Structure normalisation (``WindowConfig.normalize_struct``): the structure is returned as
``(raw - mean) / std`` with the per-dimension statistics of the store's train split
(:func:`df_data.store.struct_stats`, computed once and kept in ``struct_stats.json``); the flip
acts on the raw parameters, before normalisation. Samples stay a pure function of
``(seed, i)`` as long as the statistics are fixed: pass them explicitly (``struct_stats=``) to
pin a run to the ones it started with.

A codec of ``k = frames_per_latent > 1`` video frames per latent frame: latent frame ``j``'s
structure is that of all ``k`` frames of its group (``(j - 1) k + 1 .. j k``; frame 0 ``k``
times for ``j = 0``, as the codec codes it), flattened to ``[k Ds]`` in frame order (the
model's ``struct_raw_dim`` is then ``k Ds``), so nothing per video frame is thrown away; its
audio window covers the group too (:func:`df_models.layers.gather_audio_windows`).

Samples carry ``mouth_box`` ``[T, 4]`` (pixels of the stored frames, ``image_size = (H, W)``)
and ``has_mouth_box``; a clip without boxes gives zeros and False, so clips with and without
boxes batch together.

Legend: T latent frames, C latent channels, h w latent size, Ds structure dim, La audio window,
Da audio feature dim.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from df_core.checks import boolean, non_negative_int, positive_int, unit_float
from df_core.conventions import AUDIO_FEATURES_PER_VIDEO_FRAME, group_first_frame, video_span
from df_data.store import (
    ClipRecord,
    StoreError,
    StructStats,
    load_manifest,
    read_clip,
)
from df_data.store import struct_stats as load_struct_stats
from df_data.structure.mirror import LEGACY_MIRROR, StructMirror, metadata_mirror
from df_models.layers import gather_audio_windows

log = logging.getLogger(__name__)

FLIP_NEGATED = LEGACY_MIRROR.negate  # what a flip negates in stores without a mirror rule


@dataclass(frozen=True, kw_only=True, slots=True)
class WindowConfig:
    frames: int = 16  # T latent frames per sample
    audio_context: int = 2  # video frames of audio context on each side of a latent frame
    ref_other_prob: float = 0.0  # probability of a reference frame other than the first
    hflip_prob: float = 0.0  # probability of a horizontal flip (latents and structure)
    splits: tuple[str, ...] = ("train",)  # which splits of the store to use
    cache_clips: int = 64  # clips kept in memory per worker
    normalize_struct: bool = False  # (raw - mean) / std with the train split's statistics
    ref_tokens: bool = False  # return the reference frame's global tokens (the store has them)

    def __post_init__(self) -> None:
        positive_int("WindowConfig.frames", self.frames)
        non_negative_int("WindowConfig.audio_context", self.audio_context)
        unit_float("WindowConfig.ref_other_prob", self.ref_other_prob)
        unit_float("WindowConfig.hflip_prob", self.hflip_prob)
        if not self.splits or not all(isinstance(s, str) for s in self.splits):
            raise ValueError(
                f"WindowConfig.splits must name at least one split, got {self.splits!r}"
            )
        positive_int("WindowConfig.cache_clips", self.cache_clips)
        boolean("WindowConfig.normalize_struct", self.normalize_struct)
        boolean("WindowConfig.ref_tokens", self.ref_tokens)
        if self.ref_tokens and self.hflip_prob > 0:
            raise ValueError(
                "WindowConfig.hflip_prob > 0 with ref_tokens: the stored reference tokens are of "
                "unflipped frames; set hflip_prob=0"
            )


def _generator(*keys: int) -> torch.Generator:
    seed = 0
    for k in keys:  # a simple, stable mix of the keys (splitmix-style constants)
        seed = (seed * 0x9E3779B97F4A7C15 + k + 0x632BE59BD9B4E019) % (2**63)
    return torch.Generator().manual_seed(seed)


class WindowDataset(Dataset):
    """Map-style dataset of training windows; ``len`` is one epoch (one window per clip), and
    indices beyond it continue into later epochs, so a sampler may run for any number of steps.
    """

    def __init__(
        self,
        store_dir: str | Path,
        config: WindowConfig,
        *,
        seed: int = 0,
        struct_stats: StructStats | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.config = config
        self.seed = seed
        self.struct_stats = struct_stats
        entries = [e for e in load_manifest(self.store_dir) if e.get("split") in config.splits]
        if not entries:
            raise StoreError(
                f"{self.store_dir}: no clips of splits {list(config.splits)} in manifest.jsonl"
            )
        short = [e["clip_id"] for e in entries if int(e["latent_frames"]) < config.frames]
        if short:
            log.warning(
                "%d clips shorter than %d latent frames are skipped: %s",
                len(short),
                config.frames,
                short[:5],
            )
        self.entries = sorted(
            (e for e in entries if int(e["latent_frames"]) >= config.frames),
            key=lambda e: e["clip_id"],
        )
        if not self.entries:
            raise StoreError(
                f"{self.store_dir}: no clip has at least WindowConfig.frames={config.frames} latent frames"
            )
        self._cache: OrderedDict[str, ClipRecord] = OrderedDict()
        if config.hflip_prob > 0:  # a store holds one structure: its first clip says the rule
            self._mirror(read_clip(self.store_dir, self.entries[0]["clip_id"]))
        if config.normalize_struct and self.struct_stats is None:
            self.struct_stats = load_struct_stats(self.store_dir)
        if config.normalize_struct:
            names = list(
                read_clip(self.store_dir, self.entries[0]["clip_id"]).metadata.get(
                    "struct_names", []
                )
            )
            if list(self.struct_stats.names) != names:
                raise StoreError(
                    f"{self.store_dir}: struct stats are for {list(self.struct_stats.names)}, "
                    f"the clips have struct_names {names}"
                )

    def __len__(self) -> int:
        return len(self.entries)

    def clip_for_index(self, index: int) -> str:
        n = len(self.entries)
        epoch, pos = divmod(index, n)
        perm = torch.randperm(n, generator=_generator(self.seed, epoch))
        return self.entries[int(perm[pos])]["clip_id"]

    def _clip(self, clip_id: str) -> ClipRecord:
        if clip_id in self._cache:
            self._cache.move_to_end(clip_id)
            return self._cache[clip_id]
        record = read_clip(self.store_dir, clip_id)
        self._cache[clip_id] = record
        if len(self._cache) > self.config.cache_clips:
            self._cache.popitem(last=False)
        return record

    def _mirror(self, record: ClipRecord) -> StructMirror:
        """The clip's mirror rule; ValueError when its structure has no known mirror."""
        meta = record.metadata
        names = list(meta.get("struct_names", []))
        mirror = metadata_mirror(meta, f"{self.store_dir} clip {record.clip_id!r}")
        if mirror is None:
            raise ValueError(
                f"{self.store_dir}: WindowConfig.hflip_prob={self.config.hflip_prob} but clip "
                f"{record.clip_id!r} has structure {meta.get('struct_extractor')!r} with no known "
                "mirror (struct_mirror.known is false: its left/right correspondence is "
                "unknown): set hflip_prob=0 or use a structure with a mirror rule (e.g. mesh)"
            )
        if mirror is LEGACY_MIRROR:  # old stores: negate those of its names that are present
            mirror = StructMirror(tuple(n for n in mirror.negate if n in names))
        return mirror

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            raise IndexError(f"index must be >= 0, got {index}")
        c = self.config
        clip_id = self.clip_for_index(index)
        record = self._clip(clip_id)
        meta = record.metadata
        fpl = int(meta.get("frames_per_latent", 1))
        total = record.latents.shape[0]
        g = _generator(self.seed, 1_000_003, index)

        # Step 1: the window.
        start = int(torch.randint(0, total - c.frames + 1, (1,), generator=g))
        latents = record.latents[start : start + c.frames].float()
        struct = _group_struct(record.struct, start, c.frames, fpl)  # [T * fpl, Ds], a copy
        features = record.audio_features.float()
        audio = gather_audio_windows(
            features[None],
            c.frames,
            feats_per_frame=AUDIO_FEATURES_PER_VIDEO_FRAME,
            frames_per_latent=fpl,
            context=c.audio_context,
            first_frame=start,
        )[0]

        # Step 2: the reference: the first frame, or another frame outside the window (a frame
        # inside it would let the model copy its target). Only image codecs give a frame's
        # latent on its own, so temporal codecs always use the stored first-frame latent.
        if c.ref_tokens:
            ref, ref_index, tokens = self._reference_with_tokens(record, start, g)
        else:
            ref = record.ref_latent.float()
            ref_index = 0
            outside = [j for j in range(total) if not start <= j < start + c.frames]
            if fpl == 1 and outside and float(torch.rand((), generator=g)) < c.ref_other_prob:
                ref_index = outside[int(torch.randint(0, len(outside), (1,), generator=g))]
                ref = record.latents[ref_index].float()

        # Step 3: the horizontal flip, applied to everything that has a left and a right.
        has_box = record.mouth_box is not None
        box = record.mouth_box[start : start + c.frames].clone() if has_box else None
        flipped = float(torch.rand((), generator=g)) < c.hflip_prob
        if flipped:
            latents, ref = latents.flip(-1), ref.flip(-1)
            struct = self._mirror(record).apply(struct, meta["struct_names"])
            if has_box:
                width = float(meta["width"])
                box = torch.stack([width - box[:, 2], box[:, 1], width - box[:, 0], box[:, 3]], 1)

        # Step 4: structure in model space (after the flip, which mirrors raw parameters);
        # each latent frame's group of frames side by side.
        if c.normalize_struct:
            struct = self.struct_stats.normalize(struct)
        struct = struct.reshape(c.frames, -1)

        extra = {"ref_tokens": tokens} if c.ref_tokens else {}  # [R, Dr] of the reference frame
        return {
            **extra,
            "latents": latents,  # [T, C, h, w]
            "struct": struct,  # [T, Ds]
            "audio": audio,  # [T, La, Da]
            "ref_latent": ref,  # [C, h, w]
            "mouth_box": box if has_box else torch.zeros(c.frames, 4),  # [T, 4] pixels
            "has_mouth_box": has_box,
            "image_size": (int(meta.get("height", 0)), int(meta.get("width", 0))),
            "clip_id": clip_id,
            "start": start,
            "ref_index": ref_index,
            "flipped": flipped,
            "index": index,
        }

    def _reference_with_tokens(
        self, record: ClipRecord, start: int, g: torch.Generator
    ) -> tuple[torch.Tensor, int, torch.Tensor]:
        """``(ref latent [C, h, w], its video frame, its tokens [R, Dr])``.

        The reference is frame 0 or, with ``ref_other_prob``, a random one of the frames with
        stored tokens that lies outside the window's video frames. Its latent is that frame's
        for image codecs; a temporal codec has the first frame's latent only, so there the
        tokens come from the other frame and the latent stays frame 0's."""
        c = self.config
        if record.ref_tokens is None:
            raise StoreError(
                f"clip {record.clip_id!r} has no reference tokens ({self.store_dir} was "
                "extracted without --ref-encoder) but WindowConfig.ref_tokens is True"
            )
        fpl = int(record.metadata.get("frames_per_latent", 1))
        first = video_span(start, fpl)[0]  # the window's video frames
        stop = video_span(start + c.frames - 1, fpl)[1]
        at = record.ref_token_frames.tolist()
        outside = [k for k, f in enumerate(at) if not first <= f < stop]
        k = 0
        if outside and float(torch.rand((), generator=g)) < c.ref_other_prob:
            k = outside[int(torch.randint(0, len(outside), (1,), generator=g))]
        frame = at[k]
        ref = record.latents[frame].float() if fpl == 1 and k else record.ref_latent.float()
        return ref, frame, record.ref_tokens[k].float()


def _group_struct(struct_TDs: torch.Tensor, start: int, frames: int, fpl: int) -> torch.Tensor:
    """The structure of the video frames of latent frames ``start .. start + frames - 1``,
    ``[frames * fpl, Ds]`` float32 in group order (latent frame 0's group is frame 0, ``fpl``
    times)."""
    latent = torch.arange(start, start + frames)
    first = group_first_frame(latent, fpl)[:, None] + torch.arange(fpl)[None, :]
    return struct_TDs[first.clamp(min=0).reshape(-1)].float()


class ResumableSampler(Sampler[int]):
    """Yields sample indices ``start, start + world, ...`` (this rank's share) for ``num_samples``
    samples; resuming after ``n`` consumed samples per rank is ``start = n``."""

    def __init__(
        self, num_samples: int, *, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if num_samples < 0 or start < 0:
            raise ValueError(f"num_samples and start must be >= 0, got {num_samples}, {start}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.num_samples, self.start, self.rank, self.world_size = (
            num_samples,
            start,
            rank,
            world_size,
        )

    def __iter__(self):
        for k in range(self.start, self.num_samples):
            yield k * self.world_size + self.rank

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def collate_windows(samples: list[dict]) -> dict:
    """Stacks tensors, makes a bool tensor of ``has_mouth_box`` and keeps the other bookkeeping
    fields as lists."""
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif key == "has_mouth_box":
            out[key] = torch.tensor(values, dtype=torch.bool)
        else:
            out[key] = values
    return out
