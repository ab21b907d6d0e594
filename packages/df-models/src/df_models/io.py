"""File writes every package shares: atomic paths and atomic JSON, and reading a JSON object.

df-models is the lowest package that writes files (weights, bundles); df-data, df-train,
df-infer and df-eval all depend on it, so the one atomic-write helper lives here.

An atomic write goes to a temporary file beside the target, named ``.<name>.tmp-<host>-<pid>``
plus the target's suffix (hidden, so directory scans such as df-eval's ``*.mp4`` skip it, and
with the suffix kept because writers like ``np.save`` choose the format from it); the file is
fsynced and renamed over the target with ``os.replace``. Readers see the old file or the new
one, never a part; on an error the temporary is removed and the old file stays.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def temporary_name(path: Path) -> Path:
    """The temporary sibling ``atomic_path`` writes ``path`` through."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}{path.suffix}")


def fsync_path(path: Path) -> None:
    """Flushes a file (or a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` (its folder created if needed) to write to; on
    success it is fsynced and renamed to ``path``, on an exception removed (``path`` untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)  # the rename itself survives a power cut
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_json_atomic(
    path: str | Path,
    data: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = True,
    default: Callable[[Any], Any] | None = None,
    allow_nan: bool = True,
) -> Path:
    """Writes ``json.dumps(data, ...)`` (no trailing newline) to ``path`` atomically; the
    keyword arguments are ``json.dumps``'s, so each caller keeps its files' exact bytes."""
    text = json.dumps(
        data, indent=indent, sort_keys=sort_keys, default=default, allow_nan=allow_nan
    )
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def read_json_object(path: str | Path, error: type[ValueError] = ValueError) -> dict[str, Any]:
    """A JSON file holding an object; ``error`` (a ValueError) names the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``config`` (sorted keys): stable across runs."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
