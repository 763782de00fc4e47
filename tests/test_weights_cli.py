"""`ptm weights ...` and downloads seen from the command line: stdout is data, stderr is people.

A first download or an import with no full hash to check must load and fit its catalog entry
before the cache keeps and pins it; the cache's own files (pins, locks, partial files) are never
a catalog entry's file. The faults of a transfer are in test_download_faults.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from helpers import DATA, assert_refused, run_ptm, save_weights
from http_server import FixtureServer


@pytest.fixture
def served_catalog(tmp_path: Path, server: FixtureServer, net_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user catalog whose two models download from the test server: one hashed, one to be pinned."""
    server.serve("/files/net-v1.pth", net_bytes)
    server.serve("/files/unpinned.pth", net_bytes)
    digest = hashlib.sha256(net_bytes).hexdigest()
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    catalog = tmp_path / "served.toml"
    common = 'architecture = "mobilenet_v3_small"\nnum_classes = 3\nlabels = "labels.txt"\nresize = 48\ncrop = 40\n'
    catalog.write_text(
        f'[[model]]\nname = "net"\nurl = "{server.url}/files/net-v1.pth"\nsha256 = "{digest}"\n{common}\n'
        f'[[model]]\nname = "loose"\nurl = "{server.url}/files/unpinned.pth"\n{common}'
    )
    monkeypatch.setenv("PTM_CATALOG", str(catalog))
    monkeypatch.setenv("PTM_CACHE_DIR", str(tmp_path / "cache"))
    return catalog


def test_classify_downloads_once_and_keeps_stdout_clean(served_catalog: Path, server: FixtureServer) -> None:
    first = run_ptm(["classify", "-m", "net", str(DATA / "coffee.png")])
    assert first.code == 0, first.stderr
    (record,) = first.records()  # nothing but records on stdout
    assert record["weights"] == "DEFAULT"
    assert record["predictions"][0]["label"] in ("red", "green", "blue")
    assert "net-v1.pth" in first.stderr  # the download note went to stderr
    second = run_ptm(["classify", "-m", "net", str(DATA / "coffee.png")])
    assert second.records() == first.records()
    assert server.requests("/files/net-v1.pth") == 1


def test_download_list_verify_path_rm(served_catalog: Path, net_bytes: bytes) -> None:
    cache = served_catalog.parent / "cache"
    missing = run_ptm(["weights", "path", "net"])
    assert missing.code == 1
    assert missing.stdout.strip() == str(cache / "net-v1.pth")
    assert "ptm weights download net:DEFAULT" in missing.stderr

    downloaded = run_ptm(["weights", "download", "net"])
    assert downloaded.code == 0
    assert downloaded.stdout.strip() == str(cache / "net-v1.pth")
    assert (cache / "net-v1.pth").read_bytes() == net_bytes

    listed = run_ptm(["weights", "list", "-f", "jsonl"]).records()
    assert listed == [
        {
            "file": "net-v1.pth",
            "size_mib": round(len(net_bytes) / 2**20, 3),
            "verified": True,
            "entries": "net:DEFAULT",
        }
    ]

    verified = run_ptm(["weights", "verify", "-f", "jsonl"])
    assert verified.code == 0
    assert [(r["entry"], r["status"]) for r in verified.records()] == [("net:DEFAULT", "ok")]
    assert verified.records()[0]["sha256"] == hashlib.sha256(net_bytes).hexdigest()

    removed = run_ptm(["weights", "rm", "net"])
    assert removed.code == 0 and "removed net-v1.pth" in removed.stderr
    assert not (cache / "net-v1.pth").exists()


