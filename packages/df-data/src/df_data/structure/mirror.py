"""How a horizontal flip of the frames acts on a structure vector: its *mirror rule*.

A rule names the dimensions a flip negates (yaw, roll, horizontal translation) and the pairs of
dimensions it swaps (a left and a right eye's openness). A structure whose left/right
correspondence is unknown (LivePortrait's implicit keypoints and expression deltas have no
known permutation, ``research/real_media.md`` §6) has *no known mirror*: flip augmentation is
refused for it.

In the store's metadata (``struct_mirror``) a rule is ``{"known": true, "negate": [...],
"swap": [[a, b], ...]}``; no known mirror is ``{"known": false}``. Stores written before rules
were recorded carry none and hold SynthTalk's ground truth: ``LEGACY_MIRROR`` applies to them.

Legend: ``T`` frames, ``Ds`` structure dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

MIRROR_KEY = "struct_mirror"  # the metadata field (sources and clips)


@dataclass(frozen=True, slots=True)
class StructMirror:
    """A known mirror rule: ``negate`` names, ``swap`` pairs of names (module doc)."""

    negate: tuple[str, ...] = ()
    swap: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not all(isinstance(n, str) for n in self.negate):
            raise ValueError(f"StructMirror.negate must be names, got {self.negate!r}")
        seen: list[str] = []
        for pair in self.swap:
            if len(pair) != 2 or not all(isinstance(n, str) for n in pair) or pair[0] == pair[1]:
                raise ValueError(f"StructMirror.swap needs pairs of two names, got {pair!r}")
            seen.extend(pair)
        if len(seen) != len(set(seen)):
            raise ValueError(f"StructMirror.swap uses a name twice: {self.swap!r}")

    def check(self, names: Sequence[str]) -> None:
        """ValueError if the rule names a dimension that ``names`` lacks."""
        used = [*self.negate, *(n for pair in self.swap for n in pair)]
        unknown = [n for n in used if n not in names]
        if unknown:
            raise ValueError(f"mirror rule names {unknown}, not in struct_names {list(names)}")

    def apply(self, struct_TDs: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """The structure ``[T, Ds]`` of the horizontally flipped frames (a new tensor)."""
        self.check(names)
        index = {n: i for i, n in enumerate(names)}
        perm = list(range(len(names)))
        for a, b in self.swap:
            perm[index[a]], perm[index[b]] = index[b], index[a]
        out = struct_TDs[:, perm].clone()
        for n in self.negate:
            out[:, index[n]] = -out[:, index[n]]
        return out

    def to_json(self) -> dict[str, Any]:
        return {"known": True, "negate": list(self.negate), "swap": [list(p) for p in self.swap]}


NO_MIRROR_JSON: dict[str, Any] = {"known": False}
LEGACY_MIRROR = StructMirror(negate=("yaw", "roll", "tx"))  # SynthTalk's ground truth


def mirror_to_json(mirror: StructMirror | None) -> dict[str, Any]:
    """The metadata form of a rule; None (no known mirror) is ``{"known": false}``."""
    return NO_MIRROR_JSON if mirror is None else mirror.to_json()


def mirror_from_json(value: Any, where: str = "struct_mirror") -> StructMirror | None:
    """The rule of a metadata value (``mirror_to_json``'s form); ValueError naming ``where``."""
    if not isinstance(value, dict) or not isinstance(value.get("known"), bool):
        raise ValueError(f"{where} must be an object with a boolean 'known', got {value!r}")
    if not value["known"]:
        return None
    try:
        return StructMirror(
            tuple(value.get("negate", ())), tuple(tuple(p) for p in value.get("swap", ()))
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e


def metadata_mirror(meta: dict[str, Any], where: str) -> StructMirror | None:
    """A clip's rule: its ``struct_mirror``, or ``LEGACY_MIRROR`` when it has none."""
    if MIRROR_KEY not in meta:
        return LEGACY_MIRROR
    return mirror_from_json(meta[MIRROR_KEY], f"{where}: {MIRROR_KEY}")
