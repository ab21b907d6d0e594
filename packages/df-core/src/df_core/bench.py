"""``dualforce bench <target>``: runs a benchmark registered in ``dualforce.benchmarks``.

Packages register their benchmarks (``attention`` here, ``stream`` in df-infer, ...) as entry
points ``name = "module:main"`` with ``main(argv) -> int``.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

GROUP = "dualforce.benchmarks"


def main(argv: list[str]) -> int:
    targets = {ep.name: ep for ep in entry_points(group=GROUP)}
    listing = "\n".join(f"  {name}" for name in sorted(targets))
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: dualforce bench <target> [options]\n\ntargets:\n{listing}")
        return 0 if argv else 2
    if argv[0] not in targets:
        print(
            f"dualforce bench: unknown target '{argv[0]}'; available:\n{listing}", file=sys.stderr
        )
        return 2
    return int(targets[argv[0]].load()(argv[1:]) or 0)