def test_verify_names_a_corrupted_file_and_exits_1(served_catalog: Path) -> None:
    cache = served_catalog.parent / "cache"
    assert run_ptm(["weights", "download", "net"]).code == 0
    data = bytearray((cache / "net-v1.pth").read_bytes())
    data[len(data) // 2] ^= 0x01
    (cache / "net-v1.pth").write_bytes(bytes(data))
    result = run_ptm(["weights", "verify", "net", "-f", "jsonl"])
    assert result.code == 1
    assert result.records()[0]["status"] == "mismatch"
    assert "ptm weights rm" in result.stderr
    classify = run_ptm(["classify", "-m", "net", str(DATA / "coffee.png")])
    assert classify.code == 2
    assert "net-v1.pth" in classify.stderr and "Traceback" not in classify.stderr


def test_import_for_offline_machines(
    served_catalog: Path, net_bytes: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: FixtureServer
) -> None:
    monkeypatch.setenv("PTM_OFFLINE", "1")
    offline = run_ptm(["classify", "-m", "net", str(DATA / "coffee.png")])
    assert offline.code == 2 and "ptm weights import net:DEFAULT" in offline.stderr

    wrong = tmp_path / "wrong.pth"
    flipped = bytearray(net_bytes)
    flipped[100] ^= 0xFF
    wrong.write_bytes(bytes(flipped))
    refused = run_ptm(["weights", "import", "net", str(wrong)])
    assert refused.code == 2
    assert not (served_catalog.parent / "cache" / "net-v1.pth").exists()

    good = tmp_path / "copy.pth"
    good.write_bytes(net_bytes)
    imported = run_ptm(["weights", "import", "net", str(good)])
    assert imported.code == 0, imported.stderr
    assert imported.stdout.strip() == str(served_catalog.parent / "cache" / "net-v1.pth")
    assert run_ptm(["classify", "-m", "net", str(DATA / "coffee.png")]).code == 0
    assert server.requests() == 0  # offline really meant offline


def test_unhashed_entries_are_pinned_on_first_download(
    served_catalog: Path, server: FixtureServer, net_bytes: bytes
) -> None:
    assert run_ptm(["weights", "download", "loose"]).code == 0
    assert run_ptm(["weights", "rm", "loose"]).code == 0
    retrained = save_weights(served_catalog.parent / "v2.pth", "mobilenet_v3_small", seed=5, num_classes=3)
    server.serve("/files/unpinned.pth", retrained.read_bytes())  # upstream changed
    changed = run_ptm(["weights", "download", "loose"])
    assert changed.code == 2
    assert "sha256" in changed.stderr and "ptm weights rm loose:DEFAULT --forget-pin" in changed.stderr
    assert not (served_catalog.parent / "cache" / "unpinned.pth").exists()
    # The user can accept the new file knowingly.
    assert run_ptm(["weights", "rm", "loose", "--forget-pin"]).code == 0
    assert run_ptm(["weights", "download", "loose"]).code == 0


def test_mirror_serves_the_same_file_names(
    served_catalog: Path, server: FixtureServer, net_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.serve("/mirror/net-v1.pth", net_bytes)
    monkeypatch.setenv("PTM_WEIGHTS_MIRROR", f"{server.url}/mirror")
    assert run_ptm(["weights", "download", "net"]).code == 0
    assert server.requests("/mirror/net-v1.pth") == 1
    assert server.requests("/files/net-v1.pth") == 0


def test_truncated_download_leaves_nothing_behind(
    served_catalog: Path, server: FixtureServer, net_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTM_DOWNLOAD_RETRIES", "1")
    server.serve("/files/net-v1.pth", net_bytes, mode="short")
    result = run_ptm(["weights", "download", "net"])
    assert result.code == 2
    assert "cannot download net-v1.pth" in result.stderr
    cache = served_catalog.parent / "cache"
    assert [p.name for p in cache.iterdir() if p.name.endswith((".pth", ".part"))] == []


def test_prune_removes_orphaned_partial_files(served_catalog: Path) -> None:
    import os
    import time

    cache = served_catalog.parent / "cache"
    cache.mkdir()
    orphan = cache / ".net-v1.pth.abc123.part"
    orphan.write_bytes(b"half a file")
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    result = run_ptm(["weights", "prune"])
    assert result.code == 0
    assert "removed" in result.stderr
    assert not orphan.exists()


def test_models_lists_user_entries_and_cache_state(served_catalog: Path) -> None:
    rows = run_ptm(["models", "-f", "jsonl"]).records()
    by_ref = {(r["model"], r["weights"]): r for r in rows}
    assert by_ref[("net", "DEFAULT")]["cached"] is False
    assert by_ref[("resnet101", "IMAGENET1K_V2")]["default"] is True
    assert by_ref[("resnet101", "IMAGENET1K_V2")]["params"] == 44_549_160
    run_ptm(["weights", "download", "net"])
    rows = run_ptm(["models", "-f", "json"]).stdout
    assert {(r["model"], r["cached"]) for r in json.loads(rows)} >= {("net", True)}


# --- what a download must be before the cache keeps it --------------------------------------------


def catalog_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, extra: str = "") -> None:
    """A user catalog with one unhashed mobilenet_v3_small entry named "loose" (as the shipped CycleGANs are)."""
    catalog = tmp_path / "served.toml"
    catalog.write_text(
        f'[[model]]\nname = "loose"\nurl = "{url}"\narchitecture = "mobilenet_v3_small"\nnum_classes = 3\n'
        f'labels = "labels.txt"\n{extra}'
    )
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    monkeypatch.setenv("PTM_CATALOG", str(catalog))


@pytest.mark.parametrize(
    "name", ["ptm-pins.json", "PTM-PINS.JSON", "x.pth.lock", "ptm-pins.json.lock", "a.part", ".hidden.pth"]
)
def test_catalog_file_names_never_reach_the_caches_own_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object, net_bytes: bytes, name: str
) -> None:
    # A real pin for another entry, which `weights rm` must never lose.
    good_url = server.serve("/good.pth", net_bytes)  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, good_url)
    assert run_ptm(["weights", "download", "loose"]).code == 0
    pins = (cache / "ptm-pins.json").read_bytes()
    lock = cache / "x.pth.lock"
    lock.write_bytes(b"")
    catalog = tmp_path / "evil.toml"
    catalog.write_text(f'[[model]]\nname = "evil"\narchitecture = "resnet18"\nurl = "{server.url}/dir/{name}"\n')  # type: ignore[attr-defined]
    monkeypatch.setenv("PTM_CATALOG", f"{tmp_path / 'served.toml'}:{catalog}")
    for args in (
        ["weights", "rm", "evil", "--forget-pin"],
        ["weights", "download", "evil"],
        ["weights", "path", "evil"],
    ):
        assert_refused(run_ptm(args), repr(name), "file_name")
    assert (cache / "ptm-pins.json").read_bytes() == pins
    assert lock.exists()
    assert server.requests(f"/dir/{name}") == 0  # type: ignore[attr-defined]
    listed = run_ptm(["models", "-f", "jsonl"]).records()
    assert [r["cached"] for r in listed if r["model"] == "evil"] == [False]


