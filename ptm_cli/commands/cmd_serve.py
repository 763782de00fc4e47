"""``ptm serve``: start, run, stop and inspect the user's warm model server."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from ..errors import EXIT_INPUT_FAILED, EXIT_OK
from ..settings import MAX_SERVE_SECONDS
from .common import CONTEXT, note, stdout_is_data, writer
from .options import format_option

SECONDS = click.FloatRange(min=0, min_open=True, max=MAX_SERVE_SECONDS)


def server_settings(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--idle-timeout",
            type=SECONDS,
            metavar="SECONDS",
            help="Exit after this long with no client. Default: $PTM_SERVE_IDLE_TIMEOUT, else 900.",
        ),
        click.option(
            "--keep-alive",
            type=SECONDS,
            metavar="SECONDS",
            help="Unload a model nobody used for this long. Default: $PTM_SERVE_KEEP_ALIVE, else 300.",
        ),
        click.option(
            "--max-models",
            type=click.IntRange(min=1, max=100),
            default=3,
            show_default=True,
            help="Models kept loaded at once; the least recently used goes first.",
        ),
        click.option(
            "--batch-window",
            type=click.FloatRange(min=0, max=10_000),
            default=5.0,
            show_default=True,
            metavar="MS",
            help="Milliseconds a forward pass waits for other clients' images to join it.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _arguments(idle_timeout: float | None, keep_alive: float | None, max_models: int, batch_window: float) -> Any:
    from .. import settings
    from ..serve.warm import ServeOptions

    return ServeOptions(
        idle_timeout=idle_timeout or settings.serve_idle_timeout(),
        keep_alive=keep_alive or settings.serve_keep_alive(),
        max_models=max_models,
        batch_window=batch_window / 1000,
    )


@click.group(context_settings=CONTEXT)
def serve() -> None:
    """A warm, private model server: one-file commands answer in a fraction of a second.

    \b
    Examples:
      ptm serve start
      for f in *.jpg; do ptm classify --server auto "$f"; done
      ptm serve status
      ptm serve stop
    """


@serve.command(context_settings=CONTEXT)
@server_settings
def run(**settings_: Any) -> int:
    """Run the server in this terminal, with its log on stderr (Ctrl-C stops it)."""
    from .. import tasks
    from ..serve.server import run as run_server
    from .running import run_for_client

    group = click.get_current_context().find_root().command  # the ptm group: every client's call goes through it

    def execute(argv: list[str], client: Any, columns: int | None) -> int:
        return run_for_client(group, argv, client, terminal_width=columns)

    run_server(_arguments(**settings_), execute=execute, runs=lambda command: tasks.find(command) is not None)
    return EXIT_OK


@serve.command(context_settings=CONTEXT)
@server_settings
def start(**settings_: Any) -> int:
    """Start the server in the background and wait until it answers."""
    from ..serve.client import LOG_NAME, connect, start_lock, start_server
    from ..serve.protocol import runtime_dir, socket_path

    chosen = _arguments(**settings_)
    folder = runtime_dir(create=True)
    path = socket_path(folder)
    with start_lock(folder):
        sock = connect(path)
        if sock is not None:
            sock.close()
            note(f"a server is already running on {path}")
            return EXIT_OK
        arguments = [
            "--idle-timeout",
            repr(chosen.idle_timeout),
            "--keep-alive",
            repr(chosen.keep_alive),
            "--max-models",
            str(chosen.max_models),
            "--batch-window",
            repr(chosen.batch_window * 1000),
        ]
        pid = start_server(folder, arguments)
    note(f"started a server (pid {pid}) on {path}; its log is {folder / LOG_NAME}")
    return EXIT_OK


@serve.command(context_settings=CONTEXT)
def stop() -> int:
    """Stop the running server (its models are unloaded)."""
    from ..serve.client import ask, connect
    from ..serve.protocol import ServerUnavailable, runtime_dir, socket_path

    try:
        reply = ask("stop")
    except ServerUnavailable:
        note("no server is running")
        return EXIT_OK
    path = socket_path(runtime_dir(create=False))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sock = connect(path)
        if sock is None:
            break
        sock.close()
        time.sleep(0.05)
    note(f"stopped the server (pid {reply.get('pid')})")
    return EXIT_OK


@serve.command(context_settings=CONTEXT)
@format_option
def status(fmt: str | None) -> int:
    """The running server: pid, uptime, models loaded, requests and forward passes so far."""
    from ..serve.client import ask
    from ..serve.protocol import ServerUnavailable

    try:
        reply = ask("status")
    except ServerUnavailable:
        note("no server is running; `ptm serve start` starts one")
        return EXIT_INPUT_FAILED
    reply.pop("event", None)

    def rows(record: dict[str, Any]) -> list[dict[str, Any]]:
        models = ", ".join(f"{m.get('model')} ({m.get('weights')}, {m.get('device')})" for m in record["models"])
        return [{**record, "models": models or "none"}]

    columns = ["pid", "uptime_s", "models", "requests", "forward_passes", "images", "clients", "socket"]
    with stdout_is_data() as out, writer(out, fmt, columns=columns, flatten=rows) as records:
        records.write(reply)
    return EXIT_OK
