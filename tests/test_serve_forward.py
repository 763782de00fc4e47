"""A command line handed to the warm server as typed: one parser, the client's streams, folder and rights.

The client (``ptm_cli.cli`` before click is imported) sends its argv, its
working folder and its three standard streams; the server parses the call
with the one click command and runs it as if in the client's process. So
every call, help and usage errors included, prints exactly what it prints
without a server, and a client imports neither click nor torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_ptm
from serverkit import CLASSIFY, DETECT, SEGMENT, Servers, ptm

# --- the client --------------------------------------------------------------------------------------


def test_a_client_imports_neither_click_nor_torch_and_prints_what_the_command_prints(warm: Servers) -> None:
    before = warm.status()["requests"]
    formats = ("jsonl", "csv", "tsv", "json", "table")
    code = (
        "import sys\nfrom ptm_cli.cli import run\n"
        "out = []\n"
        f"for fmt in {formats!r}:\n"
        f"    out.append(run([*{list(CLASSIFY)!r}, '-f', fmt, '-k3', '--server=auto', 'photo0.png', 'album']))\n"
        "loaded = [m for m in ('click', 'ptm_cli.commands.root', 'ptm_cli.cache.catalog', 'torch', 'PIL')\n"
        "          if m in sys.modules]\n"
        "print('CODES', out, 'LOADED=' + ','.join(loaded), file=sys.stderr)\n"
    )
    served = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, check=True)
    alone = b"".join(run_ptm([*CLASSIFY, "-f", fmt, "-k", "3", "photo0.png", "album"]).stdout_bytes for fmt in formats)
    assert served.stdout == alone
    # album/b.jpg is not a picture: exit 1, and the note that says so comes from the server, on this stderr.
    assert served.stderr.decode().endswith("CODES [1, 1, 1, 1, 1] LOADED=\n")
    assert served.stderr.decode().count("ptm: 1 of 3 inputs failed; see their error records\n") == 5
    assert warm.status()["requests"] == before + 5


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
        ["classify", "-m", "nosuchmodel", "photo0.png"],
        [*CLASSIFY[:3], "./nothing.pth", "photo0.png"],
        [*CLASSIFY, "--crop", "100000", "photo0.png"],
        [*CLASSIFY, "--device", "cuda:7", "photo0.png"],
        [*CLASSIFY, "-", "photo0.png"],  # an image on stdin
        [*CLASSIFY, "--files-from", "-", "-f", "csv"],  # a list of paths on stdin
        ["zebra", "-w", "./generator.pth", "--size", "64", "-", "-o", "-"],  # image bytes in and out
        [*DETECT, "--min-score", "0.3", "photo0.png", "broken.jpg", "-f", "csv"],
        [*DETECT, "--max-detections", "3", "-", "-o", "-"],  # an image in, the drawn image out
        [*DETECT, "--classes", "unicorn", "photo0.png"],
        [*SEGMENT, "photo0.png", "broken.jpg", "-f", "csv"],
        [*SEGMENT, "-", "-o", "-"],  # an image in, its class mask out
        [*SEGMENT, "--cutout", "unicorn", "photo0.png"],
        ["embed", *CLASSIFY[1:], "photo0.png", "broken.jpg", "-f", "jsonl"],  # records with their vectors
        ["embed", *CLASSIFY[1:], "-", "-f", "csv"],
        ["translate", "--help"],
    ],
    ids=lambda args: " ".join(args[:1] + args[5:]) or "none",
)
def test_every_call_prints_through_the_server_what_it_prints_without_one(
    warm: Servers, args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # help is wrapped to the terminal: the same width on both sides
    stdin = (warm.cwd / "photo1.png").read_bytes() if "--files-from" not in args else b"photo0.png\nbroken.jpg\n"
    before = warm.status()["requests"]
    served = ptm(*args, stdin=stdin, env={"PTM_SERVER": "auto"})
    alone = run_ptm(args, stdin=stdin)  # in this process: the command itself, with no server
    assert (served.returncode, served.stdout, served.stderr.decode()) == (alone.code, alone.stdout_bytes, alone.stderr)
    assert warm.status()["requests"] == before + 1  # the server took it, whatever it printed


def test_relative_paths_umask_and_outputs_are_the_clients(warm: Servers, tmp_path: Path) -> None:
    """The server works in the client's folder, with its umask: relative names and new files are the client's."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "list.txt").write_text(f"{warm.cwd / 'photo0.png'}\n")
    (folder / "in.png").write_bytes((warm.cwd / "photo1.png").read_bytes())
    env = {"PTM_CATALOG": str(warm.cwd / "tiny.toml")}
    code = (
        "import os, sys\nos.umask(0o077)\nfrom ptm_cli.cli import main\n"
        f"main(['zebra', '-w', {str(warm.cwd / 'generator.pth')!r}, '--size', '32', '--output-dir', 'out', 'in.png',"
        " '--server', 'auto'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, capture_output=True, timeout=120, env={**os.environ, **env}
    )
    assert done.returncode == 0, done.stderr
    written = folder / "out" / "in.png"
    assert b'"output": "out/in.png"' in done.stdout
    assert written.is_file() and stat.S_IMODE(written.stat().st_mode) == 0o600  # the client's umask
    assert (warm.folder / "in.png").exists() is False  # nothing landed in the server's own folder


