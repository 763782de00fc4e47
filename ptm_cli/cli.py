"""The ``ptm`` command: its entry point.

A call that asks for a warm server (``--server auto``, or ``PTM_SERVER=auto``)
is first handed, as typed, to a server that is already running: the server
parses it with the same click command and runs it with this process's
standard streams, working folder and umask (see :mod:`ptm_cli.serve`). This
path imports neither click nor torch, which is most of a one-file call's
cost. Everything else, and every call the server sends back, runs here
through :mod:`ptm_cli.commands.main`.
"""

from __future__ import annotations

import sys
from typing import Any

from . import settings
from .errors import ConfigError


def __getattr__(name: str) -> Any:
    """``cli``, the click group, imported when asked for (tests and tools walk it)."""
    if name == "cli":
        from .commands.root import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with a code scripts can trust."""
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    """``ptm ARGV``'s exit code (``sys.argv[1:]`` by default)."""
    from .runtime.tuning import tune_process

    tune_process()  # the ptm command tunes its own process; library calls leave that to their caller
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        debug = settings.debug()
    except ConfigError as exc:
        from .commands.running import report

        return report(exc)
    handed: Any = None
    if not debug and _asks_for_a_server(args):
        from .errors import PtmError
        from .serve.client import forward

        try:
            handed = forward(args, start=False)
        except PtmError as exc:  # the server stopped part-way through the command
            from .commands.running import report

            return report(exc)
        if handed.code is not None:
            return int(handed.code)
    from .commands.main import run_here

    return run_here(args, debug=debug, handed=handed)


def _asks_for_a_server(args: list[str]) -> bool:
    """Whether ``args`` may want a warm server: a command and ``--server auto`` (or PTM_SERVER=auto).

    Read without parsing: a server that is asked parses the call itself and
    sends back whatever it should not run.
    """
    if not args or args[0].startswith("-") or settings.completing():
        return False
    choice = None
    for position, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--server" and position + 1 < len(args):
            choice = args[position + 1]
        elif arg.startswith("--server="):
            choice = arg.partition("=")[2]
    if choice is not None:
        return choice == "auto"
    try:
        return settings.server_mode() == "auto"
    except ConfigError:
        return False  # the command reports it
