"""``--server auto|never``: running a command's model work in the user's warm server.

The command checks its options and reads its inputs as always; this module
opens the job on the server (starting one when none runs). When the server
cannot give this client's own answers (another version, environment, user)
or cannot be reached, the command runs in its own process after one note on
stderr: a server never changes what a command prints.
"""

from __future__ import annotations

from typing import Any

import click

from .common import note

server_option = click.option(
    "--server",
    type=click.Choice(("auto", "never")),
    help="auto: run the model in a warm `ptm serve` server (started if none runs); never: in this process. "
    "Default: $PTM_SERVER, else never.",
)


def wanted(choice: str | None) -> bool:
    from .. import settings

    return (choice or settings.server_mode()) == "auto"


def model_fields(options: Any) -> dict[str, Any]:
    return {"model": options.model, "weights": options.weights, "device": options.device,
            "precision": options.precision, "resize": options.resize, "crop": options.crop}  # fmt: skip


def open_job(op: str, request: dict[str, Any], payload: bytes = b"") -> Any:
    """A :class:`~ptm_cli.serve.client.Job` accepted by the server, or None (after a note) to run here."""
    from ..errors import ConfigError
    from ..serve.client import Job, open_server
    from ..serve.protocol import Mismatch, ServerUnavailable

    try:
        sock = open_server(start=True)
    except (ServerUnavailable, ConfigError, OSError) as exc:
        note(f"not using a server ({exc}); running here")
        return None
    try:
        return Job(sock, op, request, payload)
    except (Mismatch, ServerUnavailable) as exc:  # nothing was written yet: running here changes nothing
        sock.close()
        note(f"not using the server: {exc}; running here")
        return None
    except BaseException:
        sock.close()
        raise
