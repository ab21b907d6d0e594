"""The store's line files, ``manifest.jsonl`` and ``failures.jsonl`` (appended under a lock,
read back tolerating a line cut by a crash), and ``repair_store``, which fixes what a crash
leaves behind (``df_data.store`` describes the protocol).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from df_data.store.format import (
    CLIP_FILES,
    CLIPS_DIR,
    FAILURES_NAME,
    MANIFEST_NAME,
    TMP_PREFIX,
    StoreError,
    expect,
    read_metadata,
)

logger = logging.getLogger(__name__)

STALE_TMP_SECONDS = 24 * 3600  # another host's temporary directory is stale after this long


def manifest_entry(metadata: dict[str, Any]) -> dict[str, Any]:
    """The manifest line of a clip, from its metadata."""
    return {
        "clip_id": metadata["clip_id"],
        "path": f"{CLIPS_DIR}/{metadata['clip_id']}",
        "split": metadata["split"],
        "latent_frames": metadata["latent_frames"],
        "frames": metadata["frames"],
    }


def _append_jsonl(path: Path, obj: dict[str, Any], durable: bool = True) -> None:
    """Appends one JSON line under an exclusive lock, then flushes (and fsyncs if ``durable``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(obj, sort_keys=True) + "\n"
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:  # a crash mid-line must not swallow this line
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write(line.encode())
            f.flush()
            if durable:
                os.fsync(f.fileno())
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def append_manifest(store_dir: str | Path, entry: dict[str, Any], *, durable: bool = True) -> None:
    """Appends a finished clip (``manifest_entry``) to ``manifest.jsonl``."""
    missing = [k for k in ("clip_id", "path", "split", "latent_frames", "frames") if k not in entry]
    if missing:
        raise StoreError(f"manifest entry {entry} lacks keys {missing}")
    _append_jsonl(Path(store_dir) / MANIFEST_NAME, entry, durable)


def append_failure(
    store_dir: str | Path,
    source: str | Path,
    reason: str,
    *,
    kind: str = "error",
    clip_id: str | None = None,
) -> None:
    """Appends a failed source to ``failures.jsonl``: source, clip_id, kind, reason, time."""
    entry = {
        "source": str(source),
        "clip_id": clip_id,
        "kind": kind,
        "reason": reason,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _append_jsonl(Path(store_dir) / FAILURES_NAME, entry)


# Reading ----------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s:%d: skipping a line that is not JSON (cut by a crash?)", path, n)
            continue
        if isinstance(obj, dict):
            out.append(obj)
        else:
            logger.warning("%s:%d: skipping a line that is not a JSON object", path, n)
    return out


def load_manifest(store_dir: str | Path) -> list[dict[str, Any]]:
    """The manifest entries, one per clip id (the last line wins), in first-listed order."""
    entries: dict[str, dict[str, Any]] = {}
    for obj in _read_jsonl(Path(store_dir) / MANIFEST_NAME):
        if "clip_id" in obj:
            entries[obj["clip_id"]] = obj
    return list(entries.values())


def load_failures(store_dir: str | Path) -> list[dict[str, Any]]:
    """All lines of ``failures.jsonl`` (a source failing on several runs appears several times)."""
    return _read_jsonl(Path(store_dir) / FAILURES_NAME)


def finished_clip_ids(store_dir: str | Path) -> set[str]:
    """Clip ids listed in the manifest whose directory exists."""
    store = Path(store_dir)
    return {e["clip_id"] for e in load_manifest(store) if (store / e.get("path", "")).is_dir()}


# Recovery ---------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_is_stale(path: Path, now: float) -> bool:
    """Written on this host by a process that is gone, or older than ``STALE_TMP_SECONDS``
    (another host's, whose process cannot be checked from here)."""
    parts = path.name[len(TMP_PREFIX) :].rsplit("@", 2)
    pid = parts[-1].removesuffix("-old") if len(parts) == 3 else ""
    if pid.isdigit() and parts[1] == socket.gethostname() and not _pid_alive(int(pid)):
        return True
    with contextlib.suppress(FileNotFoundError):
        return now - path.stat().st_mtime > STALE_TMP_SECONDS
    return False


def repair_store(store_dir: str | Path) -> dict[str, list[str]]:
    """Cleans up after a crash; safe to run while other processes write to the store.

    Removes stale temporary directories (``removed_tmp``), re-lists complete clip directories
    missing from the manifest (``relisted``: a crash between rename and append) and removes
    clip directories that are incomplete (``removed_incomplete``: cannot come from
    ``write_clip_record``, whose rename is atomic; they are recomputed by the next extraction).
    """
    store = Path(store_dir)
    clips = store / CLIPS_DIR
    report: dict[str, list[str]] = {"removed_tmp": [], "relisted": [], "removed_incomplete": []}
    if not clips.is_dir():
        return report
    listed = {e["clip_id"] for e in load_manifest(store)}
    now = time.time()
    for path in sorted(clips.iterdir()):
        if not path.is_dir():
            continue
        if path.name.startswith(TMP_PREFIX):
            if _tmp_is_stale(path, now):
                shutil.rmtree(path, ignore_errors=True)
                report["removed_tmp"].append(path.name)
                logger.warning("removed stale temporary clip directory %s", path)
            continue
        if path.name in listed or path.name.startswith("."):
            continue
        try:
            missing = [n for n in CLIP_FILES if not (path / n).is_file()]
            expect(path.name, not missing, f"missing files {missing}")
            meta = read_metadata(store, path.name)
            expect(path.name, meta.get("clip_id") == path.name, "metadata clip_id differs")
            entry = manifest_entry(meta)
        except (StoreError, KeyError) as e:
            logger.warning("removing incomplete clip directory %s: %s", path, e)
            shutil.rmtree(path, ignore_errors=True)
            report["removed_incomplete"].append(path.name)
            continue
        append_manifest(store, entry)
        report["relisted"].append(path.name)
        logger.info("re-listed clip %s (its manifest line was missing)", path.name)
    return report
