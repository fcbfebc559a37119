"""Plugin discovery: the parts of lutc that the core does not name (entry points in pyproject.toml).

Groups:
- "lutc.commands": `register(subparsers)` functions that add `lutc` subcommands.
- "lutc.schedule_sources": `source(kernel, bits, group_size, M, N, K, target) -> Schedule | None`,
  asked in order before the default schedule (the tuner's db lookup is one).
A plugin whose optional dependencies are not installed is skipped; any other error is raised.
"""
from __future__ import annotations

import functools
from importlib.metadata import entry_points

COMMANDS = "lutc.commands"
SCHEDULE_SOURCES = "lutc.schedule_sources"


@functools.lru_cache(maxsize=None)
def load(group: str) -> tuple:
    """The loaded objects of an entry-point group, sorted by entry name; missing optional deps skip one."""
    out = []
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            out.append(ep.load())
        except ModuleNotFoundError as e:
            own = ep.value.split(":")[0]
            if e.name is None or own == e.name or own.startswith(e.name + "."):
                raise               # the plugin's own module is broken, not an optional dependency
    return tuple(out)
