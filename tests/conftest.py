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
