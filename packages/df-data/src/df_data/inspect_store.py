"""Inspection of a clip store: counts, durations, shapes, dtypes and consistency checks.

``inspect_store(store)`` returns a JSON-serialisable dict; ``format_report`` renders it as text;
``python -m df_data.inspect_store STORE`` prints it (exit status 1 when a check fails).

Checks: every listed clip has a directory and every clip directory is listed (``listed_missing``,
``unlisted``), no temporary directories are left (``tmp_dirs``), tensors are finite
(``nonfinite``, when ``check_values``), audio features are aligned with the video
(``misaligned``: ``L != 2 * frames``), and each clip passes ``store.validate_record``
(``invalid``, with the reason). Failures count the distinct sources whose last failure was not
followed by a finished clip, by kind.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from df_core.conventions import AUDIO_FEATURES_PER_VIDEO_FRAME
from df_data.store import (
    AUDIO_FILE,
    CLIPS_DIR,
    LATENTS_FILE,
    MOUTH_BOX_FILE,
    REF_FILE,
    STRUCT_FILE,
    TMP_PREFIX,
    ClipRecord,
    StoreError,
    load_failures,
    load_manifest,
    read_metadata,
    validate_record,
)

_TENSORS = {  # report name -> (file, key)
    "latents": (LATENTS_FILE, "latents"),
    "struct": (STRUCT_FILE, "struct"),
    "audio_features": (AUDIO_FILE, "features"),
    "ref_image": (REF_FILE, "image"),
    "ref_latent": (REF_FILE, "latent"),
}
_DTYPES = {"F16": "float16", "F32": "float32", "U8": "uint8", "BF16": "bfloat16", "F64": "float64"}
MAX_EXAMPLES = 10  # failure reasons quoted in the report


def _read_tensors(directory: Path, load: bool) -> dict[str, Any]:
    """name -> tensor (``load``) or (shape, dtype) from the safetensors headers."""
    out: dict[str, Any] = {}
    for name, (file, key) in _TENSORS.items():
        with safe_open(str(directory / file), framework="pt") as f:
            if load:
                out[name] = f.get_tensor(key)
            else:
                piece = f.get_slice(key)
                out[name] = (
                    tuple(piece.get_shape()),
                    _DTYPES.get(piece.get_dtype(), piece.get_dtype()),
                )
    return out


def _shape_dtype(value: Any) -> tuple[tuple[int, ...], str]:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), str(value.dtype).removeprefix("torch.")
    return value


def _failure_summary(store: Path, finished: set[str], finished_sources: set[str]) -> dict[str, Any]:
    """Distinct failed sources (last failure each) that no finished clip came from since."""
    last: dict[str, dict[str, Any]] = {}
    lines = load_failures(store)
    for f in lines:
        last[str(f.get("source"))] = f
    open_failures = [
        f
        for source, f in last.items()
        if f.get("clip_id") not in finished and source not in finished_sources
    ]
    return {
        "sources": len(open_failures),
        "lines": len(lines),
        "kinds": dict(Counter(str(f.get("kind", "error")) for f in open_failures)),
        "examples": [
            {"source": f.get("source"), "kind": f.get("kind"), "reason": f.get("reason")}
            for f in open_failures[:MAX_EXAMPLES]
        ],
    }


def inspect_store(store_dir: str | Path, *, check_values: bool = True) -> dict[str, Any]:
    """Inspects the store at ``store_dir`` (module doc); ``check_values`` loads every tensor
    (NaN/inf check and full validation), otherwise only headers and metadata are read."""
    store = Path(store_dir)
    if not store.is_dir():
        raise ValueError(f"store_dir {str(store)!r} is not a directory")
    clips_root = store / CLIPS_DIR
    children = sorted(p for p in clips_root.iterdir() if p.is_dir()) if clips_root.is_dir() else []
    on_disk = {p.name for p in children if not p.name.startswith(".")}
    listed = {e["clip_id"]: e for e in load_manifest(store)}
    present = sorted(set(listed) & on_disk)

    per_split: dict[str, dict[str, float]] = defaultdict(
        lambda: {"clips": 0, "latent_frames": 0, "frames": 0, "hours": 0.0}
    )
    shapes: dict[str, Counter] = defaultdict(Counter)
    dtypes: dict[str, Counter] = defaultdict(Counter)
    codecs: Counter = Counter()
    audio_encoders: Counter = Counter()
    nonfinite, misaligned, invalid = [], [], {}
    mouth_boxes = 0
    finished_sources: set[str] = set()
    for clip_id in present:
        try:
            meta = read_metadata(store, clip_id)
            tensors = _read_tensors(store / CLIPS_DIR / clip_id, check_values)
        except (StoreError, SafetensorError, OSError, KeyError) as e:
            invalid[clip_id] = str(e)
            continue
        for name, value in tensors.items():
            shape, dtype = _shape_dtype(value)
            # Time dimensions vary per clip: report the per-frame shape of the streams.
            per_frame = shape if name.startswith("ref") else shape[1:]
            shapes[name]["x".join(map(str, per_frame))] += 1
            dtypes[name][dtype] += 1
        frames, latent_frames = meta.get("frames", 0), _shape_dtype(tensors["latents"])[0][0]
        if _shape_dtype(tensors["audio_features"])[0][0] != AUDIO_FEATURES_PER_VIDEO_FRAME * frames:
            misaligned.append(clip_id)
        if check_values:
            if any(
                v.is_floating_point() and not bool(torch.isfinite(v).all())
                for v in tensors.values()
            ):
                nonfinite.append(clip_id)
            box = None
            if (store / CLIPS_DIR / clip_id / MOUTH_BOX_FILE).is_file():
                with safe_open(str(store / CLIPS_DIR / clip_id / MOUTH_BOX_FILE), "pt") as f:
                    box = f.get_tensor("mouth_box")
            record = ClipRecord(clip_id, *tensors.values(), metadata=meta, mouth_box=box)
            try:
                validate_record(record)
            except StoreError as e:
                invalid[clip_id] = str(e)
        finished_sources.add(str((meta.get("source") or {}).get("dir")))
        mouth_boxes += (store / CLIPS_DIR / clip_id / MOUTH_BOX_FILE).is_file()
        split = per_split[str(meta.get("split"))]
        split["clips"] += 1
        split["latent_frames"] += latent_frames
        split["frames"] += frames
        split["hours"] += frames / float(meta.get("fps") or 25.0) / 3600.0
        codec = meta.get("codec") or {}
        codecs[f"{codec.get('name')}:{str(codec.get('config_hash'))[:12]}"] += 1
        enc = meta.get("audio_encoder") or {}
        audio_encoders[f"{enc.get('name')}:{str(enc.get('config_hash'))[:12]}"] += 1

    report = {
        "store": str(store),
        "clips": len(present),
        "clips_listed": len(listed),
        "clips_on_disk": len(on_disk),
        "latent_frames": sum(s["latent_frames"] for s in per_split.values()),
        "frames": sum(s["frames"] for s in per_split.values()),
        "hours": sum(s["hours"] for s in per_split.values()),
        "per_split": {k: dict(v) for k, v in sorted(per_split.items())},
        "shapes": {k: dict(v) for k, v in shapes.items()},
        "dtypes": {k: dict(v) for k, v in dtypes.items()},
        "codecs": dict(codecs),
        "audio_encoders": dict(audio_encoders),
        "clips_with_mouth_box": mouth_boxes,
        "values_checked": check_values,
        "nonfinite": nonfinite,
        "misaligned": misaligned,
        "invalid": invalid,
        "listed_missing": sorted(set(listed) - on_disk),
        "unlisted": sorted(on_disk - set(listed)),
        "tmp_dirs": sorted(p.name for p in children if p.name.startswith(TMP_PREFIX)),
        "failures": _failure_summary(store, set(present), finished_sources),
    }
    problems = ("nonfinite", "misaligned", "invalid", "listed_missing", "unlisted", "tmp_dirs")
    report["ok"] = not any(report[k] for k in problems) and len(codecs) <= 1
    return report


def format_report(report: dict[str, Any]) -> str:
    """A human-readable rendering of ``inspect_store``'s report."""
    lines = [
        f"clip store {report['store']}: {'OK' if report['ok'] else 'PROBLEMS FOUND'}",
        f"  clips: {report['clips']} (listed {report['clips_listed']}, on disk "
        f"{report['clips_on_disk']}), {report['frames']} frames, {report['latent_frames']} latent "
        f"frames, {report['hours']:.4f} h",
    ]
    for split, s in report["per_split"].items():
        lines.append(
            f"  split {split}: {s['clips']} clips, {s['frames']} frames, "
            f"{s['latent_frames']} latent frames, {s['hours']:.4f} h"
        )
    for name, shapes in report["shapes"].items():
        dtypes = ", ".join(f"{d} x{n}" for d, n in report["dtypes"].get(name, {}).items())
        shape_text = ", ".join(f"[{s}] x{n}" for s, n in shapes.items())
        lines.append(f"  {name}: per-frame shape {shape_text}; dtype {dtypes}")
    lines.append(f"  codecs: {report['codecs']}; audio encoders: {report['audio_encoders']}")
    lines.append(f"  clips with mouth boxes: {report['clips_with_mouth_box']}")
    checked = "" if report["values_checked"] else " (values not checked)"
    lines.append(
        f"  non-finite clips{checked}: {len(report['nonfinite'])} {report['nonfinite'][:MAX_EXAMPLES]}"
    )
    lines.append(
        f"  misaligned audio (L != 2 * frames): {len(report['misaligned'])} {report['misaligned'][:MAX_EXAMPLES]}"
    )
    for clip_id, reason in list(report["invalid"].items())[:MAX_EXAMPLES]:
        lines.append(f"  invalid {clip_id}: {reason}")
    lines.append(
        f"  manifest vs disk: {len(report['listed_missing'])} listed but missing, "
        f"{len(report['unlisted'])} on disk but unlisted, {len(report['tmp_dirs'])} temporary dirs"
    )
    failures = report["failures"]
    lines.append(f"  failed sources: {failures['sources']} {failures['kinds']}")
    lines += [f"    {f['kind']}: {f['reason']}" for f in failures["examples"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m df_data.inspect_store STORE [--json] [--headers-only]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("store", help="the clip store directory")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--headers-only", action="store_true", help="do not load tensor values")
    args = parser.parse_args(argv)
    report = inspect_store(args.store, check_values=not args.headers_only)
    print(json.dumps(report, indent=2) if args.json else format_report(report))  # CLI output
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