def test_a_server_that_differs_is_noted_once_and_the_call_runs_here(warm: Servers) -> None:
    before = warm.status()["requests"]
    args = [*CLASSIFY, "-f", "jsonl", "photo0.png"]
    alone = run_ptm(args)
    differs = ptm(*args, "--server", "auto", env={"PTM_MAX_PIXELS": "1000000"})  # a result-changing setting
    assert differs.returncode == 0 and differs.stdout == alone.stdout_bytes
    assert differs.stderr == b"ptm: not using the server: the running server differs in $PTM_MAX_PIXELS; running here\n"
    formats = ptm(*args, "--server", "auto", env={"PTM_EXTRA_FORMATS": "TGA"})  # which files are images at all
    assert formats.stderr == (
        b"ptm: not using the server: the running server differs in $PTM_EXTRA_FORMATS; running here\n"
    )
    assert warm.status()["requests"] == before


def test_a_client_with_other_groups_runs_by_itself(warm: Servers) -> None:
    """Same uid is not enough: a client without the server's groups must not read files through it."""
    if os.getuid() != 0:
        pytest.skip("only root can start a client with fewer groups here")
    before = warm.status()["requests"]
    done = subprocess.run(
        [sys.executable, "-m", "ptm_cli", *CLASSIFY, "-f", "jsonl", "photo0.png", "--server", "auto"],
        capture_output=True,
        timeout=120,
        preexec_fn=lambda: os.setgroups([12345]),
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == b"ptm: not using the server: the running server differs in groups; running here\n"
    assert warm.status()["requests"] == before


def test_calls_that_need_the_clients_own_process_are_sent_back(warm: Servers, tmp_path: Path) -> None:
    """A hub model runs repository code trusted for this call only: it runs in the client, never the server."""
    repo = tmp_path / "repo"
    repo.mkdir()
    marker = tmp_path / "ran-in.txt"
    (repo / "hubconf.py").write_text(
        "import os\nimport torch\ndependencies = ['torch']\n\n"
        "def model():\n"
        f"    open({str(marker)!r}, 'w').write(str(os.getpid()))\n"
        "    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1000))\n"
    )
    args = [
        sys.executable,
        "-m",
        "ptm_cli",
        "classify",
        "-m",
        f"hub:{repo}/model",
        "--trust-repo",
        "-f",
        "jsonl",
        "photo0.png",
        "--server",
        "auto",
    ]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as client:
        out, err = client.communicate(timeout=120)
    assert client.returncode == 0, err
    assert b'"input": "photo0.png"' in out and b"not using the server" not in err
    assert marker.read_text() == str(client.pid)  # the repository's code ran in the client


def test_a_results_page_is_written_through_the_server(warm: Servers, tmp_path: Path) -> None:
    before = warm.status()["requests"]
    page = tmp_path / "page.html"
    served = ptm(*CLASSIFY, "-f", "jsonl", "photo0.png", "--report", str(page), "--server", "auto")
    alone = run_ptm([*CLASSIFY, "-f", "jsonl", "photo0.png"])
    assert served.returncode == 0 and served.stdout == alone.stdout_bytes and page.is_file()
    assert b"Classification" in page.read_bytes()
    assert warm.status()["requests"] == before + 1


# --- Ctrl-C while the server works -------------------------------------------------------------------------


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


def test_ctrl_c_while_a_silent_server_holds_the_call_ends_as_the_command_ends(tmp_path: Path) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="ptm-fwd-"))
    args = ["classify", "-f", "jsonl", "--server", "auto", str(tmp_path / "a.jpg")]
    code = (
        "from ptm_cli import settings\nsettings.tuning.serve_interrupt_wait = 0.5\n"
        f"from ptm_cli.cli import main\nmain({args!r})\n"
    )
    try:
        with silent_server(runtime) as asked:
            env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
            with subprocess.Popen(
                [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
            ) as client:
                assert asked.wait(timeout=120), "the client sent no request"
                time.sleep(0.2)  # the request is sent; the client waits for the answer
                client.send_signal(signal.SIGINT)
                out, err = client.communicate(timeout=60)
    finally:
        import shutil

        shutil.rmtree(runtime, ignore_errors=True)
    assert (client.returncode, out, err) == (130, b"", b"\nptm: interrupted\n")


def test_ctrl_c_stops_the_command_in_the_server_which_says_so(warm: Servers) -> None:
    many = ["photo0.png", "small1.jpg", "photo2.png"] * 100
    args = [sys.executable, "-m", "ptm_cli", *CLASSIFY, "--server", "auto", "-f", "jsonl", "--batch-size", "1", *many]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as client:
        assert client.stdout is not None
        client.stdout.readline()
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=60)
    assert client.returncode == 130
    assert err.endswith(b"ptm: interrupted\n") and b"Traceback" not in err
    assert out.count(b"\n") < len(many)  # it stopped part-way


# --- the catalog a long-lived process keeps ------------------------------------------------------------------


def test_the_catalog_is_read_again_only_when_a_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers import TINY_TOML

    from ptm_cli.cache.catalog import Catalog
    from ptm_cli.errors import ConfigError

    catalog = tmp_path / "mine.toml"
    catalog.write_text(TINY_TOML)
    monkeypatch.setenv("PTM_CATALOG", str(catalog))
    settled = time.time() - 60
    os.utime(catalog, (settled, settled))
    first = Catalog.load()
    assert Catalog.load() is first and first.variants("tiny")
    catalog.write_text(TINY_TOML.replace('name = "tiny"', 'name = "tynu"'))  # the same size
    os.utime(catalog, (settled + 1, settled + 1))
    second = Catalog.load()
    assert second is not first and second.variants("tynu") and not second.variants("tiny")
    catalog.write_text(TINY_TOML)  # just now: not trusted to stay as it is
    assert Catalog.load() is not Catalog.load()
    catalog.unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        Catalog.load()
