"""``prepare_corpus``: real videos -> source clip folders that ``extract`` reads.

Per input (``process_input``): probe; the first pass (``analysis``: faces, tracks, sharpness,
scene cuts); the audio on the video's clock and silero-vad; pieces and filters (``segments``);
the second pass writes each kept piece (``clip_writer``). Output layout::

    <out>/prepare.json          the configuration, detector and VAD (a re-run must match them)
    <out>/<split>/<clip>/       one source clip (``clip_writer`` describes its files)
    <out>/.inputs/<key>.json    one record per finished input: its clips and its failures
    <out>/failures.jsonl        every failure (input or clip), with reason, field, value, bound
    <out>/summary.json          hours kept, clips dropped per reason (``dualforce data inspect``)

Atomic and resumable: a clip folder appears complete or not at all, an input's record only
after all its clips; a re-run skips inputs with a record (inputs that failed with an
unexpected ``error`` are retried) and clips whose folder exists. ``failures.jsonl`` and
``summary.json`` are rebuilt from the records at the end of every run (and by ``summarise``),
so shards writing disjoint inputs into one folder never append to a shared file.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from df_core.conventions import AUDIO_SAMPLE_RATE, FPS
from df_data.prepare.analysis import analyse
from df_data.prepare.clip_writer import ClipWriter
from df_data.prepare.config import PrepareConfig
from df_data.prepare.crop import MOUTH_BOX_RULE, CropBox, crop_frame, mouth_boxes, to_crop
from df_data.prepare.decode import SAMPLES_PER_FRAME, PrepareError, iter_frames, probe, read_audio
from df_data.prepare.faces import RetinaFaceDetector
from df_data.prepare.inputs import InputItem, read_inputs
from df_data.prepare.segments import Piece, failures, measure, split
from df_data.prepare.vad import SileroVad
from df_models.io import read_json_object, write_json_atomic

logger = logging.getLogger(__name__)

PREPARE_VERSION = 1
INFO_NAME = "prepare.json"
RECORDS_DIR = ".inputs"
FAILURES_NAME = "failures.jsonl"
SUMMARY_NAME = "summary.json"
RETRIED_REASONS = frozenset({"error"})  # other reasons are properties of the input

_MODELS: dict[tuple, tuple[RetinaFaceDetector, SileroVad]] = {}


def _models(cfg: PrepareConfig, threads: int) -> tuple[RetinaFaceDetector, SileroVad]:
    key = (cfg.det_size, cfg.score_threshold, cfg.vad_threshold, threads)
    if key not in _MODELS:
        detector = RetinaFaceDetector(
            det_size=cfg.det_size, score_threshold=cfg.score_threshold, threads=threads
        )
        _MODELS[key] = (detector, SileroVad(cfg.vad_threshold))
    return _MODELS[key]


def _safe(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).lstrip(".-_")
    return name[:60] or "clip"


def clip_name(item: InputItem, piece: Piece) -> str:
    """``<speaker or file stem>-<input key>-<start frame>``: unique and stable."""
    return f"{_safe(item.speaker or Path(item.path).stem)}-{item.key()[:8]}-{piece.start:06d}"


# One input --------------------------------------------------------------------------------------


def _failure(item: InputItem, error: PrepareError, **extra: Any) -> dict[str, Any]:
    return {"source": item.path, "range": [item.start, item.end], **error.record(), **extra}


def process_input(
    item: InputItem, out: Path, cfg: PrepareConfig, *, threads: int = 0, progress: bool = False
) -> dict[str, Any]:
    """Prepares one input and writes its record (module doc); returns the record."""
    record: dict[str, Any] = {
        "source": item.path,
        "range": [item.start, item.end],
        "split": item.split,
        "speaker": item.speaker,
        "key": item.key(),
        "clips": [],
        "failures": [],
        "seconds": 0.0,
    }
    try:
        _prepare(item, out, cfg, record, threads, progress)
    except PrepareError as e:
        logger.warning("skipping %s (%s): %s", item.path, e.kind, e)
        record["failures"].append(_failure(item, e, clip=None))
    except Exception as e:  # one bad input must not stop a corpus-sized run
        logger.exception("preparing %s failed", item.path)
        err = PrepareError("error", f"{type(e).__name__}: {e}")
        record["failures"].append(_failure(item, err, clip=None))
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json_atomic(out / RECORDS_DIR / f"{item.key()}.json", record)
    return record


def _prepare(
    item: InputItem,
    out: Path,
    cfg: PrepareConfig,
    record: dict[str, Any],
    threads: int,
    progress: bool,
) -> None:
    detector, vad = _models(cfg, threads)
    # Step 1: the file has video and audio.
    info = probe(item.path)
    if not info.has_audio:
        raise PrepareError(
            "no_audio",
            f"{item.path}: has no audio track",
            field="audio_streams",
            value=0,
            expected=">= 1",
        )
    # Step 2: first pass over the frames; the audio on the same clock, cut to whole frames.
    an = analyse(
        item.path,
        detector,
        start=item.start,
        end=item.end,
        iou_min=cfg.track_iou,
        max_gap=cfg.max_gap_frames,
        progress=progress,
    )
    audio = read_audio(item.path, start=item.start, end=item.end)
    frames = min(an.frames, round(audio.shape[0] / SAMPLES_PER_FRAME))
    audio = np.pad(audio, (0, max(0, frames * SAMPLES_PER_FRAME - audio.shape[0])))
    audio = audio[: frames * SAMPLES_PER_FRAME]
    record["seconds"] = frames / FPS
    record["media"] = {
        "width": info.width,
        "height": info.height,
        "rotation": info.rotation,
        "fps": info.fps,
        "codec": info.codec,
        "audio_rate": info.audio_rate,
        "audio_channels": info.audio_channels,
    }
    if not an.tracks:
        raise PrepareError(
            "no_face",
            f"{item.path}: no face in {frames} frames",
            field="faces",
            value=0,
            expected=">= 1",
        )
    # Step 3: speech, pieces, filters.
    speech = vad(audio, frames) if frames else np.zeros(0, bool)
    cuts = an.cut_score[:frames] >= cfg.scene_cut_threshold
    kept: list[tuple[Piece, CropBox, dict[str, float], dict[str, Any]]] = []
    for piece in split(an.tracks, cuts, speech, cfg):
        values, box = measure(piece, an.tracks[piece.track], speech, an.height, an.width, cfg)
        failed = failures(values, cfg)
        name = clip_name(item, piece)
        span = {
            "clip": name,
            "start_s": item.start + piece.start / FPS,
            "end_s": item.start + piece.end / FPS,
        }
        if failed:
            record["failures"].append(
                _failure(
                    item,
                    failed[0],
                    **span,
                    seconds=values["seconds"],
                    failed=[f.kind for f in failed],
                    measured=values,
                )
            )
        else:
            entry = {**span, "split": item.split, "seconds": values["seconds"], "measured": values}
            kept.append((piece, box, values, entry))
    # Step 4: second pass, writing the kept pieces.
    _write_clips(item, out, cfg, an, audio, kept, record, info.__dict__, detector.name, vad.name)


def _write_clips(
    item: InputItem,
    out: Path,
    cfg: PrepareConfig,
    an,
    audio: np.ndarray,
    kept: list[tuple[Piece, CropBox, dict[str, float], dict[str, Any]]],
    record: dict[str, Any],
    media: dict[str, Any],
    detector_name: str,
    vad_name: str,
) -> None:
    """Writes the kept pieces in one pass over the frames; each clip enters ``record["clips"]``
    once its folder exists (written now, or by an earlier, interrupted run)."""
    todo = []
    for p, b, v, entry in kept:
        if (out / item.split / clip_name(item, p)).is_dir():
            record["clips"].append(entry)
        else:
            todo.append((p, b, v, entry))
    if not todo:
        return
    stop = todo[-1][0].end
    queue = iter(todo)
    piece, box, values, entry = next(queue)
    writer: ClipWriter | None = None
    try:
        for k, frame in enumerate(iter_frames(item.path, start=item.start, end=item.end)):
            if k >= stop:
                break
            if k == piece.start:
                writer = ClipWriter(out / item.split / clip_name(item, piece), crf=cfg.crf)
            if writer is not None:
                writer.write(crop_frame(frame, box, cfg.size))
            if k == piece.end - 1:
                track = an.tracks[piece.track]
                meta = _metadata(item, piece, box, values, cfg, media, detector_name, vad_name)
                writer.finish(
                    audio[piece.start * SAMPLES_PER_FRAME : piece.end * SAMPLES_PER_FRAME],
                    _landmarks(track, piece, box, cfg.size),
                    meta,
                )
                writer = None
                record["clips"].append(entry)
                nxt = next(queue, None)
                if nxt is None:
                    break
                piece, box, values, entry = nxt
        else:
            raise PrepareError(
                "decode_error",
                f"{item.path}: the second pass ended before frame {stop}",
                field="frames",
                expected=stop,
            )
    except BaseException as e:
        if writer is not None:
            writer.abort(e)
        raise


def _landmarks(track, piece: Piece, box: CropBox, size: int) -> dict[str, np.ndarray]:
    a = track.arrays()
    sl = slice(piece.start - track.start, piece.end - track.start)
    points = to_crop(a["points"][sl].reshape(-1, 2), box, size).reshape(-1, 5, 2)
    corners = a["boxes"][sl].reshape(-1, 2)
    boxes = to_crop(corners, box, size).reshape(-1, 4)
    return {
        "points": points.astype(np.float32),
        "boxes": boxes.astype(np.float32),
        "mouth_box": mouth_boxes(points).astype(np.float32),
        "detected": a["detected"][sl].astype(bool),
    }


def _metadata(
    item: InputItem,
    piece: Piece,
    box: CropBox,
    values: dict[str, float],
    cfg: PrepareConfig,
    media: dict[str, Any],
    detector_name: str,
    vad_name: str,
) -> dict[str, Any]:
    frames = piece.end - piece.start
    return {
        "fps": FPS,
        "frames": frames,
        "split": item.split,
        "speaker": item.speaker,
        "struct_names": [],
        "height": cfg.size,
        "width": cfg.size,
        "audio_rate": AUDIO_SAMPLE_RATE,
        "source": {
            "path": str(Path(item.path).resolve()),
            "start_s": item.start + piece.start / FPS,
            "end_s": item.start + piece.end / FPS,
            "input_range": [item.start, item.end],
            "media": media,
        },
        "crop": {
            "box": box.as_list(),
            "side": box.side,
            "size": cfg.size,
            "scale": cfg.crop_scale,
            "vy": cfg.crop_vy,
            "convention": "LivePortrait driving video: one averaged box per clip, no rotation",
        },
        "detector": detector_name,
        "vad": vad_name,
        "filters": values,
        "mouth_box": MOUTH_BOX_RULE,
        "generator": f"dualforce data prepare v{PREPARE_VERSION}",
        "prepare_config": cfg.to_dict(),
    }


# A corpus ---------------------------------------------------------------------------------------


def _check_info(out: Path, cfg: PrepareConfig) -> None:
    info = {"version": PREPARE_VERSION, "config": cfg.to_dict()}
    path = out / INFO_NAME
    if path.is_file():
        old = read_json_object(path)
        if old != info:
            raise ValueError(
                f"{out} was prepared with {old}; this run has {info}: use a new --out or the "
                "same settings"
            )
        return
    write_json_atomic(path, info)


def _done_keys(out: Path) -> set[str]:
    done = set()
    for path in (out / RECORDS_DIR).glob("*.json"):
        try:
            rec = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if not any(f.get("reason") in RETRIED_REASONS for f in rec.get("failures", [])):
            done.add(path.stem)
    return done


def summarise(out: str | Path) -> dict[str, Any]:
    """Rebuilds ``failures.jsonl`` and ``summary.json`` from the input records; returns the
    summary."""
    out = Path(out)
    records = []
    for path in sorted((out / RECORDS_DIR).glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (json.JSONDecodeError, OSError):
            logger.warning("%s: unreadable input record, ignored", path)
    records.sort(key=lambda r: (r["source"], r["range"][0]))
    fails = [f for r in records for f in r["failures"]]
    dropped: Counter = Counter()
    dropped_s: Counter = Counter()
    failed_inputs: Counter = Counter()
    for f in fails:
        if f.get("clip") is None:
            failed_inputs[f["reason"]] += 1
        else:
            dropped[f["reason"]] += 1
            dropped_s[f["reason"]] += f.get("seconds", 0.0)
    clips = [c for r in records for c in r["clips"]]
    summary = {
        "inputs": len(records),
        "inputs_failed": dict(failed_inputs),
        "source_hours": round(sum(r["seconds"] for r in records) / 3600, 6),
        "clips_kept": len(clips),
        "hours_kept": round(sum(c["seconds"] for c in clips) / 3600, 6),
        "clips_kept_per_split": dict(Counter(c["split"] for c in clips)),
        "clips_dropped": dict(dropped),
        "hours_dropped": {k: round(v / 3600, 6) for k, v in dropped_s.items()},
    }
    text = "".join(json.dumps(f, sort_keys=True) + "\n" for f in fails)
    from df_models.io import atomic_path

    with atomic_path(out / FAILURES_NAME) as tmp:
        tmp.write_text(text)
    write_json_atomic(out / SUMMARY_NAME, summary)
    return summary


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run_one(args: tuple[InputItem, str, PrepareConfig]) -> dict[str, Any]:
    item, out, cfg = args
    return process_input(item, Path(out), cfg, threads=1)


def prepare_corpus(
    src: str | Path,
    out: str | Path,
    config: PrepareConfig | None = None,
    *,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepares every input of ``src`` (``inputs.read_inputs``) into ``out``; resumable.

    Args:
        workers: processes, each taking whole inputs.
        shard: ``(index, count)``: only inputs ``index, index + count, ...`` (a job array's
            task); the shards' outputs are disjoint.

    Returns:
        ``summary.json``'s content plus this run's ``processed`` and ``skipped`` counts.
    """
    cfg = config or PrepareConfig()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    items = read_inputs(src)
    if shard is not None:
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard index must be in [0, {count}), got {index}")
        items = items[index::count]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_info(out, cfg)
    done = _done_keys(out)
    todo = [it for it in items if it.key() not in done]
    with tqdm(total=len(todo), desc="prepare", unit="input", disable=not progress) as bar:
        if workers == 1 or len(todo) <= 1:
            for item in todo:
                process_input(item, out, cfg, progress=progress)
                bar.update()
        else:
            with ProcessPoolExecutor(
                workers, mp_context=get_context("spawn"), initializer=_init_worker
            ) as pool:
                futures = [pool.submit(_run_one, (it, str(out), cfg)) for it in todo]
                for future in as_completed(futures):
                    future.result()
                    bar.update()
    summary = summarise(out)
    logger.info("prepare into %s: %s", out, summary)
    return {**summary, "processed": len(todo), "skipped": len(items) - len(todo)}
