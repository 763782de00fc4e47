"""``ptm classify ... --server auto`` without click: a warm server's one-file calls, answered at once.

With a warm server, what a one-file call spends beyond the forward pass is
start-up: Python, then importing click and the command modules. This
module recognises the plain form of that call before click is imported (the
options below, spelt as click reads them, with values click accepts), runs
it with the functions the click command runs (the same request, the same
writer), and says None for everything else: help, an option it does not
know, ``-`` or ``--files-from -`` (stdin cannot be read twice), a value
click would refuse, no server running, or a server that differs or answers
with an error before its first record. Then the click command handles the
call from the start, with its own messages and exit codes, exactly as if
this module did not exist; nothing has been written by then.
"""

from __future__ import annotations

import os
import stat
import sys
from typing import Any

from ..output.records import FORMATS
from ..settings import PRECISIONS, SERVER_MODES

# The classify options this path takes, each spelling with its field; the defaults are ClassifyCall's.
_VALUES = {
    "-m": "model", "--model": "model", "-w": "weights", "--weights": "weights",
    "-k": "top_k", "--top-k": "top_k", "-f": "fmt", "--format": "fmt", "--device": "device",
    "--precision": "precision", "--batch-size": "batch_size", "--workers": "workers",
    "--resize": "resize", "--crop": "crop", "--files-from": "files_from", "--server": "server",
}  # fmt: skip
_FLAGS = {"-r": "recursive", "--recursive": "recursive", "--full-decode": "full_decode", "-q": "quiet",
          "--quiet": "quiet"}  # fmt: skip
_INTEGERS = {"top_k": (1, None), "batch_size": (1, 1024), "workers": (1, 64), "resize": (1, None), "crop": (1, None)}
_CHOICES = {"fmt": FORMATS, "precision": PRECISIONS, "server": SERVER_MODES}


class ClassifyCall:
    """``ptm classify``'s arguments with click's defaults (a plain class: no dataclasses on this path)."""

    model: str = "resnet101"
    weights: str = "DEFAULT"
    top_k: int = 5
    fmt: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 8
    workers: int = 2
    resize: int | None = None
    crop: int | None = None
    files_from: str | None = None
    server: str | None = None
    recursive: bool = False
    full_decode: bool = False
    quiet: bool = False

    def __init__(self) -> None:
        self.images: list[str] = []


class _NotPlain(Exception):
    """The call is not one this module takes: click handles it."""


def parse_classify(argv: list[str]) -> ClassifyCall | None:
    """``ptm classify ARGS`` read as click reads it; None for any call click should see itself."""
    if not argv or argv[0] != "classify":
        return None
    from ..settings import completing

    if completing():
        return None
    call = ClassifyCall()
    rest = list(argv[1:])
    try:
        while rest:
            arg = rest.pop(0)
            if arg == "--":
                call.images.extend(rest)
                break
            if arg[:1] != "-" or len(arg) == 1:
                call.images.append(arg)
            elif arg.startswith("--"):
                name, equals, value = arg.partition("=")
                if name in _FLAGS and not equals:
                    setattr(call, _FLAGS[name], True)
                elif name in _VALUES:
                    _store(call, _VALUES[name], value if equals else _next_value(rest))
                else:
                    return None  # --help, --compile, --report, hub options, a misspelling: click's
            else:
                _short_options(call, arg, rest)
    except _NotPlain:
        return None
    return call


def _short_options(call: ClassifyCall, arg: str, rest: list[str]) -> None:
    """``-q``, ``-k5``, ``-qk 5``: flags and one value-taking option together, as click's short options."""
    for position, letter in enumerate(arg[1:], start=2):
        spelling = "-" + letter
        if spelling in _FLAGS:
            setattr(call, _FLAGS[spelling], True)
        elif spelling in _VALUES:
            _store(call, _VALUES[spelling], arg[position:] if position < len(arg) else _next_value(rest))
            return
        else:
            raise _NotPlain  # -h, -5, an unknown letter


def _next_value(rest: list[str]) -> str:
    if not rest:
        raise _NotPlain  # "requires an argument": click says so
    return rest.pop(0)


def _store(call: ClassifyCall, name: str, value: str) -> None:
    if name in _INTEGERS:
        low, high = _INTEGERS[name]
        if not (value.isascii() and value.isdigit()) or int(value) < low or (high is not None and int(value) > high):
            raise _NotPlain  # click's message for it
        setattr(call, name, int(value))
    elif name in _CHOICES and value not in _CHOICES[name]:
        raise _NotPlain
    else:
        setattr(call, name, value)


def _plain_inputs(call: ClassifyCall) -> bool:
    """Inputs the quick path may name and, if it must step back, click can read again just the same.

    Also click's own check of each image argument (an existing path must be
    readable): what it would refuse, it refuses with its own message.
    """
    if not call.images and call.files_from is None:
        return False
    if "-" in call.images or call.files_from == "-":
        return False
    for name in call.images:
        try:
            info = os.stat(name)
        except OSError:
            continue  # a missing file is an error record, from the server as from the process
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)) or not os.access(name, os.R_OK):
            return False  # a pipe read by the server could not be read again; an unreadable one is click's
    if call.files_from is not None:
        try:
            return stat.S_ISREG(os.stat(call.files_from).st_mode)
        except OSError:
            return False
    return True


def quick_classify(argv: list[str]) -> int | None:
    """Run a plain ``ptm classify ... --server auto`` through a running server; None to let click run it."""
    call = parse_classify(argv)
    if call is None or not _server_wanted(call) or call.model.startswith("hub:") or not _plain_inputs(call):
        return None
    try:
        job = _open_job(call)
        if job is None:
            return None
        from .records import write_served_records

        with job:
            named = (tuple(call.images), call.recursive, call.files_from)
            return write_served_records(job.records(), call.fmt, call.quiet, call.batch_size, named)
    except (EOFError, KeyboardInterrupt):
        # What click does with Ctrl-C in a command: a blank line (it closes the terminal's ``^C``),
        # then the usual ``ptm: interrupted`` and exit 130.
        import click

        click.echo(file=sys.stderr)
        raise KeyboardInterrupt from None


def _server_wanted(call: ClassifyCall) -> bool:
    from ..errors import ConfigError
    from ..settings import server_mode

    try:
        return (call.server or server_mode()) == "auto"
    except ConfigError:
        return False  # click's path reports it, after any error it finds first


def _open_job(call: ClassifyCall) -> Any:
    """The job accepted by the running server, or None when the click command should run the call."""
    from ..errors import PtmError
    from ..images.inputs import expand_inputs
    from ..serve.client import Job, connect, encode_inputs
    from ..serve.protocol import Mismatch, runtime_dir, socket_path

    try:
        items = list(expand_inputs(call.images, recursive=call.recursive, files_from=call.files_from))
        sock = connect(socket_path(runtime_dir(create=False)))
    except (PtmError, OSError):
        return None  # no server answers (click's path starts one), or an error click reports in its order
    if sock is None:
        return None
    encoded, payload = encode_inputs(items)
    options = {"model": call.model, "weights": call.weights, "device": call.device, "precision": call.precision,
               "resize": call.resize, "crop": call.crop}  # fmt: skip
    request = {"options": options, "inputs": encoded, "top_k": call.top_k, "batch_size": call.batch_size,
               "workers": call.workers, "full_decode": call.full_decode}  # fmt: skip
    try:
        return Job(sock, "classify", request, payload)
    except (Mismatch, PtmError, OSError):
        sock.close()
        return None  # nothing is written yet: the click command says why, or gives the same error itself
    except BaseException:
        sock.close()
        raise
