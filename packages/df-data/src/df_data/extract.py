"""Extraction: source clip directories -> the clip store (``df_data.store`` describes the format).

Every source under ``src_dir`` (``df_data.sources``: what a source is and how it is validated)
is turned into a store record (``df_data.record``: the per-clip steps and the hooks) and written
atomically. The store's ``store.json`` records the codec directory (when the codec was given as
one) and the codec and audio encoder identity, so that training can ship the codec with its
weights. A failing source is recorded in ``failures.jsonl`` with a ``kind`` and a reason; the
run goes on. On a re-run finished clips are skipped, and so are sources whose earlier failure is
a property of the data (every kind except ``"error"``, an unexpected exception) unless
``retry_failed``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from df_core.checks import positive_int
from df_data.encoders import same_encoder
from df_data.encoders.spec import add_encoder_arguments, spec_from_args
from df_data.features import AudioEncoder, LogMelEncoder
from df_data.media import MediaError
from df_data.record import FrameTransform, Vad, build_record
from df_data.sources import (
    SourceError,
    StructExtractor,
    discover_sources,
    read_source,
    read_source_metadata,
)
from df_data.store import (
    ClipExistsError,
    StoreError,
    append_failure,
    finished_clip_ids,
    load_failures,
    load_manifest,
    read_metadata,
    repair_store,
    update_store_info,
    write_clip_record,
)
from df_data.structure import extractor_identity
from df_models.codecs import LatentCodec, codec_identity, load_codec

logger = logging.getLogger(__name__)

RETRYABLE_KINDS = frozenset({"error"})  # other failure kinds are properties of the source


def _check_same_encoders(
    out_dir: Path,
    codec_id: dict[str, str],
    encoder_id: dict[str, Any],
    ref_id: dict[str, Any] | None = None,
) -> None:
    """A store holds latents of one codec and features of one audio (and reference) encoder:
    compare with a clip (encoders by name and config hash: their files may have moved)."""
    for entry in load_manifest(out_dir):
        try:
            meta = read_metadata(out_dir, entry["clip_id"])
        except StoreError:
            continue
        if (
            meta.get("codec") != codec_id
            or not same_encoder(meta.get("audio_encoder"), encoder_id)
            or not same_encoder(meta.get("ref_encoder"), ref_id)
        ):
            raise ValueError(
                f"{out_dir} was written with codec {meta.get('codec')}, audio encoder "
                f"{meta.get('audio_encoder')} and reference encoder {meta.get('ref_encoder')}; "
                f"this run has {codec_id}, {encoder_id} and {ref_id}: use a new output directory"
            )
        return


def extract_store(
    src_dir: str | Path,
    out_dir: str | Path,
    *,
    codec: LatentCodec | str | Path,
    encoder: AudioEncoder | None = None,
    batch_frames: int = 16,
    progress: bool = True,
    frame_transform: FrameTransform | None = None,
    vad: Vad | None = None,
    min_speech_ratio: float = 0.0,
    device: torch.device | str | None = None,
    retry_failed: bool = False,
    struct_extractor: StructExtractor | None = None,
    read_workers: int = 4,
    ref_encoder: Any = None,
    ref_frames: int = 8,
    shard: tuple[int, int] | None = None,
    sync_each_clip: bool = True,
) -> dict[str, Any]:
    """Extracts every source under ``src_dir`` into the store ``out_dir``; resumable.

    Args:
        src_dir: searched recursively for directories holding ``video.mp4``.
        out_dir: the clip store (created if needed).
        codec: a ``LatentCodec`` or a directory to load one from (``load_codec``); used in
            eval mode (its previous mode is restored at the end).
        encoder: the audio encoder; ``LogMelEncoder()`` by default. A pretrained one runs on
            the device it was built on (``EncoderSpec.build_audio(device)``), a batch of
            windows per call.
        ref_encoder, ref_frames: a ``df_data.encoders.image.RefEncoder`` storing the global
            reference tokens of ``ref_frames`` frames per clip (optional).
        batch_frames: frames per codec call for image codecs.
        progress: show a tqdm bar.
        frame_transform, vad, min_speech_ratio: hooks (module doc).
        device: where to run the codec; None keeps the codec where it is (CPU when loaded).
        retry_failed: also retry sources whose earlier failure is a property of the data.
        struct_extractor: the structure of sources without ``gt.safetensors`` (the real clips
            ``dualforce data prepare`` writes); without one they fail as ``no_structure``.
        read_workers: threads decoding the next sources while the current one is encoded
            (one when ``struct_extractor`` is given). The store is the same for any number;
            up to ``2 * read_workers + 1`` decoded sources are held in memory at once.
        shard: ``(index, count)``: only sources ``index, index + count, ...`` (a job array's
            task, ``df_data.extract_run``); shards write disjoint clips into one store.
        sync_each_clip: fsync every clip as it is written (the default). ``False`` writes
            them unsynced (still atomically renamed: whole or absent after a crash of the
            process) and makes the store durable once, with ``os.sync()``, before returning:
            fsync was half the store's time for the gpu demo's small clips. After a power cut
            mid-run, clips of that run may then be lost or damaged (``repair_store`` and
            loading name them); use it where the sources stay and the run can be repeated.

    Returns:
        A summary: ``sources``, ``written``, ``skipped_finished``, ``skipped_failed``,
        ``failed``, ``failures`` (count per kind, this run), ``relisted``, ``removed_tmp``,
        ``latent_frames_written``, ``seconds``.
    """
    if isinstance(batch_frames, bool) or not isinstance(batch_frames, int) or batch_frames < 1:
        raise ValueError(f"batch_frames must be a positive integer, got {batch_frames!r}")
    positive_int("read_workers", read_workers)
    start = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources = _shard(discover_sources(src_dir), shard)
    check_same_structure(out, struct_extractor)
    codec_arg = codec
    codec = load_codec(codec, device)
    encoder = encoder if encoder is not None else LogMelEncoder()
    codec_id = codec_identity(codec)
    ref_id = ref_encoder.identity() if ref_encoder is not None else None
    _check_same_encoders(out, codec_id, encoder.identity(), ref_id)
    info = {"codec": codec_id, "audio_encoder": encoder.identity(), "ref_encoder": ref_id}
    source = getattr(codec, "source", None)  # a diffusers VAE's: folder or hub snapshot
    if isinstance(source, dict) and source.get("hub_id"):
        info["codec_dir"] = source["dir"]  # the snapshot, so training can ship the codec
        info["codec_hub"] = {k: source[k] for k in ("hub_id", "revision", "subfolder")}
    elif isinstance(codec_arg, str | Path):
        info["codec_dir"] = str(Path(codec_arg).resolve())
    update_store_info(out, **info)

    repaired = repair_store(out)
    finished = finished_clip_ids(out)
    failed_before = (
        set()
        if retry_failed
        else {f.get("source") for f in load_failures(out) if f.get("kind") not in RETRYABLE_KINDS}
    )
    summary: dict[str, Any] = {
        "sources": len(sources),
        "written": 0,
        "skipped_finished": 0,
        "skipped_failed": 0,
        "failed": 0,
        "failures": Counter(),
        "relisted": len(repaired["relisted"]),
        "removed_tmp": len(repaired["removed_tmp"]),
        "latent_frames_written": 0,
    }
    ids = _source_ids(sources)
    build_kwargs = {
        "batch_frames": batch_frames,
        "frame_transform": frame_transform,
        "vad": vad,
        "min_speech_ratio": min_speech_ratio,
        "codec_id": codec_id,
        "ref_encoder": ref_encoder,
        "ref_frames": ref_frames,
    }
    todo = []
    for directory in sources:
        if ids[directory] in finished:
            summary["skipped_finished"] += 1
        elif str(directory.resolve()) in failed_before:
            summary["skipped_failed"] += 1
        else:
            todo.append(directory)
    # Sources are read (decoded) ahead on worker threads while the codec encodes the current
    # one: decoding, not encoding, was the stage's time (the gpu demo's 408 small clips took
    # 143 s on one thread of the H200 machine, the GPU idle). A structure extractor is one
    # model, so with one the reads stay on a single background thread, in order.
    workers = 1 if struct_extractor is not None else read_workers
    was_training = codec.training
    codec.eval()
    try:
        with (
            ThreadPoolExecutor(max_workers=workers) as pool,
            tqdm(todo, desc="extract", unit="clip", disable=not progress) as bar,
        ):
            reads: dict[Path, Future] = {}
            ahead = iter(todo)  # the sources not yet submitted, in order
            for directory in bar:
                while len(reads) < 2 * workers + 1 and (nxt := next(ahead, None)) is not None:
                    reads[nxt] = pool.submit(read_source, nxt, struct_extractor)
                _extract_one(
                    directory,
                    ids[directory],
                    out,
                    codec,
                    encoder,
                    build_kwargs,
                    summary,
                    reads,
                    durable=sync_each_clip,
                )
                del reads[directory]  # the decoded clip is done with
                bar.set_postfix(written=summary["written"], failed=summary["failed"])
    finally:
        codec.train(was_training)
    if not sync_each_clip:
        os.sync()
    summary["failures"] = dict(summary["failures"])
    summary["seconds"] = round(time.monotonic() - start, 3)
    logger.info("extraction into %s: %s", out, summary)
    return summary


def _extract_one(
    directory: Path,
    clip_id: str | SourceError,
    out: Path,
    codec: LatentCodec,
    encoder: AudioEncoder,
    build_kwargs: dict[str, Any],
    summary: dict[str, Any],
    reads: dict[Path, Future],
    *,
    durable: bool = True,
) -> None:
    """Extracts one source (read ahead in ``reads``) into the store, or records why not;
    updates ``summary``."""
    source = str(directory.resolve())
    cid = clip_id if isinstance(clip_id, str) else None
    try:
        if isinstance(clip_id, SourceError):
            raise clip_id
        clip = reads[directory].result()
        record = build_record(clip, codec, encoder, **build_kwargs)
        write_clip_record(out, record, durable=durable)
    except ClipExistsError:  # a concurrent run wrote it first; it lists it (or repair does)
        logger.info("clip %s was written by another process meanwhile", cid)
        summary["skipped_finished"] += 1
    except (SourceError, MediaError, StoreError) as e:
        kind = getattr(e, "kind", "decode" if isinstance(e, MediaError) else "invalid_output")
        _record_failure(out, source, cid, kind, str(e), summary)
    except Exception as e:  # one bad clip must not stop a corpus-sized run
        logger.exception("extracting %s failed", directory)
        _record_failure(out, source, cid, "error", f"{type(e).__name__}: {e}", summary)
    else:
        summary["written"] += 1
        summary["latent_frames_written"] += record.latents.shape[0]


def _shard(sources: list[Path], shard: tuple[int, int] | None) -> list[Path]:
    if shard is None:
        return sources
    index, count = shard
    positive_int("shard count", count)
    if not 0 <= index < count:
        raise ValueError(f"shard index must be in [0, {count}), got {index}")
    return sources[index::count]


def check_same_structure(out_dir: Path, extractor: StructExtractor | None) -> None:
    """A store holds one structure: the first finished clip's ``struct_extractor_identity``
    (ground truth: ``{"name": "gt"}``) must be this run's (a store with no clip yet takes
    any); ``store.json`` records it."""
    identity = extractor_identity(extractor) if extractor is not None else {"name": "gt"}
    for entry in load_manifest(out_dir):
        try:
            meta = read_metadata(out_dir, entry["clip_id"])
        except StoreError:
            continue
        recorded = meta.get("struct_extractor_identity", {"name": "gt"})
        if recorded != identity:
            raise ValueError(
                f"{out_dir} was written with structure {recorded}; this run has {identity}: "
                "use a new output directory"
            )
        break
    update_store_info(out_dir, struct_extractor=identity)


def _source_ids(sources: list[Path]) -> dict[Path, str | SourceError]:
    """Clip id of each source, or the SourceError saying why it has none. Sources sharing an id
    all get a ``duplicate_clip_id`` error, whatever their order, so none of them is written."""
    ids: dict[Path, str | SourceError] = {}
    for directory in sources:
        try:
            ids[directory] = read_source_metadata(directory)[1]
        except SourceError as e:
            ids[directory] = e
    owners: dict[str, list[Path]] = {}
    for directory, clip_id in ids.items():
        if isinstance(clip_id, str):
            owners.setdefault(clip_id, []).append(directory)
    for clip_id, dirs in owners.items():
        if len(dirs) > 1:
            for directory in dirs:
                others = [str(d) for d in dirs if d != directory]
                ids[directory] = SourceError(
                    "duplicate_clip_id",
                    f"{directory}: clip id {clip_id!r} is also that of {others}",
                )
    return ids


def _record_failure(
    out: Path, source: str, clip_id: str | None, kind: str, reason: str, summary: dict[str, Any]
) -> None:
    logger.warning("skipping %s (%s): %s", source, kind, reason)
    append_failure(out, source, reason, kind=kind, clip_id=clip_id)
    summary["failed"] += 1
    summary["failures"][kind] += 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m df_data.extract --src DIR --out STORE --codec DIR``; prints the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--src", required=True, help="directory searched for source clips")
    parser.add_argument("--out", required=True, help="the clip store")
    parser.add_argument("--codec", required=True, help="codec directory (config.json + weights)")
    add_encoder_arguments(parser)
    parser.add_argument("--batch-frames", type=int, default=16, help="frames per codec call")
    parser.add_argument("--device", default=None, help="e.g. cuda; default: CPU")
    parser.add_argument("--retry-failed", action="store_true", help="retry failed sources")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spec = spec_from_args(args)
    summary = extract_store(
        args.src,
        args.out,
        codec=args.codec,
        encoder=spec.build_audio(args.device or "cpu"),
        ref_encoder=spec.build_ref(args.device or "cpu"),
        ref_frames=spec.ref_frames,
        batch_frames=args.batch_frames,
        progress=not args.no_progress,
        device=args.device,
        retry_failed=args.retry_failed,
    )
    print(json.dumps(summary, indent=2))  # the CLI's output, not library logging
    return 1 if summary["failed"] and not summary["written"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
