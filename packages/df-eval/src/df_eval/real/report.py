"""Outputs of the real-video evaluation: ``metrics.json``, ``report.md`` and PNG plots (the
long-sequence curves of CSIM and LSE-C / LSE-D against frame index, and the SyncNet offset
curve). Every file is written atomically."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from df_eval.report import _json_ready, plt, save_figure, write_json
from df_models.io import atomic_path

PLOTS = {"long": "long_sequence.png", "offset": "sync_offset.png"}
# (key, better, meaning), in report order.
AGGREGATE = (
    ("fid", "↓", "FID of all generated frames vs all reference frames"),
    ("fvd", "↓", "FVD of 16-frame clips, generated vs reference"),
    ("lpips", "↓", "LPIPS vs the corresponding reference frame"),
    ("lse_c", "↑", "Sync-C (LSE-C) of the generated video with its audio"),
    ("lse_d", "↓", "Sync-D (LSE-D) of the generated video with its audio"),
    ("sync_abs_offset", "→0", "mean |AV offset| in frames found by SyncNet"),
    ("ref_lse_c", "↑", "Sync-C of the reference videos themselves (the ceiling)"),
    ("ref_lse_d", "↓", "Sync-D of the reference videos themselves"),
    ("csim", "↑", "ArcFace cosine to the reference's first frame"),
)
PER_VIDEO = ("frames", "fvd_clips", "lpips", "lse_c", "lse_d", "sync_offset", "ref_lse_c", "csim")


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, int):
        return str(v)
    return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"


def plot_long_sequence(curves: dict, windows: tuple[int, ...], path: Path) -> Path | None:
    """CSIM and LSE-C / LSE-D per window against the window's centre frame, one line per
    window length; ``None`` when no video was long enough for any window."""
    panels = [("csim", "CSIM ↑"), ("lse_c", "LSE-C ↑"), ("lse_d", "LSE-D ↓")]
    if not any(curves.get(f"{k}_{w}") for k, _ in panels for w in windows):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for w in windows:
            ys = curves.get(f"{key}_{w}") or []
            if ys:
                xs = (np.arange(len(ys)) + 0.5) * w
                ax.plot(xs, ys, marker="o", ms=3, label=f"{w}-frame windows")
        ax.set(xlabel="frame", ylabel=label, title=f"{label} over time")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    save_figure(fig, path)
    return path


def plot_offset(curves: dict, vshift: int, path: Path) -> Path | None:
    """Mean SyncNet distance against AV offset (the LSE-D minimum is the dip)."""
    mdist = curves.get("sync_mdist")
    if not mdist:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    offsets = vshift - np.arange(len(mdist))  # index j is offset vshift - j
    ax.plot(offsets, mdist, marker="o", ms=3)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set(
        xlabel="offset (frames; > 0: mouth lags audio)",
        ylabel="mean SyncNet distance",
        title="SyncNet distance vs offset",
    )
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return path


def write_real_report(out_dir: str | Path, doc: dict, config) -> dict:
    """Writes the plots, ``metrics.json`` (``doc`` plus ``plots``) and ``report.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {}
    p = plot_long_sequence(doc["curves"], config.windows, out / PLOTS["long"])
    if p is not None:
        plots["long"] = p.name
    p = plot_offset(doc["curves"], config.vshift, out / PLOTS["offset"])
    if p is not None:
        plots["offset"] = p.name
    doc = {**doc, "plots": plots}
    write_json(out / "metrics.json", doc)
    agg = doc["aggregate"]
    lines = [f"# DualForce evaluation on real videos: {doc['name']}", ""]
    lines += [
        f"Generated `{doc['pred']}` against reference `{doc['ref']}`, {agg['videos']} videos.",
        "",
    ]
    rows = [(k, b, m) for k, b, m in AGGREGATE if k in agg]
    lines += ["## Aggregate", "", "| metric | value | n | meaning |", "|---|---:|---:|---|"]
    for k, b, m in rows:
        n = agg.get(f"{k}_samples", agg.get(f"{k}_videos", ""))
        lines.append(f"| {k} {b} | {_fmt(agg[k])} | {n} | {m} |")
    lines += ["", "## Protocol", ""]
    lines += [f"- `{k}`: {v}" for k, v in doc["protocol"].items()]
    lines += ["", "## Per video", ""]
    lines += ["| video | " + " | ".join(PER_VIDEO) + " |", "|---|" + "---:|" * len(PER_VIDEO)]
    for name, s in doc["videos"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(s.get(k)) for k in PER_VIDEO) + " |")
    lines += ["", "## Skipped (not averaged in)", ""]
    lines += [f"- {s['video']} / {s['metric']}: {s['reason']}" for s in doc["skips"]] or ["None."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in plots.items()]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return _json_ready(doc)
