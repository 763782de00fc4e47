"""``ptm serve`` and ``--server auto``: real server processes, real client processes.

Every server a test starts is stopped by the test (``serverkit.Servers``, through
the fixtures in conftest), even when the test fails. Waits are bounded. Each
test has its own short runtime folder (XDG_RUNTIME_DIR).
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from corpus import write_corpus
from helpers import run_ptm
from http_server import FixtureServer
from serverkit import CLASSIFY, Servers, ptm

# --- same output as in-process ------------------------------------------------------------------


def test_classify_through_the_server_prints_what_the_process_prints(warm: Servers) -> None:
    before = warm.status()["requests"]
    for fmt in ("jsonl", "csv", "table", "json"):
        args = [*CLASSIFY, "-f", fmt, "-k", "3", "photo0.png", "broken.jpg", "missing.png", "small1.jpg", "album"]
        alone = run_ptm(args)
        served = ptm(*args, "--server", "auto")
        assert (served.returncode, served.stdout, served.stderr.decode()) == (
            alone.code,
            alone.stdout_bytes,
            alone.stderr,
        ), fmt
        assert alone.code == 1 and alone.stderr == "ptm: 3 of 6 inputs failed; see their error records\n"
    assert warm.status()["requests"] == before + 4  # they did go through the server


def test_the_hostile_corpus_gives_the_same_records_through_the_server(warm: Servers, tmp_path: Path) -> None:
    expected = write_corpus(tmp_path / "corpus")
    listing = tmp_path / "corpus.txt"
    listing.write_text("".join(f"{path}\n" for path, _ in expected))
    args = [*CLASSIFY, "-f", "jsonl", "--batch-size", "4", "--files-from", str(listing)]
    alone = run_ptm(args)
    served = ptm(*args, env={"PTM_SERVER": "auto"})
    assert served.returncode == alone.code == 1
    assert served.stdout == alone.stdout_bytes
    assert served.stderr.decode() == alone.stderr
    assert len(alone.records()) == len(expected)


def test_stdin_and_files_from_stdin_through_the_server(warm: Servers) -> None:
    before = warm.status()["requests"]
    photo = (warm.cwd / "photo1.png").read_bytes()
    for args, stdin in ([[*CLASSIFY, "-"], photo], [[*CLASSIFY, "--files-from", "-"], b"photo0.png\nbroken.jpg\n"]):
        alone = run_ptm([*args, "-f", "jsonl"], stdin=stdin)
        served = ptm(*args, "-f", "jsonl", "--server", "auto", stdin=stdin)
        assert (served.returncode, served.stdout) == (alone.code, alone.stdout_bytes)
    assert warm.status()["requests"] == before + 2


def test_usage_and_weights_errors_are_the_same_through_the_server(warm: Servers, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(b"PK\x03\x04 not really a weights file")
    for args in (
        [*CLASSIFY[:3], "./nothing.pth", "photo0.png"],
        ["classify", "-m", "nosuchmodel", "photo0.png"],
        ["classify", "-m", "tiny", "-w", str(damaged), "photo0.png"],
        [*CLASSIFY, "-", "-"],
    ):
        alone = run_ptm(args)
        served = ptm(*args, "--server", "auto")
        assert (served.returncode, served.stdout.decode(), served.stderr.decode()) == (
            alone.code,
            alone.stdout,
            alone.stderr,
        ), args
        assert alone.code == 2


def test_zebra_through_the_server_writes_the_same_images(warm: Servers, tmp_path: Path) -> None:
    before = warm.status()["requests"]
    common = ["zebra", "-w", "./generator.pth", "--size", "64"]
    alone = run_ptm([*common, "photo0.png", "-o", "-"])
    served = ptm(*common, "photo0.png", "-o", "-", "--server", "auto")
    assert served.returncode == alone.code == 0
    assert served.stdout == alone.stdout_bytes and served.stdout.startswith(b"\x89PNG")
    piped = ptm(*common, "-", "-o", "-", "--server", "auto", stdin=(warm.cwd / "photo0.png").read_bytes())
    assert piped.stdout == alone.stdout_bytes
    inputs = ["photo0.png", "broken.jpg", "small2.jpg"]
    here, there = tmp_path / "here", tmp_path / "there"
    alone = run_ptm([*common, "--output-dir", str(here), "--suffix", "_z", *inputs])
    served = ptm(*common, "--output-dir", str(there), "--suffix", "_z", *inputs, "--server", "auto")
    assert served.returncode == alone.code == 1
    records = [json.loads(line) for line in served.stdout.decode().splitlines()]
    assert [{k: v for k, v in r.items() if k not in ("seconds", "output")} for r in records] == [
        {k: v for k, v in r.items() if k not in ("seconds", "output")} for r in alone.records()
    ]
    assert [r.get("output") for r in records] == [f"{there}/photo0_z.png", None, f"{there}/small2_z.png"]
    for name in ("photo0_z.png", "small2_z.png"):
        assert (there / name).read_bytes() == (here / name).read_bytes()
    again = ptm(*common, "--output-dir", str(there), "--suffix", "_z", "photo0.png", "--server", "auto")
    assert again.returncode == 1 and b"already exists; use --force" in again.stdout
    assert warm.status()["requests"] == before + 4


# --- the client side ---------------------------------------------------------------------------


def test_a_client_through_the_server_imports_no_torch(warm: Servers) -> None:
    before = warm.status()["requests"]
    code = (
        "import sys\nfrom ptm_cli.cli import run\n"
        "code = run(['classify', '--server', 'auto', '-m', 'tiny', '-w', './tiny.pth', '-f', 'jsonl', 'photo2.png'])\n"
        "heavy = [m for m in ('torch', 'torchvision', 'numpy', 'PIL') if m in sys.modules]\n"
        "print('CODE', code, 'HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, check=True)
    assert b"CODE 0 HEAVY=\n" in out.stderr
    assert out.stdout == run_ptm([*CLASSIFY, "-f", "jsonl", "photo2.png"]).stdout_bytes
    assert warm.status()["requests"] == before + 1


def test_auto_starts_one_server_for_clients_that_arrive_together(servers: Servers, served_models: Path) -> None:
    clients = [
        subprocess.Popen(
            [sys.executable, "-m", "ptm_cli", *CLASSIFY, "--server", "auto", "-f", "jsonl", f"small{i}.jpg"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(3)
    ]
    outputs = [c.communicate(timeout=120) for c in clients]
    assert [c.returncode for c in clients] == [0, 0, 0], outputs
    assert all(err == b"" for _, err in outputs)
    log = (servers.folder / "server.log").read_text()
    assert log.count("listening on") == 1 and "already running" not in log
    status = servers.status()
    assert status["pid"] == servers.lock_holder() and status["requests"] == 3


# --- concurrency, batching, clients that leave --------------------------------------------------


def test_eight_concurrent_clients_share_a_forward_pass_and_get_their_own_answers(
    servers: Servers, served_models: Path
) -> None:
    servers.start("--batch-window", "3000")  # long enough for 8 processes to start on 2 busy cores
    names = [f"{kind}{i}.{ext}" for kind, ext in (("photo", "png"), ("small", "jpg")) for i in range(3)]
    names += ["photo0.png", "small1.jpg"]
    clients = [
        subprocess.Popen(
            [sys.executable, "-m", "ptm_cli", *CLASSIFY, "--server", "auto", "-f", "jsonl", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in names
    ]
    outputs = [c.communicate(timeout=120) for c in clients]
    assert [c.returncode for c in clients] == [0] * 8, outputs
    status = servers.status()
    assert status["images"] == 8 and status["requests"] == 8
    assert status["forward_passes"] <= 2, status  # one when all eight arrive within the window
    alone = run_ptm([*CLASSIFY, "-f", "jsonl", "--batch-size", "1", *names]).records()
    for (out, _), expected in zip(outputs, alone, strict=True):
        got = json.loads(out)
        assert got["input"] == expected["input"]
        assert [p["index"] for p in got["predictions"]] == [p["index"] for p in expected["predictions"]]
        for a, b in zip(got["predictions"], expected["predictions"], strict=True):
            assert a["probability"] == pytest.approx(b["probability"], abs=2e-6)


def test_a_client_that_leaves_mid_stream_does_not_disturb_the_next(warm: Servers) -> None:
    before = warm.status()["images"]
    many = ["photo0.png", "small1.jpg", "photo2.png"] * 150
    args = [sys.executable, "-m", "ptm_cli", *CLASSIFY, "--server", "auto", "-f", "jsonl", "--batch-size", "1", *many]
    # `| head -1`: the reader closes the pipe.
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as head:
        assert head.stdout is not None and head.stderr is not None
        assert head.stdout.readline().startswith(b'{"input": "photo0.png"')
        head.stdout.close()
        assert head.wait(timeout=60) == 141
        assert b"Traceback" not in head.stderr.read()
    # Ctrl-C, then SIGKILL: the client's own work stops, the server goes on.
    for sig, code in ((signal.SIGINT, 130), (signal.SIGKILL, -9)):
        with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as client:
            assert client.stdout is not None
            client.stdout.readline()
            client.send_signal(sig)
            client.communicate(timeout=60)
            assert client.returncode == code
    after = ptm(*CLASSIFY, "-f", "jsonl", "photo2.png", "--server", "auto")
    assert after.returncode == 0 and after.stdout == run_ptm([*CLASSIFY, "-f", "jsonl", "photo2.png"]).stdout_bytes
    deadline = time.monotonic() + 30
    while (status := warm.status())["clients"] and time.monotonic() < deadline:
        time.sleep(0.1)  # the abandoned jobs notice at their next record
    assert status["clients"] == 0 and status["images"] - before < len(many) * 3


# --- hostile requests ---------------------------------------------------------------------------


def _exchange(path: Path, raw: bytes, fds: list[int] | None = None) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        if fds:
            sent = socket.send_fds(sock, [raw], fds)
            sock.sendall(raw[sent:])
        else:
            sock.sendall(raw)
        while True:  # the counts of written outputs a run sends come before its last word
            head = sock.recv(8, socket.MSG_WAITALL)
            size, _ = struct.unpack("!II", head)
            reply: dict[str, Any] = json.loads(sock.recv(size, socket.MSG_WAITALL))
            if reply.get("event") != "written":
                return reply


def _frame(message: Any) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack("!II", len(body), 0) + body


def test_malformed_and_hostile_requests_get_an_error_reply_and_the_server_goes_on(
    warm: Servers, tmp_path: Path
) -> None:
    from ptm_cli.serve.protocol import identity

    before = warm.status()
    path = warm.folder / "server.sock"
    good = {
        "op": "run",
        "identity": identity(),
        "argv": [*CLASSIFY, "-f", "jsonl", "photo0.png"],
        "umask": 0o022,
        "columns": 80,
        "console_width": 80,
        "streams": [["utf-8", "strict"]] * 3,
    }
    deep = b"[" * 200_000 + b"]" * 200_000
    hostile = {
        "a 4 GiB length prefix": struct.pack("!II", 0xFFFFFFFF, 0),
        "a 4 GiB payload": struct.pack("!II", 2, 0xFFFFFFF0) + b"{}",
        "not JSON": struct.pack("!II", 5, 0) + b"{nope",
        "not UTF-8": struct.pack("!II", 4, 0) + b"\xff\xfe{}",
        "a JSON list": _frame([1, 2, 3]),
        "nested 200,000 deep": struct.pack("!II", len(deep), 0) + deep,
        "no op": _frame({"hello": 1}),
        "an unknown op": _frame({"op": "rm -rf"}),
        "no descriptors": _frame(good),
        "argv that is a string": _frame({**good, "argv": "classify photo0.png"}),
        "argv with a number": _frame({**good, "argv": ["classify", 7]}),
        "argv with a NUL": _frame({**good, "argv": ["classify", "photo0.png\0"]}),
        "an empty argv": _frame({**good, "argv": []}),
        "a umask as text": _frame({**good, "umask": "022"}),
        "a umask out of range": _frame({**good, "umask": 0o7777}),
        "a huge terminal": _frame({**good, "columns": 10**9}),
        "streams that are not three": _frame({**good, "streams": []}),
        "identity that is a list": _frame({**good, "identity": []}),
    }
    for what, raw in hostile.items():
        reply = _exchange(path, raw)
        assert reply["event"] == "error" and reply["exit_code"] == 2, (what, reply)
        assert reply["message"].startswith("the server could not read the request"), (what, reply)
    truncated = _frame(good)[:-10]  # a client that dies half-way through its request
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(truncated)
    out = tmp_path / "out.jsonl"
    with open(out, "wb") as stdout, open(os.devnull, "rb") as stdin, open(tmp_path / "err", "wb") as stderr:
        folder = os.open(warm.cwd, os.O_RDONLY | os.O_DIRECTORY)
        try:
            reply = _exchange(path, _frame(good), [folder, stdin.fileno(), stdout.fileno(), stderr.fileno()])
        finally:
            os.close(folder)
    assert reply == {"event": "exit", "code": 0}
    assert out.read_bytes().startswith(b'{"input": "photo0.png"')
    assert warm.processes[0].poll() is None
    status = warm.status()
    assert status["requests"] == before["requests"] + 1 and status["refused"] == before["refused"]


# --- the private folder and the socket -----------------------------------------------------------


def test_the_folder_is_private_and_the_socket_is_the_users_only(servers: Servers, served_models: Path) -> None:
    assert ptm("serve", "start").returncode == 0
    for name, mode in (
        ("", 0o700),
        ("server.sock", 0o600),
        ("server.lock", 0o600),
        ("start.lock", 0o600),
        ("server.log", 0o600),
    ):
        assert stat.S_IMODE(os.lstat(servers.folder / name).st_mode) == mode, name


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_another_user_is_refused(servers: Servers, served_models: Path) -> None:
    servers.start()
    nobody = pwd.getpwnam("nobody").pw_uid
    socket_file = str(servers.folder / "server.sock")

    def as_nobody() -> str:
        """Fork; the child drops to nobody, connects and reports what the server says."""
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: only system calls, then _exit
            answer = "?"
            try:
                os.setgroups([])
                os.setgid(nobody)
                os.setuid(nobody)
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(20)
                    try:
                        sock.connect(socket_file)
                    except PermissionError:
                        answer = "NO ENTRY"
                    else:
                        # The refusal comes before the client says anything.
                        size, _ = struct.unpack("!II", sock.recv(8, socket.MSG_WAITALL))
                        answer = json.loads(sock.recv(size, socket.MSG_WAITALL)).get("message", "no message")
            except BaseException as exc:
                answer = f"child failed: {exc!r}"
            finally:
                os.write(write, answer.encode())
                os._exit(0)
        os.close(write)
        try:
            with os.fdopen(read, "rb") as pipe:
                return pipe.read().decode()
        finally:
            os.waitpid(pid, 0)

    assert as_nobody() == "NO ENTRY"  # the folder's 0700 keeps them out
    # Even with the folder and socket opened up, SO_PEERCRED tells the server who is calling.
    os.chmod(servers.runtime, 0o755)
    os.chmod(servers.folder, 0o711)
    os.chmod(socket_file, 0o666)
    assert as_nobody() == f"this ptm server serves uid 0 only, not uid {nobody}"
    assert servers.status()["refused"] == 1


@pytest.mark.parametrize("unsafe", ["group-writable", "symlink", "other-owner"])
def test_an_unsafe_folder_is_refused_and_clients_run_here(servers: Servers, served_models: Path, unsafe: str) -> None:
    if unsafe == "group-writable":
        servers.folder.mkdir(mode=0o700)
        os.chmod(servers.folder, 0o770)
    elif unsafe == "symlink":
        elsewhere = servers.runtime / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        servers.folder.symlink_to(elsewhere)
    else:
        if os.getuid() != 0:
            pytest.skip("needs root to give the folder away")
        servers.folder.mkdir(mode=0o700)
        os.chown(servers.folder, pwd.getpwnam("nobody").pw_uid, -1)
    started = ptm("serve", "start")
    assert started.returncode == 2
    assert started.stderr.decode().startswith(f"ptm: error: the server folder {servers.folder} ")
    args = [*CLASSIFY, "-f", "jsonl", "photo1.png"]
    served = run_ptm([*args, "--server", "auto"])
    assert served.code == 0 and served.stdout == run_ptm(args).stdout
    assert served.stderr.startswith(f"ptm: not using a server (the server folder {servers.folder} ")
    assert not (servers.folder / "server.sock").exists() and servers.lock_holder() is None


# --- lifetime ------------------------------------------------------------------------------------


def test_start_status_stop(servers: Servers, served_models: Path) -> None:
    started = ptm("serve", "start", "--keep-alive", "60")
    assert started.returncode == 0 and started.stderr.decode().startswith("ptm: started a server (pid ")
    again = ptm("serve", "start")
    assert again.returncode == 0 and "already running" in again.stderr.decode()
    ptm(*CLASSIFY, "photo0.png", "--server", "auto")
    status = servers.status()
    assert status["pid"] == servers.lock_holder() and status["keep_alive_s"] == 60
    assert [(m["model"], m["weights"]) for m in status["models"]] == [("tiny", "./tiny.pth")]
    table = ptm("serve", "status", "-f", "table")
    assert b"tiny (./tiny.pth, auto)" in table.stdout
    stopped = ptm("serve", "stop")
    assert stopped.returncode == 0 and stopped.stderr.decode() == f"ptm: stopped the server (pid {status['pid']})\n"
    assert not (servers.folder / "server.sock").exists()
    none = ptm("serve", "status")
    assert none.returncode == 1 and none.stderr.decode() == "ptm: no server is running; `ptm serve start` starts one\n"


def test_the_server_exits_when_idle_and_unloads_unused_models(servers: Servers, served_models: Path) -> None:
    process = servers.start("--idle-timeout", "2", "--keep-alive", "0.5")
    ptm(*CLASSIFY, "photo0.png", "--server", "auto")
    process.wait(timeout=30)  # fails the test if the server outlives its idle time by far
    assert process.returncode == 0
    assert not (servers.folder / "server.sock").exists()
    log = servers.logs()
    assert "unloaded tiny (keep-alive over)" in log and "idle for 2 s; exiting" in log


def test_a_stale_socket_of_a_killed_server_is_replaced(servers: Servers, served_models: Path) -> None:
    killed = servers.start()
    killed.kill()
    killed.wait(timeout=10)
    assert (servers.folder / "server.sock").exists()  # left behind by SIGKILL
    args = [*CLASSIFY, "-f", "jsonl", "small0.jpg"]
    served = ptm(*args, "--server", "auto")
    assert served.returncode == 0 and served.stderr == b""
    assert served.stdout == run_ptm(args).stdout_bytes
    status = servers.status()
    assert status["pid"] != killed.pid and status["requests"] == 1
    assert "replaced a stale socket" in (servers.folder / "server.log").read_text()


def test_a_lone_request_does_not_wait_for_company() -> None:
    """The batching window is for clients that arrive together; one alone goes straight to the model."""
    import threading

    import torch

    from ptm_cli.serve.warm import Batcher

    def forward(batch: torch.Tensor, top_k: int) -> list[str]:
        return [f"row {i}" for i in range(len(batch))]

    passes: list[int] = []
    alone = Batcher(forward, window=3600.0, max_batch=64, on_pass=passes.append, clients=lambda: 1)
    answer: list[object] = []
    worker = threading.Thread(target=lambda: answer.append(alone.run(torch.zeros(2, 3, 4, 4), 1)))
    worker.start()
    worker.join(timeout=60)  # an hour's window would hold it far longer
    alone.close()
    assert answer == [["row 0", "row 1"]] and passes == [2]


def test_a_batcher_whose_thread_dies_fails_its_callers_instead_of_hanging_them() -> None:
    """Found in round 3: a window too large for a wait ended the batcher's thread, and clients waited forever."""
    import threading

    import torch

    from ptm_cli.serve.warm import Batcher

    def company() -> int:
        raise OverflowError("timeout value is too large")  # what threading said of an infinite window

    batcher = Batcher(lambda batch: ["row"] * len(batch), window=1.0, max_batch=64, on_pass=len, clients=company)
    outcomes: list[BaseException | object] = []

    def call() -> None:
        try:
            outcomes.append(batcher.run(torch.zeros(1, 3, 4, 4)))
        except RuntimeError as exc:
            outcomes.append(exc)

    first = threading.Thread(target=call)
    first.start()
    first.join(timeout=60)
    call()  # a later caller is told at once
    assert not first.is_alive()
    assert len(outcomes) == 2 and all(isinstance(o, RuntimeError) for o in outcomes)
    assert "forward-pass thread stopped (OverflowError" in str(outcomes[0]) and batcher.stopped


