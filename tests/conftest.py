"""Shared fixtures: every test runs with its own empty cache and no network."""

from __future__ import annotations

from pathlib import Path

import pytest

_ENV_CLEARED = (
    "PTM_CACHE_DIR",
    "PTM_CATALOG",
    "PTM_OFFLINE",
    "PTM_WEIGHTS_MIRROR",
    "PTM_DEBUG",
    "PTM_MAX_PIXELS",
    "PTM_EXTRA_FORMATS",
    "PTM_DOWNLOAD_TIMEOUT",
    "PTM_DOWNLOAD_RETRIES",
    "XDG_CACHE_HOME",
)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every cache ptm or torch could touch at a fresh temporary folder."""
    home = tmp_path_factory.mktemp("home")
    for name in _ENV_CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    # Never let a test reach a real proxy or the internet by accident.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return home


@pytest.fixture(autouse=True)
def no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests may talk to servers they start on loopback, never to anything else."""
    import socket

    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"test tried to reach {host!r}: tests must stay offline")
        real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", guarded)
    real_getaddrinfo = socket.getaddrinfo

    def local_only(host: object, *args: object, **kwargs: object) -> object:
        if host not in ("127.0.0.1", "::1", "localhost", None):
            raise socket.gaierror(f"test tried to resolve {host!r}: tests must stay offline")
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
