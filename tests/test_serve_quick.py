"""The quick path of ``ptm classify --server auto``: what it takes, it does as the click command does.

The entry point answers plain one-file calls through a running server
before click is imported (``ptm_cli.commands.quick``); everything else goes
to the click command. These tests hold the two to the same bytes: the
parser against click's own on generated argument lists, and whole runs
(stdout, stderr, exit code) with the quick path on and off, through a real
server, on good and broken inputs, usage errors, server errors, a server
that differs, and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import test_serve
from helpers import TINY_TOML, Result, run_ptm
from hypothesis import given, settings
from hypothesis import strategies as st

from ptm_cli.commands import quick

# test_serve's fixtures: one shared server for this module, its models folder, `warm` to use it.
model_folder = test_serve.model_folder
shared_server = test_serve.shared_server
warm = test_serve.warm
CLASSIFY = test_serve.CLASSIFY
Servers = test_serve.Servers

# --- the parser -----------------------------------------------------------------------------------

TOKENS = [
    "-m", "--model", "-w", "--weights", "-k", "--top-k", "-f", "--format", "--device", "--precision",
    "--batch-size", "--workers", "--resize", "--crop", "--files-from", "--server", "-r", "--recursive",
    "--full-decode", "-q", "--quiet", "-h", "--help", "--compile", "--report", "--labels", "--trust-repo",
    "--arg", "-V", "--", "-", "-qr", "-rqk3", "-k5", "-q5", "-qf", "-m=x", "--top-k=3", "--quiet=1",
    "--format=csv", "--format=CSV", "--server=auto", "--server=maybe", "--model=", "--crop=0", "--topk",
    "3", "0", "1024", "1025", "64", "65", " 5", "+5", "05", "1_0", "٣", "x", "auto", "never", "jsonl", "table",
    "csv", "json", "tsv", "fp32", "bf16", "FP32", "hub:a/b/c", "a.jpg", "b.png", "-x.jpg", "dir", "=",
]  # fmt: skip
FIELDS = ("model", "weights", "top_k", "fmt", "device", "precision", "batch_size", "workers", "resize", "crop",
          "files_from", "server", "recursive", "full_decode", "quiet")  # fmt: skip


def click_reads(args: list[str]) -> dict[str, Any] | None:
    """The classify command's parameters as click parses ``args``; None when click refuses them (or shows help)."""
    from ptm_cli.commands.cmd_classify import classify

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            with classify.make_context("classify", list(args)) as ctx:
                return dict(ctx.params)
        except (click.exceptions.ClickException, click.exceptions.Exit):
            return None


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=8))
def test_the_quick_parser_takes_only_what_click_reads_the_same_way(args: list[str]) -> None:
    taken = quick.parse_classify(["classify", *args])
    if taken is None:
        return  # click handles it, whatever it is
    params = click_reads(args)
    assert params is not None, f"the quick path took {args} but click refuses it"
    assert taken.images == list(params["images"])
    for name in FIELDS:
        assert getattr(taken, name) == params[name], (name, args)
    # What the quick path never takes: options that need this process.
    assert not params["compile_model"] and params["report_path"] is None
    assert params["labels_file"] is None and not params["trust_repo"] and params["hub_args"] == ()


@pytest.mark.parametrize(
    "args",
    [["-k", "3", "a.jpg"], ["a.jpg", "-qk3", "--format=csv"], ["--", "-x.jpg"], ["-rq", "dir", "--server", "never"],
     ["-m", "resnet18", "-w", "-k", "a.jpg"], ["--files-from", "list.txt", "--precision=bf16", "--crop", "224"]],
)  # fmt: skip
def test_plain_spellings_are_taken_and_read_as_click_reads_them(args: list[str]) -> None:
    taken = quick.parse_classify(["classify", *args])
    params = click_reads(args)
    assert taken is not None and params is not None
    assert (taken.images, [getattr(taken, n) for n in FIELDS]) == (list(params["images"]), [params[n] for n in FIELDS])


def test_the_choices_are_the_commands_own() -> None:
    from ptm_cli.commands import options
    from ptm_cli.commands.cmd_classify import classify
    from ptm_cli.output.records import FORMATS

    assert quick.PRECISIONS == options.PRECISIONS and quick.FORMATS == FORMATS
    server = next(p for p in classify.params if p.name == "server")
    assert isinstance(server.type, click.Choice) and tuple(server.type.choices) == quick.SERVER_MODES


# --- whole runs, the quick path on and off ----------------------------------------------------------


def both_ways(args: list[str], monkeypatch: pytest.MonkeyPatch, stdin: bytes = b"") -> tuple[Result, Result]:
    """``args`` run in this process as the entry point runs them, and again with the quick path turned off."""
    quick_way = run_ptm(args, stdin=stdin)
    with monkeypatch.context() as patch:
        patch.setattr(quick, "quick_classify", lambda argv: None)
        click_way = run_ptm(args, stdin=stdin)
    return quick_way, click_way


