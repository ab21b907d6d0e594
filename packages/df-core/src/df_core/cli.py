"""The ``dualforce`` command: a thin dispatcher over the ``dualforce.commands`` entry points.

Each package that owns a kind of work registers its subcommand (``df_data.cli``,
``df_train.cli``, ...) as an entry point ``name = "module:main"``, where ``main(argv) -> int``.
This module only finds and calls them, so libraries never depend on the CLI.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

GROUP = "dualforce.commands"
# Which workspace package provides each subcommand, for a helpful error when it is missing.
PROVIDERS = {
    "data": "df-data",
    "train": "df-train",
    "generate": "df-infer",
    "eval": "df-eval",
    "bench": "df-core",
    "demo": "df-eval",
    "ablate": "df-eval",
}


def _usage(available: list[str]) -> str:
    lines = ["usage: dualforce <command> [options]", "", "commands:"]
    lines += [f"  {name}" for name in available] or ["  (none installed)"]
    lines += ["", "Run 'dualforce <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {ep.name: ep for ep in entry_points(group=GROUP)}
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(sorted(commands)))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in commands:
        hint = ""
        if name in PROVIDERS:
            hint = f" (it is provided by the package {PROVIDERS[name]}, which is not installed)"
        print(
            f"dualforce: unknown command '{name}'{hint}\n\n{_usage(sorted(commands))}",
            file=sys.stderr,
        )
        return 2
    return int(commands[name].load()(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
