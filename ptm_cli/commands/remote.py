"""``--server auto|never``: handing a command to the user's warm server, or taking it back.

A command calls :func:`hand_over` once its options are checked and before it
reads any input or writes anything. In a ``ptm`` process that wants a server,
the command line goes to the server (one is started if none runs), which runs
it with this process's streams and folder; the exit code comes back. When the
server cannot give this client's own answers (another version, environment,
user) or cannot be reached, the command runs here after one note on stderr: a
server never changes what a command prints. In the server, a call that needs
the client's own process is sent back.
"""

from __future__ import annotations

from .common import current_argv, handed_over, note


def wanted(choice: str | None) -> bool:
    from .. import settings

    return (choice or settings.server_mode()) == "auto"


def hand_over(choice: str | None, *, servable: bool) -> int | None:
    """The exit code of this command run by a warm server, or None to run it here (go on)."""
    from ..serve.protocol import RunHere, serving

    if serving():
        if not servable:
            raise RunHere
        return None
    if not servable or not wanted(choice):
        return None
    handed = handed_over()
    if handed is None or not handed.asked:  # no server was running when the call began: start one
        from ..serve.client import forward

        handed = forward(current_argv(), start=True)
        if handed.code is not None:
            return int(handed.code)
    if handed.reason:
        note(handed.reason)
    return None
