"""The weight cache: downloads against a real local HTTP server, pins, stamps, races, safe loading."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from http_server import FixtureServer, race_worker
from hypothesis import given, settings
from hypothesis import strategies as st

from ptm_cli import __version__, tensorio
from ptm_cli.cache import download, weights
from ptm_cli.cache.catalog import Catalog, Entry
from ptm_cli.errors import (
    ConfigError,
    DamagedWeights,
    DownloadError,
    HashMismatch,
    IncompatibleWeights,
    MissingDependency,
    OfflineError,
    UnsafeWeights,
    WeightsError,
)
from ptm_cli.runtime import fsutil
from ptm_cli.settings import tuning

# --- helpers and fixtures ---------------------------------------------------------


def tiny_weights(seed: int = 0, features: int = 4) -> bytes:
    """The bytes of a torch.save'd nn.Linear state dict."""
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(features, features).state_dict(), buffer)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_entry(url: str | None, sha256: str | None = None, file_name: str = "x.pth") -> Entry:
    return Entry(
        model="tiny",
        weights="V1",
        task="classify",
        architecture="resnet18",
        url=url,
        sha256=sha256,
        file_name=file_name,
    )


def part_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part")) if directory.exists() else []


def weight_files(directory: Path) -> list[str]:
    """Files in the cache other than ptm's bookkeeping (locks, pins)."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith((".lock", ".part", weights.PINS_FILE)))


def pins_file(directory: Path) -> dict[str, Any]:
    return json.loads((directory / weights.PINS_FILE).read_text())


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "backoff_base", 0.01)


# --- where the cache is ------------------------------------------------------------


@pytest.mark.parametrize("setting", ["torch_home", "xdg", "home"])
def test_cache_dir_agrees_with_torch_hub(setting: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # TORCH_HOME wins over it
    if setting == "torch_home":
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
        base = tmp_path / "th"
    elif setting == "xdg":
        monkeypatch.delenv("TORCH_HOME")
        base = tmp_path / "xdg" / "torch"
    else:
        monkeypatch.delenv("TORCH_HOME")
        monkeypatch.delenv("XDG_CACHE_HOME")
        base = Path(os.environ["HOME"]) / ".cache" / "torch"
    expected = Path(torch.hub.get_dir()) / "checkpoints"
    assert weights.cache_dir() == expected == base / "hub" / "checkpoints"


def test_cache_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTM_CACHE_DIR", str(tmp_path / "mine"))
    assert weights.cache_dir() == tmp_path / "mine"
    assert weights.cached_path(make_entry(None)) == tmp_path / "mine" / "x.pth"


def test_importing_weights_module_loads_neither_torch_nor_rich() -> None:
    code = "import sys, ptm_cli.cache.weights; print(sorted({'torch', 'rich'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- downloads ---------------------------------------------------------------------


def test_download_with_full_hash_then_cached_load_skips_network_and_hashing(
    server: FixtureServer, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_weights()
    entry = make_entry(server.serve("/x.pth", data), sha(data))
    path = weights.fetch(entry, progress=False)
    assert path == cache / "x.pth"
    assert path.read_bytes() == data
    assert path.stat().st_mode & 0o777 == fsutil.new_file_mode()  # as open() would make it: the umask decides
    assert server.requests("/x.pth") == 1
    assert server.headers[0]["User-Agent"] == f"ptm/{__version__}"
    assert pins_file(cache)["stamps"]["x.pth"]["sha256"] == sha(data)

    def no_hashing(path: Path) -> Any:
        raise AssertionError("a stamped file must not be re-hashed")

    monkeypatch.setattr(weights, "_hash_file", no_hashing)
    assert weights.fetch(entry, progress=False) == path
    assert server.requests("/x.pth") == 1
    assert part_files(cache) == []


def test_download_with_prefix_pins_the_full_digest(server: FixtureServer, cache: Path) -> None:
    data = tiny_weights()
    entry = make_entry(server.serve("/x.pth", data), sha(data)[:8])
    assert weights.expected_digest(entry) == (None, sha(data)[:8])
    weights.fetch(entry, progress=False)
    assert weights.expected_digest(entry) == (sha(data), sha(data)[:8])
    assert pins_file(cache)["pins"][entry.url]["sha256"] == sha(data)
    assert weights.verify(entry).status == "ok"


def test_prefix_mismatch_is_refused(server: FixtureServer, cache: Path) -> None:
    data = tiny_weights()
    entry = make_entry(server.serve("/x.pth", data), "deadbeef")
    with pytest.raises(HashMismatch, match=r"sent x\.pth with sha256 \w+ but the catalog expects deadbeef"):
        weights.fetch(entry, progress=False)
    assert weight_files(cache) == [] and part_files(cache) == []
    assert server.requests("/x.pth") == 1  # a mismatch is not retried


def test_unhashed_entry_is_pinned_and_a_changed_upstream_file_refused(server: FixtureServer, cache: Path) -> None:
    first, second = tiny_weights(0), tiny_weights(1)
    entry = make_entry(server.serve("/x.pth", first))
    assert weights.verify(entry).status == "missing"
    weights.fetch(entry, progress=False)
    assert weights.expected_digest(entry) == (sha(first), "")

    assert weights.remove(entry)
    server.serve("/x.pth", second)
    with pytest.raises(HashMismatch, match=f"pinned at its first download was {sha(first)[:12]}"):
        weights.fetch(entry, progress=False)
    assert weight_files(cache) == [] and part_files(cache) == []


@pytest.mark.parametrize(
    ("mode", "error", "requests"),
    [("short", DownloadError, 3), ("reset", DownloadError, 3), ("wrong", HashMismatch, 1)],
)
def test_broken_transfers_leave_nothing_behind(
    mode: str, error: type[Exception], requests: int, server: FixtureServer, cache: Path
) -> None:
    data = tiny_weights(features=64)  # several TCP segments, so "half the body" is real
    entry = make_entry(server.serve("/x.pth", data, mode), sha(data))
    with pytest.raises(error) as caught:
        weights.fetch(entry, progress=False)
    assert weight_files(cache) == []
    assert part_files(cache) == []
    assert server.requests("/x.pth") == requests
    if error is DownloadError:
        reason = {"short": "the connection closed after", "reset": "reset by the server"}[mode]
        assert reason in str(caught.value) and "ptm weights import tiny:V1 FILE" in str(caught.value)


def test_short_body_reason_names_byte_counts(server: FixtureServer, cache: Path) -> None:
    data = tiny_weights()
    entry = make_entry(server.serve("/x.pth", data, "short"), sha(data))
    with pytest.raises(DownloadError, match=f"closed after {len(data) // 2:,} of {len(data):,} bytes"):
        weights.fetch(entry, progress=False)


def test_stalled_server_times_out_then_retry_succeeds(
    server: FixtureServer, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTM_DOWNLOAD_TIMEOUT", "0.2")
    data = tiny_weights()
    entry = make_entry(server.serve("/x.pth", data, "stall", times=1, stall=2.0), sha(data))
    started = time.monotonic()
    assert weights.fetch(entry, progress=False).read_bytes() == data
    assert time.monotonic() - started < 1.5
    assert server.requests("/x.pth") == 2


def test_server_errors_are_retried_then_succeed(server: FixtureServer, cache: Path) -> None:
    data = tiny_weights()
    entry = make_entry(server.serve("/x.pth", data, "error", times=2), sha(data))
    assert weights.fetch(entry, progress=False).read_bytes() == data
    assert server.requests("/x.pth") == 3


def test_persistent_server_error_gives_an_actionable_message(
    server: FixtureServer, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PTM_DOWNLOAD_RETRIES", "2")
    url = server.serve("/x.pth", b"", "error")
    with pytest.raises(DownloadError) as caught:
        weights.fetch(make_entry(url, "ab" * 32), progress=True)
    message = str(caught.value)
    assert message.startswith(f"cannot download x.pth from {url}: HTTP 500")
    assert "`ptm weights import tiny:V1 FILE`" in message and "PTM_WEIGHTS_MIRROR" in message
    assert server.requests("/x.pth") == 2
    assert "retrying in 0.01 s (2/2)" in capsys.readouterr().err


def test_not_found_is_not_retried(server: FixtureServer, cache: Path) -> None:
    url = server.serve("/x.pth", b"", "missing")
    with pytest.raises(DownloadError, match="HTTP 404"):
        weights.fetch(make_entry(url, "ab" * 32), progress=False)
    assert server.requests("/x.pth") == 1
    assert weight_files(cache) == []


def test_connection_refused_is_a_download_error(cache: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match=f"127.0.0.1:{port}/x.pth"):
        download.download(f"http://127.0.0.1:{port}/x.pth", cache / "x.pth", progress=False, attempts=2)
    assert part_files(cache) == []


def test_unknown_host_fails_fast(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def no_such_host(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with pytest.raises(DownloadError, match="cannot resolve the host name"):
        weights.fetch(make_entry("https://weights.example/x.pth", "ab" * 32), progress=False)
    assert calls == ["weights.example"]  # not retried: an offline machine gets its answer at once


@pytest.mark.parametrize(("name", "value"), [("PTM_DOWNLOAD_TIMEOUT", "soon"), ("PTM_DOWNLOAD_RETRIES", "0")])
def test_bad_download_settings_are_config_errors(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        weights.fetch(make_entry("http://127.0.0.1:9/x.pth"), progress=False)


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_offline_makes_no_request(
    value: str, server: FixtureServer, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTM_OFFLINE", value)
    entry = make_entry(server.serve("/x.pth", tiny_weights()))
    with pytest.raises(OfflineError) as caught:
        weights.fetch(entry, progress=False)
    message = str(caught.value)
    assert "x.pth" in message and str(cache / "x.pth") in message
    assert "`ptm weights import tiny:V1 FILE`" in message and "unset PTM_OFFLINE" in message
    assert server.requests() == 0


def test_offline_with_a_nonsense_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTM_OFFLINE", "maybe")
    with pytest.raises(ConfigError, match="PTM_OFFLINE"):
        weights.fetch(make_entry("http://127.0.0.1:9/x.pth"), progress=False)


def test_offline_still_serves_cached_files(server: FixtureServer, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny_weights()
    entry = make_entry(server.serve("/x.pth", data), sha(data))
    weights.fetch(entry, progress=False)
    monkeypatch.setenv("PTM_OFFLINE", "1")
    assert weights.fetch(entry, progress=False).read_bytes() == data


def test_mirror_replaces_the_catalog_url(server: FixtureServer, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny_weights()
    server.serve("/mirror/x.pth", data)
    monkeypatch.setenv("PTM_WEIGHTS_MIRROR", server.url + "/mirror/")
    entry = make_entry(server.url + "/upstream/x.pth", sha(data))
    assert weights.fetch(entry, progress=False).read_bytes() == data
    assert server.requests("/mirror/x.pth") == 1
    assert server.requests("/upstream/x.pth") == 0


def test_a_folder_mirror_works_even_offline(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny_weights()
    (tmp_path / "share").mkdir()
    (tmp_path / "share" / "x.pth").write_bytes(data)
    monkeypatch.setenv("PTM_OFFLINE", "1")
    monkeypatch.setenv("PTM_WEIGHTS_MIRROR", (tmp_path / "share").as_uri())
    entry = make_entry("https://download.example/x.pth", sha(data)[:8])
    assert weights.fetch(entry, progress=False).read_bytes() == data
    with pytest.raises(DownloadError, match=r"y\.pth: there is no such file"):
        weights.fetch(make_entry("https://download.example/y.pth", file_name="y.pth"), progress=False)


def test_mirror_with_the_wrong_file_is_refused(
    server: FixtureServer, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.serve("/mirror/x.pth", tiny_weights(1))
    monkeypatch.setenv("PTM_WEIGHTS_MIRROR", server.url + "/mirror")
    with pytest.raises(HashMismatch, match="PTM_WEIGHTS_MIRROR"):
        weights.fetch(make_entry("https://example.invalid/x.pth", sha(tiny_weights(0))), progress=False)
    assert weight_files(cache) == []
    server.serve("/mirror/x.pth", b"", "missing")
    with pytest.raises(DownloadError, match="check that PTM_WEIGHTS_MIRROR points to a server that has it"):
        weights.fetch(make_entry("https://example.invalid/x.pth"), progress=False)


def test_entry_without_url_asks_for_an_import(cache: Path) -> None:
    with pytest.raises(WeightsError, match="no download url; run `ptm weights import tiny:V1 FILE`"):
        weights.fetch(make_entry(None), progress=False)


def test_progress_goes_to_stderr_only(
    server: FixtureServer, cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_weights()
    url = server.serve("/x.pth", data)
    weights.fetch(make_entry(url, sha(data)), progress=True)
    out, err = capsys.readouterr()
    size = f"{len(data) / 1024:.1f} kB"
    assert out == ""
    assert err == f"downloading x.pth ({size}) from {url}\n"

    # On a terminal the rich bar replaces the line, still on stderr.
    monkeypatch.setattr(download, "stderr_is_tty", lambda: True)
    weights.remove(make_entry(url, sha(data)))
    weights.fetch(make_entry(url, sha(data)), progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "x.pth" in err and "downloading" not in err

    weights.remove(make_entry(url, sha(data)))
    weights.fetch(make_entry(url, sha(data)), progress=False)
    assert capsys.readouterr() == ("", "")


def test_interrupt_mid_download_removes_the_temporary_file(
    server: FixtureServer, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_weights(features=64)
    entry = make_entry(server.serve("/x.pth", data), sha(data))
    monkeypatch.setattr(tuning, "chunk_size", 1024)
    written = []
    original = download._write

    def write_then_interrupt(request: Any, staged: Any, chunk: bytes) -> None:
        original(request, staged, chunk)
        written.append(staged.path)
        if len(written) == 3:
            assert staged.path.exists()
            raise KeyboardInterrupt

    monkeypatch.setattr(download, "_write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        weights.fetch(entry, progress=False)
    assert not written[0].exists()
    assert part_files(cache) == [] and weight_files(cache) == []


def test_unwritable_cache_dir_names_the_folder(
    server: FixtureServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, which ignores chmod; a folder inside a regular file can never be created.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("PTM_CACHE_DIR", str(blocker / "cache"))
    data = tiny_weights()
    with pytest.raises(WeightsError) as caught:
        weights.fetch(make_entry(server.serve("/x.pth", data), sha(data)), progress=False)
    assert str(blocker / "cache") in str(caught.value) and "PTM_CACHE_DIR" in str(caught.value)
    assert server.requests() == 0


def test_waiting_for_the_lock_announces_itself_and_rechecks(
    server: FixtureServer, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import fcntl

    monkeypatch.setattr(tuning, "lock_wait_notice", 0.05)
    data = tiny_weights()
    entry = make_entry(server.serve("/x.pth", data), sha(data))
    cache.mkdir()
    held = os.open(cache / "x.pth.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)  # "another process" is downloading
    result: dict[str, Path] = {}
    waiter = threading.Thread(target=lambda: result.update(path=weights.fetch(entry, progress=False)))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()
    (cache / "x.pth").write_bytes(data)  # ... and finishes
    os.close(held)
    waiter.join(10)
    assert result["path"] == cache / "x.pth"
    assert server.requests() == 0
    assert "waiting for another ptm process to finish with x.pth" in capsys.readouterr().err


@pytest.mark.parametrize("locking", [True, False], ids=["locked", "no-op-lock"])
def test_parallel_processes_end_with_one_valid_file(locking: bool, server: FixtureServer, cache: Path) -> None:
    data = tiny_weights(features=256)  # 256 KiB, served slowly so that unlocked downloads overlap
    url = server.serve("/x.pth", data, chunk_delay=0.05)
    # Without a lock, also let every process pin the unhashed entry at once.
    digest = sha(data) if locking else None
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(8)
    workers = [context.Process(target=race_worker, args=(str(cache), url, digest, locking, barrier)) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0] * 8
    assert weight_files(cache) == ["x.pth"]
    assert sha((cache / "x.pth").read_bytes()) == sha(data)
    assert part_files(cache) == []
    if locking:
        assert server.requests("/x.pth") == 1
    else:
        assert server.requests("/x.pth") >= 2  # the race really happened
        assert pins_file(cache)["pins"][url]["sha256"] == sha(data)
    assert weights.verify(make_entry(url, digest)).status == "ok"


# --- the cache: stamps, verify, import, list, remove, prune ----------------------------


def downloaded(server: FixtureServer, sha256: str | None = "full") -> tuple[Entry, Path, bytes]:
    data = tiny_weights()
    digest = sha(data) if sha256 == "full" else sha256
    entry = make_entry(server.serve("/x.pth", data), digest)
    return entry, weights.fetch(entry, progress=False), data


def flip_a_byte(path: Path, *, keep_mtime: bool) -> None:
    before = path.stat()
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    mtime = before.st_mtime_ns if keep_mtime else before.st_mtime_ns + 10**9
    os.utime(path, ns=(before.st_atime_ns, mtime))


def test_corrupted_cached_file_is_refused_not_deleted(server: FixtureServer, cache: Path) -> None:
    entry, path, data = downloaded(server)
    flip_a_byte(path, keep_mtime=False)
    with pytest.raises(HashMismatch) as caught:
        weights.fetch(entry, progress=False)
    message = str(caught.value)
    assert str(path) in message and sha(data)[:12] in message and "`ptm weights rm tiny:V1`" in message
    assert path.exists()
    result = weights.verify(entry)
    assert (result.status, result.digest, result.expected) == ("mismatch", sha(path.read_bytes()), sha(data))
    assert server.requests() == 1


def test_stamp_is_trusted_until_verify_rehashes(server: FixtureServer, cache: Path) -> None:
    entry, path, _ = downloaded(server)
    flip_a_byte(path, keep_mtime=True)  # same size, mtime and inode: the stamp cannot tell
    assert weights.fetch(entry, progress=False) == path
    assert weights.verify(entry).status == "mismatch"  # verify re-hashes and drops the stamp
    with pytest.raises(HashMismatch):
        weights.fetch(entry, progress=False)


def test_verify_reports_unpinned_for_files_with_no_known_hash(cache: Path) -> None:
    entry = make_entry(None)
    cache.mkdir()
    (cache / "x.pth").write_bytes(tiny_weights())
    result = weights.verify(entry)
    assert (result.status, result.digest, result.expected) == ("unpinned", sha(tiny_weights()), None)
    # Loading it pins it (trust on first use); from then on verify has something to compare with.
    weights.fetch(entry, progress=False)
    assert weights.verify(entry).status == "ok"


def test_import_checks_the_hash_before_copying(tmp_path: Path, cache: Path) -> None:
    good, bad = tmp_path / "good.pth", tmp_path / "bad.pth"
    good.write_bytes(tiny_weights(0))
    bad.write_bytes(tiny_weights(1))
    entry = make_entry("https://example.invalid/x.pth", sha(tiny_weights(0))[:10])

    with pytest.raises(HashMismatch, match="nothing was copied"):
        weights.import_weights(entry, bad)
    assert weight_files(cache) == [] and part_files(cache) == []

    path = weights.import_weights(entry, good)
    assert path == cache / "x.pth" and path.read_bytes() == good.read_bytes()
    assert weights.expected_digest(entry)[0] == sha(good.read_bytes())  # pinned
    assert part_files(cache) == []
    [listed] = weights.list_cached([entry])
    assert listed.verified and listed.entries == ("tiny:V1",)
    assert weights.import_weights(entry, path) == path  # importing the cached file itself is harmless

    with pytest.raises(WeightsError, match="no such file"):
        weights.import_weights(entry, tmp_path / "absent.pth")


def test_list_cached_shows_files_owners_and_verified_state(server: FixtureServer, cache: Path) -> None:
    entry, path, data = downloaded(server)
    (cache / "other.pth").write_bytes(b"dropped here by torchvision")
    (cache / ".x.pth.k2j3h4.part").write_bytes(b"half")
    listed = {f.name: f for f in weights.list_cached(Catalog([entry]).entries())}
    assert sorted(listed) == ["other.pth", "x.pth"]
    assert (listed["x.pth"].verified, listed["x.pth"].entries, listed["x.pth"].size) == (True, ("tiny:V1",), len(data))
    assert listed["x.pth"].sha256 == sha(data)
    assert (listed["other.pth"].verified, listed["other.pth"].entries) == (False, ())

    flip_a_byte(path, keep_mtime=False)
    assert not {f.name: f for f in weights.list_cached([entry])}["x.pth"].verified


def test_remove_keeps_the_pin_unless_asked(server: FixtureServer, cache: Path) -> None:
    entry, path, data = downloaded(server, sha256=None)
    assert weights.remove(entry) is True
    assert not path.exists()
    assert "x.pth" not in pins_file(cache)["stamps"]
    assert weights.expected_digest(entry)[0] == sha(data)
    assert weights.remove(entry) is False
    weights.remove(entry, forget_pin=True)
    assert weights.expected_digest(entry) == (None, "")


def test_orphans_are_old_unlocked_part_files(cache: Path) -> None:
    import fcntl

    cache.mkdir()
    old = time.time() - 2 * weights.ORPHAN_AGE
    stale, fresh, busy = cache / ".a.pth.x1y2z3.part", cache / ".b.pth.q1w2e3.part", cache / ".c.pth.r4t5y6.part"
    for path in (stale, fresh, busy, cache / "a.pth"):
        path.write_bytes(b"partial")
    for path in (stale, busy, cache / "a.pth"):
        os.utime(path, (old, old))
    held = os.open(cache / "c.pth.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)  # c.pth is still being downloaded
    try:
        assert weights.orphans() == [stale]
        assert weights.prune() == [stale]
    finally:
        os.close(held)
    assert sorted(p.name for p in cache.iterdir()) == [
        ".b.pth.q1w2e3.part",
        ".c.pth.r4t5y6.part",
        "a.pth",
        "c.pth.lock",
    ]
    # Once its lock is released, the idle lock file is left over too.
    assert weights.orphans(max_age=0) == [
        cache / ".b.pth.q1w2e3.part",
        cache / ".c.pth.r4t5y6.part",
        cache / "c.pth.lock",
    ]


def test_damaged_pins_file_is_rebuilt(server: FixtureServer, cache: Path) -> None:
    cache.mkdir()
    (cache / weights.PINS_FILE).write_text("{not json")
    _, _, data = downloaded(server)
    assert pins_file(cache)["stamps"]["x.pth"]["sha256"] == sha(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(["pins", "stamps", "format"]), json_values) | json_values)
def test_any_pins_file_content_reads_as_a_valid_store(doc: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, weights.PINS_FILE).write_text(json.dumps(doc))
        store = weights._load_store(Path(folder))
    assert isinstance(store["pins"], dict) and isinstance(store["stamps"], dict)
    assert all(len(p["sha256"]) == 64 for p in store["pins"].values())


def test_pins_file_entries_that_are_not_digests_are_dropped(tmp_path: Path) -> None:
    good = {"sha256": "a" * 64}
    doc = {"pins": {"u1": good, "u2": {"sha256": "z" * 64}}, "stamps": {"x": {"size": True, "sha256": "a" * 64}}}
    (tmp_path / weights.PINS_FILE).write_text(json.dumps(doc))
    assert weights._load_store(tmp_path)["pins"] == {"u1": good}
    assert weights._load_store(tmp_path)["stamps"] == {}


# --- safe loading --------------------------------------------------------------------------


def _write_marker(path: str) -> None:
    Path(path).write_text("code ran")


class CodeExecutionPayload:
    """Unpickling this calls _write_marker: what a malicious weights file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_write_marker, (str(self.marker),))


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2).state_dict()