def html_page() -> bytes:
    return b"<!doctype html><html><body>Sign in to continue</body></html>\n" * 40


@pytest.mark.parametrize("bad", ["html", "cut", "other_architecture", "empty"])
def test_a_bad_first_download_is_neither_saved_nor_pinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object, net_bytes: bytes, bad: str
) -> None:
    from helpers import save_weights

    if bad == "html":
        body = html_page()
    elif bad == "cut":
        body = net_bytes[: len(net_bytes) // 2]  # and a Content-Length that says so: nothing looks short
    elif bad == "other_architecture":
        body = save_weights(tmp_path / "r.pth", "resnet18", num_classes=3).read_bytes()
    else:
        body = b""
    url = server.serve("/loose.pth", body)  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, url)
    result = run_ptm(["weights", "download", "loose"])
    assert_refused(result, "not a usable weights file", "nothing was saved")
    assert not (cache / "loose.pth").exists()
    if (cache / "ptm-pins.json").exists():
        assert json.loads((cache / "ptm-pins.json").read_text())["pins"] == {}
    # The right file is accepted afterwards, and pinned then.
    server.serve("/loose.pth", net_bytes)  # type: ignore[attr-defined]
    assert run_ptm(["weights", "download", "loose"]).code == 0
    assert (cache / "loose.pth").read_bytes() == net_bytes
    assert len(json.loads((cache / "ptm-pins.json").read_text())["pins"]) == 1


def test_classify_checks_a_first_download_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object
) -> None:
    from PIL import Image

    url = server.serve("/loose.pth", html_page())  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, url)
    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    assert_refused(run_ptm(["classify", "-m", "loose", str(tmp_path / "x.png")]), "not a usable weights file")
    assert not (cache / "loose.pth").exists()


def test_an_import_without_a_full_hash_must_fit_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, net_bytes: bytes
) -> None:
    catalog_for(tmp_path, monkeypatch, "http://127.0.0.1:9/loose.pth")
    (tmp_path / "page.pth").write_bytes(html_page())
    assert_refused(run_ptm(["weights", "import", "loose", str(tmp_path / "page.pth")]), "is damaged")
    assert not (cache / "loose.pth").exists()
    (tmp_path / "good.pth").write_bytes(net_bytes)
    assert run_ptm(["weights", "import", "loose", str(tmp_path / "good.pth")]).code == 0


def test_every_pinned_hash_mismatch_says_how_to_forget_the_pin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object, net_bytes: bytes
) -> None:
    from helpers import save_weights

    url = server.serve("/loose.pth", net_bytes)  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, url)
    assert run_ptm(["weights", "download", "loose"]).code == 0
    other = save_weights(tmp_path / "v2.pth", "mobilenet_v3_small", seed=9, num_classes=3)
    advice = "ptm weights rm loose:DEFAULT --forget-pin"
    # the cached file changed
    (cache / "loose.pth").write_bytes(other.read_bytes())
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    assert_refused(run_ptm(["classify", "-m", "loose", str(tmp_path / "x.png")]), advice)
    # an import of another file
    assert_refused(run_ptm(["weights", "import", "loose", str(other)]), advice)
    # a download of another file
    (cache / "loose.pth").unlink()
    server.serve("/loose.pth", other.read_bytes())  # type: ignore[attr-defined]
    assert_refused(run_ptm(["weights", "download", "loose"]), advice)
    # and the advice works
    assert run_ptm(["weights", "rm", "loose", "--forget-pin"]).code == 0
    assert run_ptm(["weights", "download", "loose"]).code == 0


