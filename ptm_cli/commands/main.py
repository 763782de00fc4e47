"""``ptm ARGS`` in this process: the one click group, run by :mod:`.running`."""

from __future__ import annotations

from typing import Any


def run_here(argv: list[str], *, debug: bool = False, handed: Any = None) -> int:
    """``ptm ARGV`` in this process; its exit code. ``handed``: what a server said of it already, if asked."""
    from . import running
    from .root import cli

    return running.run_here(cli, argv, debug=debug, handed=handed)
