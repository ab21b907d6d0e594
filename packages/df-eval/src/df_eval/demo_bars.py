"""The quality bars of ``dualforce demo`` (issue 14), checked on every run and printed in its
report as a pass/fail table, so that a headline number cannot hide a broken picture.

Each bar compares one measured value with a target that is itself measured where it can be
(a multiple of the ground-truth video's value, or of the still frame's), so the bars move with
the probe and the corpus instead of being constants tuned to one run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Records = dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class Bar:
    name: str  # what is checked, as the report says it
    value: Callable[[Records], float | None]  # the measured value, from the stage records
    target: Callable[[Records], float | None]  # the bound it must meet
    higher: bool  # True: value >= target passes; False: value <= target passes


def _metric(variant: str, key: str) -> Callable[[Records], float | None]:
    def read(r: Records) -> float | None:
        return r["evaluate"]["summary"].get(variant, {}).get("metrics", {}).get(key)

    return read


def _times(factor: float, variant: str, key: str) -> Callable[[Records], float | None]:
    def read(r: Records) -> float | None:
        v = _metric(variant, key)(r)
        return None if v is None else factor * v

    return read


def _codec_psnr(r: Records) -> float | None:
    return r["codec"]["summary"].get("heldout_psnr_db")


def _const(value: float) -> Callable[[Records], float]:
    return lambda r: value


def _bars(*, psnr: float, id_x: float, fd_x: float, fd_strict: bool, jitter_x: float, sync: float):
    return (
        Bar(name="codec held-out PSNR (dB)", value=_codec_psnr, target=_const(psnr), higher=True),
        Bar(
            name=f"identity distance <= {id_x}x the ground-truth video's",
            value=_metric("trained", "id_dist"),
            target=_times(id_x, "ground_truth", "id_dist"),
            higher=False,
        ),
        Bar(
            name=(
                "Fréchet distance below the still frame's"
                if fd_strict
                else f"Fréchet distance <= {fd_x}x the still frame's"
            ),
            value=_metric("trained", "fd"),
            target=_times(fd_x, "still", "fd"),
            higher=False,
        ),
        Bar(
            name=f"head-pose jitter <= {jitter_x}x the ground-truth video's",
            value=_metric("trained", "jitter"),
            target=_times(jitter_x, "ground_truth", "jitter"),
            higher=False,
        ),
        Bar(
            name="lip sync (probe sync_corr at offset 0)",
            value=_metric("trained", "sync_corr"),
            target=_const(sync),
            higher=True,
        ),
        Bar(
            name="lip-sync offset (frames; best offset must be 0)",
            value=lambda r: (
                abs(v) if (v := _metric("trained", "sync_offset")(r)) is not None else None
            ),
            target=_const(0.0),
            higher=False,
        ),
    )


# The CPU bars hold for the smoke preset too: it is reported, not expected to pass.
BARS: dict[str, tuple[Bar, ...]] = {
    "cpu": _bars(psnr=28.0, id_x=1.5, fd_x=1.0, fd_strict=True, jitter_x=3.0, sync=0.7),
    "gpu": _bars(psnr=28.0, id_x=1.2, fd_x=0.5, fd_strict=False, jitter_x=1.5, sync=0.85),
}


def check_bars(preset_name: str, records: Records) -> list[dict[str, Any]]:
    """``[{name, value, target, passed}]`` for the preset's bars (the CPU bars for presets
    without their own); ``passed`` is None when a value is missing."""
    rows = []
    for bar in BARS.get(preset_name, BARS["cpu"]):
        value, target = bar.value(records), bar.target(records)
        passed = None
        if value is not None and target is not None:
            passed = value >= target if bar.higher else value <= target
        rows.append(
            {
                "name": bar.name,
                "value": value,
                "target": target,
                "passed": passed,
                "higher": bar.higher,
            }
        )
    return rows