@pytest.mark.parametrize("length", ["announced", "unannounced"])
def test_a_body_far_larger_than_the_catalog_size_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object, length: str
) -> None:
    body = bytes(8 << 20)  # 8 MiB for an entry of about 0.1 MiB
    url = server.serve("/loose.pth", body, content_length=None if length == "announced" else "")  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, url, extra="size_mb = 0.1\n")
    result = run_ptm(["weights", "download", "loose"])
    assert_refused(result, "far more than")
    assert server.requests("/loose.pth") == 1  # type: ignore[attr-defined]
    assert not cache.exists() or [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_a_server_dripping_bytes_fails_within_a_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: object
) -> None:
    from ptm_cli.cache import download
    from ptm_cli.errors import DownloadError

    monkeypatch.setenv("PTM_DOWNLOAD_TIMEOUT", "0.5")  # each read waits at most this; the pace window too
    # 80 bytes, one every 0.2 s: every read returns in time, so only the average rate can stop it.
    url = server.serve("/drip.bin", bytes(80), chunk=1, chunk_delay=0.2)  # type: ignore[attr-defined]
    with pytest.raises(DownloadError, match="too slow"):
        download.download(url, tmp_path / "drip.bin", progress=False, attempts=1)
    assert not (tmp_path / "drip.bin").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_negative_content_length_shows_no_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object, net_bytes: bytes
) -> None:
    url = server.serve("/loose.pth", net_bytes, content_length="-5")  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, url)
    result = run_ptm(["weights", "download", "loose"])
    assert result.code == 0, result.stderr
    assert f"downloading loose.pth from {url}" in result.stderr
    assert "-0.0" not in result.stderr and " kB" not in result.stderr


def test_a_folder_in_the_caches_place_is_reported_before_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object, net_bytes: bytes
) -> None:
    url = server.serve("/loose.pth", net_bytes)  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, url)
    (cache / "loose.pth").mkdir(parents=True)
    assert_refused(run_ptm(["weights", "download", "loose"]), "is a folder", "remove it")
    assert_refused(run_ptm(["weights", "import", "loose", str(tmp_path / "labels.txt")]), "is a folder")
    assert server.requests() == 0  # type: ignore[attr-defined]


def test_importing_a_device_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    catalog_for(tmp_path, monkeypatch, "http://127.0.0.1:9/loose.pth", extra="size_mb = 1.0\n")
    assert_refused(run_ptm(["weights", "import", "loose", "/dev/zero"]), "device")
    assert_refused(run_ptm(["weights", "import", "loose", str(tmp_path / "nothing.pth")]), "no such file")


def test_an_endless_pipe_import_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    import subprocess

    catalog_for(tmp_path, monkeypatch, "http://127.0.0.1:9/loose.pth", extra="size_mb = 1.0\n")
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    feeder = subprocess.Popen(["sh", "-c", f"exec cat /dev/zero > '{fifo}'"])
    try:
        result = run_ptm(["weights", "import", "loose", str(fifo)])
    finally:
        feeder.kill()
        feeder.wait(timeout=10)
    assert_refused(result, "larger than")
    assert not (cache / "loose.pth").exists()


def test_weights_removed_while_in_use_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object, net_bytes: bytes
) -> None:
    from ptm_cli.cache import weights

    url = server.serve("/loose.pth", net_bytes)  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, url)
    assert run_ptm(["weights", "download", "loose"]).code == 0
    store = json.loads((cache / "ptm-pins.json").read_text())
    store["stamps"] = {}  # make the next use hash the file, which `weights rm` then races
    (cache / "ptm-pins.json").write_text(json.dumps(store))
    real = weights._hash_file

    def racing_rm(path: Path) -> object:
        assert run_ptm(["weights", "rm", "loose"]).code == 0
        return real(path)

    monkeypatch.setattr(weights, "_hash_file", racing_rm)
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    result = run_ptm(["classify", "-m", "loose", str(tmp_path / "x.png")])
    assert_refused(result, "was removed while ptm was using it", "run the command again")
    assert "permissions" not in result.stderr


def test_prune_removes_idle_lock_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object, net_bytes: bytes
) -> None:
    import time

    url = server.serve("/loose.pth", net_bytes)  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, url)
    assert run_ptm(["weights", "download", "loose"]).code == 0
    locks = sorted(p.name for p in cache.iterdir() if p.name.endswith(".lock"))
    assert locks == ["loose.pth.lock", "ptm-pins.json.lock"]
    old = time.time() - 2 * 3600
    for name in locks:
        os.utime(cache / name, (old, old))
    result = run_ptm(["weights", "prune"])
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in cache.iterdir()) == ["loose.pth", "ptm-pins.json"]
    assert run_ptm(["weights", "verify", "loose"]).code == 0