def test_a_server_killed_mid_run_is_exit_1_and_says_which_inputs_have_no_record(
    servers: Servers, served_models: Path, tmp_path: Path
) -> None:
    """Exit 2 means nothing was processed: a client whose server died after some records exits 1."""
    import select

    server = servers.start()
    stalls = tmp_path / "stalls.fifo"  # a named pipe nobody writes: the server waits on it, records so far out
    os.mkfifo(stalls)
    listed = f"photo0.png\nphoto1.png\n{stalls}\nphoto2.png\n".encode()
    client = subprocess.Popen(
        [sys.executable, "-m", "ptm_cli", *CLASSIFY, "--batch-size", "1", "--files-from", "-", "--server", "auto"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(listed)
        client.stdin.close()
        client.stdin = None  # closed: communicate() below has nothing to send
        readable, _, _ = select.select([client.stdout], [], [], 120)  # bounded: a hang fails the test
        assert readable, "no record within 120 s"
        first = json.loads(client.stdout.readline())  # written by the server, straight to the client's stdout
        second = json.loads(client.stdout.readline())
        assert [first["input"], second["input"]] == ["photo0.png", "photo1.png"] and "predictions" in second
        time.sleep(1)  # the server tells the client the count just after each flush
        server.kill()
        server.wait(timeout=30)
        rest, stderr = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 1, stderr
    assert b"photo2.png" not in rest and b"Traceback" not in stderr
    assert b"the outputs of the first 2 inputs were written and stand; the inputs after them have none" in stderr


def test_a_model_the_server_had_to_download_is_loaded_once(
    tmp_path: Path, server: FixtureServer, net_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its first load found no file (so its key said "not there yet"); the second request must reuse it."""
    import hashlib

    from ptm_cli import tasks
    from ptm_cli.serve.warm import ModelCache, ServeOptions
    from ptm_cli.tasks.base import ModelOptions

    server.serve("/files/net.pth", net_bytes)
    catalog = tmp_path / "served.toml"
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    catalog.write_text(
        f'[[model]]\nname = "net"\nurl = "{server.url}/files/net.pth"\nlabels = "labels.txt"\n'
        f'sha256 = "{hashlib.sha256(net_bytes).hexdigest()}"\narchitecture = "mobilenet_v3_small"\nnum_classes = 3\n'
    )
    monkeypatch.setenv("PTM_CATALOG", str(catalog))
    monkeypatch.setenv("PTM_CACHE_DIR", str(tmp_path / "cache"))
    cache = ModelCache(ServeOptions(), on_pass=len)
    built: list[object] = []
    task = tasks.get("classify")

    def build(plan: object) -> object:
        model = task.build(plan, progress=False)  # type: ignore[arg-type]
        built.append(model)
        return model

    for _ in range(3):
        plan = task.plan(ModelOptions("net"))
        with cache.request():
            cache.load(plan, lambda plan=plan: build(plan))
    assert len(built) == 1 and len(cache.describe()) == 1
    assert server.requests("/files/net.pth") == 1


def test_a_videos_frames_through_the_server_give_the_same_records(warm: Servers, tmp_path: Path) -> None:
    pytest.importorskip("av")
    from clips import make_clip

    clip = str(make_clip(tmp_path / "clip.mp4", frames=6, size=(64, 48)))
    args = [*CLASSIFY, "-f", "csv", "-k", "2", clip, "--every", "2"]
    alone = run_ptm(args)
    served = ptm(*args, "--server", "auto")
    assert (served.returncode, served.stdout) == (alone.code, alone.stdout_bytes) == (0, alone.stdout_bytes)
    assert alone.stdout.splitlines()[0].startswith("input,frame,time,")
    assert [line.split(",")[1] for line in alone.stdout.splitlines()[1::2]] == ["0", "2", "4"]
    # A video written by a translation through the server is the one the process writes.
    common = ["zebra", "-w", "./generator.pth", "--size", "32", clip]
    here = run_ptm([*common, "-o", str(tmp_path / "here.mp4")])
    there = ptm(*common, "-o", str(tmp_path / "there.mp4"), "--server", "auto")
    assert here.code == there.returncode == 0, there.stderr
    assert (tmp_path / "there.mp4").read_bytes() == (tmp_path / "here.mp4").read_bytes()