def assert_same(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value)


def test_load_zip_and_legacy_files_always_weights_only(
    state: dict[str, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new, legacy = tmp_path / "new.pth", tmp_path / "legacy.pth"
    torch.save(state, new)
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    calls: list[dict[str, Any]] = []
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert_same(tensorio.load_state_dict(new), state)
    assert_same(tensorio.load_state_dict(legacy), state)
    assert [(c["weights_only"], c["mmap"]) for c in calls] == [(True, True), (True, False)]
    assert all(c["map_location"] == "cpu" for c in calls)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_load_refuses_a_code_execution_payload(legacy: bool, tmp_path: Path) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "evil.pth"
    torch.save({"weight": CodeExecutionPayload(marker)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeWeights, match="will not execute code") as caught:
        tensorio.load_state_dict(path)
    assert "_write_marker" in str(caught.value) and "model.state_dict()" in str(caught.value)
    assert not marker.exists()


def test_load_refuses_a_pickled_module(tmp_path: Path) -> None:
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(UnsafeWeights, match=r"torch\.nn\.modules\.linear\.Linear"):
        tensorio.load_state_dict(path)


@pytest.mark.parametrize("kind", ["truncated zip", "truncated legacy", "empty", "junk"])
def test_load_reports_damaged_files(kind: str, state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=kind != "truncated legacy")
    whole = buffer.getvalue()
    content = {"empty": b"", "junk": b"<html>not found</html>"}.get(kind, whole[: len(whole) // 2])
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    # A file of the user's own: advice to save it again.
    with pytest.raises(DamagedWeights, match=r"is damaged \(.+\); copy or save the file again from its source"):
        tensorio.load_state_dict(path)
    # The same bytes as a cached catalog file: advice to remove and download it again.
    cache = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "x.pth").write_bytes(content)
    with pytest.raises(
        DamagedWeights, match=r"is damaged \(.+\); delete it with `ptm weights rm tiny:V1` and download it again"
    ):
        weights.load_weights(make_entry(None, sha(content)), progress=False)


def test_load_refuses_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; this is just how such files are made
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(WeightsError, match="TorchScript"):
        tensorio.load_state_dict(path)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state_dict"])
def test_load_unwraps_training_checkpoints(wrapper: str, state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 7, wrapper: state, "optimizer": {"lr": 0.1}}, path)
    assert_same(tensorio.load_state_dict(path), state)


def test_load_strips_the_dataparallel_prefix(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    path = tmp_path / "dp.pth"
    torch.save(torch.nn.DataParallel(model).state_dict(), path)
    loaded = tensorio.load_state_dict(path)
    assert list(loaded) == list(model.state_dict())
    assert "1" in loaded._metadata  # type: ignore[attr-defined]
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    fresh.load_state_dict(loaded)
    assert torch.equal(fresh[0].weight, model[0].weight)


def test_load_keeps_a_partial_module_prefix(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pth"
    torch.save({"module.a": torch.ones(1), "b": torch.zeros(1)}, path)
    assert list(tensorio.load_state_dict(path)) == ["module.a", "b"]


@pytest.mark.parametrize("content", [[torch.ones(1)], {}, {"epoch": 3}], ids=["list", "empty", "no-tensors"])
def test_load_rejects_what_is_not_a_state_dict(content: Any, tmp_path: Path) -> None:
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    with pytest.raises(IncompatibleWeights, match="rather than a state dict"):
        tensorio.load_state_dict(path)


def test_load_safetensors(state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file(state, str(path))
    assert_same(dict(sorted(tensorio.load_state_dict(path).items())), dict(sorted(state.items())))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(WeightsError, match="is damaged"):
        tensorio.load_state_dict(path)


def test_safetensors_without_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(MissingDependency, match=r"pip install 'ptm\[safetensors\]'"):
        tensorio.load_state_dict(tmp_path / "x.safetensors")


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        tensorio.load_state_dict(tmp_path / "absent.pth")
