"""`ptm weights ...` and downloads seen from the command line: stdout is data, stderr is people."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import DATA, run_ptm, save_weights
from http_server import FixtureServer


@pytest.fixture(scope="module")
def weights_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = save_weights(tmp_path_factory.mktemp("w") / "net.pth", "mobilenet_v3_small", seed=4, num_classes=3)
    return path.read_bytes()


@pytest.fixture
def server() -> Iterator[FixtureServer]:
    with FixtureServer() as running:
        yield running


@pytest.fixture
def served_catalog(
    tmp_path: Path, server: FixtureServer, weights_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A user catalog whose two models download from the test server: one hashed, one to be pinned."""
    server.serve("/files/net-v1.pth", weights_bytes)
    server.serve("/files/unpinned.pth", weights_bytes)
    digest = hashlib.sha256(weights_bytes).hexdigest()
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


def test_download_list_verify_path_rm(served_catalog: Path, weights_bytes: bytes) -> None:
    cache = served_catalog.parent / "cache"
    missing = run_ptm(["weights", "path", "net"])
    assert missing.code == 1
    assert missing.stdout.strip() == str(cache / "net-v1.pth")
    assert "ptm weights download net:DEFAULT" in missing.stderr

    downloaded = run_ptm(["weights", "download", "net"])
    assert downloaded.code == 0
    assert downloaded.stdout.strip() == str(cache / "net-v1.pth")
    assert (cache / "net-v1.pth").read_bytes() == weights_bytes

    listed = run_ptm(["weights", "list", "-f", "jsonl"]).records()
    assert listed == [
        {"file": "net-v1.pth", "size_mib": round(len(weights_bytes) / 2**20, 3), "verified": True,
         "entries": "net:DEFAULT"}
    ]  # fmt: skip

    verified = run_ptm(["weights", "verify", "-f", "jsonl"])
    assert verified.code == 0
    assert [(r["entry"], r["status"]) for r in verified.records()] == [("net:DEFAULT", "ok")]
    assert verified.records()[0]["sha256"] == hashlib.sha256(weights_bytes).hexdigest()

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


def test_import_for_offline_machines(served_catalog: Path, weights_bytes: bytes, monkeypatch: pytest.MonkeyPatch,
                                     tmp_path: Path, server: FixtureServer) -> None:  # fmt: skip
    monkeypatch.setenv("PTM_OFFLINE", "1")
    offline = run_ptm(["classify", "-m", "net", str(DATA / "coffee.png")])
    assert offline.code == 2 and "ptm weights import net:DEFAULT" in offline.stderr

    wrong = tmp_path / "wrong.pth"
    flipped = bytearray(weights_bytes)
    flipped[100] ^= 0xFF
    wrong.write_bytes(bytes(flipped))
    refused = run_ptm(["weights", "import", "net", str(wrong)])
    assert refused.code == 2
    assert not (served_catalog.parent / "cache" / "net-v1.pth").exists()

    good = tmp_path / "copy.pth"
    good.write_bytes(weights_bytes)
    imported = run_ptm(["weights", "import", "net", str(good)])
    assert imported.code == 0, imported.stderr
    assert imported.stdout.strip() == str(served_catalog.parent / "cache" / "net-v1.pth")
    assert run_ptm(["classify", "-m", "net", str(DATA / "coffee.png")]).code == 0
    assert server.requests() == 0  # offline really meant offline


def test_unhashed_entries_are_pinned_on_first_download(
    served_catalog: Path, server: FixtureServer, weights_bytes: bytes
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
    served_catalog: Path, server: FixtureServer, weights_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.serve("/mirror/net-v1.pth", weights_bytes)
    monkeypatch.setenv("PTM_WEIGHTS_MIRROR", f"{server.url}/mirror")
    assert run_ptm(["weights", "download", "net"]).code == 0
    assert server.requests("/mirror/net-v1.pth") == 1
    assert server.requests("/files/net-v1.pth") == 0


def test_truncated_download_leaves_nothing_behind(
    served_catalog: Path, server: FixtureServer, weights_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTM_DOWNLOAD_RETRIES", "1")
    server.serve("/files/net-v1.pth", weights_bytes, mode="short")
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