def test_a_plain_call_imports_no_click_and_prints_what_the_command_prints(warm: Servers) -> None:
    before = warm.status()["requests"]
    formats = ("jsonl", "csv", "tsv", "json", "table")
    code = (
        "import sys\nfrom ptm_cli.cli import run\n"
        "out = []\n"
        f"for fmt in {formats!r}:\n"
        f"    out.append(run([*{list(CLASSIFY)!r}, '-f', fmt, '-k3', '--server=auto', 'photo0.png', 'album']))\n"
        "loaded = [m for m in ('click', 'ptm_cli.commands.cmd_classify', 'ptm_cli.cache.catalog', 'torch')\n"
        "          if m in sys.modules]\n"
        "print('CODES', out, 'LOADED=' + ','.join(loaded), file=sys.stderr)\n"
    )
    served = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, check=True)
    alone = b"".join(run_ptm([*CLASSIFY, "-f", fmt, "-k", "3", "photo0.png", "album"]).stdout_bytes for fmt in formats)
    assert served.stdout == alone
    # album/b.jpg is not a picture: exit 1, and the note that says so is click's echo (imported for it).
    assert served.stderr.decode().endswith("CODES [1, 1, 1, 1, 1] LOADED=click\n")
    assert served.stderr.decode().count("ptm: 1 of 3 inputs failed; see their error records\n") == 5
    assert warm.status()["requests"] == before + 5
    good = subprocess.run([sys.executable, "-c", code.replace("'album'", "'small1.jpg'")], capture_output=True,
                          timeout=120, check=True)  # fmt: skip
    assert good.stderr.endswith(b"CODES [0, 0, 0, 0, 0] LOADED=\n")


@pytest.mark.parametrize(
    "args",
    [
        [*CLASSIFY, "-f", "jsonl", "small2.jpg"],
        [*CLASSIFY, "photo0.png", "broken.jpg", "missing.png", "album", "-k", "2", "--batch-size", "2"],
        [*CLASSIFY, "-f", "csv", "--", "photo1.png"],
        [*CLASSIFY, "-k", "0", "photo0.png"],  # click's usage error
        [*CLASSIFY, "--format", "CSV", "photo0.png"],
        [*CLASSIFY, "-q5", "photo0.png"],
        [*CLASSIFY],  # no images
        [*CLASSIFY, "--help"],
        ["classify", "-m", "nosuchmodel", "photo0.png"],  # the server's error, then click's run reports it
        [*CLASSIFY[:3], "./nothing.pth", "photo0.png"],
        [*CLASSIFY, "--crop", "100000", "photo0.png"],
        [*CLASSIFY, "--device", "cuda:7", "photo0.png"],
        [*CLASSIFY, "-", "photo0.png"],  # stdin: the click command's
    ],
    ids=lambda args: " ".join(args[4:]) or "none",
)
def test_the_entry_point_prints_what_the_click_command_prints(
    warm: Servers, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    stdin = (warm.cwd / "photo1.png").read_bytes()
    for server in (["--server", "auto"], ["--server", "never"]):
        quick_way, click_way = both_ways([*args, *server], monkeypatch, stdin)
        assert (quick_way.code, quick_way.stdout_bytes, quick_way.stderr) == (
            click_way.code, click_way.stdout_bytes, click_way.stderr)  # fmt: skip


def test_a_server_that_differs_is_noted_once(warm: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    before = warm.status()["requests"]
    monkeypatch.setenv("PTM_MAX_PIXELS", "1000000")
    quick_way, click_way = both_ways([*CLASSIFY, "-f", "jsonl", "--server", "auto", "photo0.png"], monkeypatch)
    assert (quick_way.code, quick_way.stdout, quick_way.stderr) == (click_way.code, click_way.stdout, click_way.stderr)
    assert quick_way.stderr == (
        "ptm: not using the server: the running server differs in $PTM_MAX_PIXELS; running here\n"
    )
    assert warm.status()["requests"] == before


# --- Ctrl-C while the server works -----------------------------------------------------------------


@contextlib.contextmanager
def silent_server(runtime: Path) -> Iterator[threading.Event]:
    """A socket where a server would be that takes a request and never answers; the event: a request came."""
    folder = runtime / "ptm"
    folder.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(folder / "server.sock"))
    listener.listen(4)
    asked = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                held.append(conn)
                if conn.recv(8):
                    asked.set()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield asked
    finally:
        listener.close()
        for conn in held:
            conn.close()


def test_ctrl_c_while_the_server_works_ends_as_the_click_command_ends(tmp_path: Path) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="ptm-quick-"))
    args = ["classify", "-f", "jsonl", "--server", "auto", str(tmp_path / "a.jpg")]
    turned_off = "import ptm_cli.commands.quick as q\nq.quick_classify = lambda argv: None\n"
    results = []
    try:
        with silent_server(runtime) as asked:
            for prelude in ("", turned_off):
                asked.clear()
                code = f"{prelude}from ptm_cli.cli import main\nmain({args!r})\n"
                env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
                with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      env=env) as client:  # fmt: skip
                    assert asked.wait(timeout=120), "the client sent no request"
                    time.sleep(0.2)  # the request is sent; the client waits for the answer
                    client.send_signal(signal.SIGINT)
                    out, err = client.communicate(timeout=60)
                    results.append((client.returncode, out, err))
    finally:
        import shutil

        shutil.rmtree(runtime, ignore_errors=True)
    assert results[0] == results[1] == (130, b"", b"\nptm: interrupted\n")


# --- the server's catalog ---------------------------------------------------------------------------


def test_the_server_reads_its_catalog_again_only_when_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ptm_cli.serve.warm import WarmCatalog

    catalog = tmp_path / "mine.toml"
    catalog.write_text(TINY_TOML)
    monkeypatch.setenv("PTM_CATALOG", str(catalog))
    settled = time.time() - 60
    os.utime(catalog, (settled, settled))
    warm_catalog = WarmCatalog()
    first = warm_catalog.get()
    assert warm_catalog.get() is first and first.variants("tiny")
    catalog.write_text(TINY_TOML.replace('name = "tiny"', 'name = "tynu"'))  # the same size
    os.utime(catalog, (settled + 1, settled + 1))
    second = warm_catalog.get()
    assert second is not first and second.variants("tynu") and not second.variants("tiny")
    catalog.write_text(TINY_TOML)  # just now: not trusted to stay as it is
    assert warm_catalog.get() is not warm_catalog.get()
    catalog.unlink()
    from ptm_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        warm_catalog.get()
