"""What ``prepare`` reads: a folder of videos, or a CSV/JSONL manifest of time ranges.

A manifest has one row per range: ``path`` (required; relative to the manifest's folder),
``start`` and ``end`` (seconds on the video's clock, optional), ``split`` (``train``, ``val``
or ``test``; ``train`` when empty) and ``speaker`` (optional, kept in the metadata). HDTF and
CelebV-HQ come this way: source files and time ranges. A malformed row stops the run before
any work, naming the line and the field; a missing or unusable file is a named failure of that
input only.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class InputItem:
    path: str
    start: float = 0.0
    end: float | None = None
    split: str = "train"
    speaker: str | None = None

    def key(self) -> str:
        """A stable id of this input: the file and the range."""
        text = f"{Path(self.path).resolve()}|{self.start!r}|{self.end!r}"
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def _number(value: object, where: str, name: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{where}: {name} must be a finite number >= 0, got {value!r}")
    return x


def _item(row: dict[str, object], base: Path, where: str) -> InputItem:
    path = row.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{where}: path is required (a video file), got {path!r}")
    start = _number(row.get("start"), where, "start") or 0.0
    end = _number(row.get("end"), where, "end")
    if end is not None and end <= start:
        raise ValueError(f"{where}: end ({end}) must be after start ({start})")
    split = str(row.get("split") or "train").strip()
    if split not in SPLITS:
        raise ValueError(f"{where}: split must be one of {SPLITS}, got {split!r}")
    speaker = row.get("speaker")
    speaker = str(speaker).strip() if speaker not in (None, "") else None
    full = Path(path.strip())
    return InputItem(str(full if full.is_absolute() else base / full), start, end, split, speaker)


def read_manifest(path: str | Path) -> list[InputItem]:
    """The rows of a ``.csv`` (with a header) or ``.jsonl`` manifest (module doc)."""
    path = Path(path)
    base = path.parent
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ValueError(f"{path}: a CSV manifest needs a header with a 'path' column")
            return [_item(row, base, f"{path}:{n}") for n, row in enumerate(reader, 2)]
    if path.suffix.lower() == ".jsonl":
        items = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: each line must be a JSON object")
            items.append(_item(row, base, f"{path}:{n}"))
        return items
    raise ValueError(f"{path}: a manifest must end in .csv or .jsonl")


def read_inputs(src: str | Path) -> list[InputItem]:
    """The inputs of ``--src``: every video under a folder (hidden paths skipped, sorted), or
    a manifest's rows."""
    src = Path(src)
    if src.is_dir():
        return [
            InputItem(str(p))
            for p in sorted(src.rglob("*"))
            if p.suffix.lower() in VIDEO_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(src).parts)
        ]
    if src.is_file():
        return read_manifest(src)
    raise ValueError(f"--src {str(src)!r} is neither a folder of videos nor a manifest file")
