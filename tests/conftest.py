"""Shared fixtures: every test runs with its own empty cache and no network."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverkit import Servers, write_model_folder

# `make asan` runs the kernel's tests against a build with the sanitizers: load it in place of the installed one.
_SANITIZED = os.environ.get("PTM_RESAMPLE_EXTENSION")
if _SANITIZED:
    _spec = importlib.util.spec_from_file_location("ptm_cli.images._resample", _SANITIZED)
    assert _spec is not None and _spec.loader is not None, _SANITIZED
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _module
    _spec.loader.exec_module(_module)

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


# --- warm servers -------------------------------------------------------------------------------------


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Servers]:
    """Servers this test starts, in a short runtime folder of its own (a socket path must fit in 104 bytes)."""
    runtime = Path(tempfile.mkdtemp(prefix="ptm-serve-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("PTM_SERVER", raising=False)
    group = Servers(runtime)
    try:
        yield group
    finally:
        group.stop_all()
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny classifier, a generator and a few photos, as the server tests' working folder."""
    return write_model_folder(tmp_path_factory.mktemp("served"))


@pytest.fixture
def served_models(model_folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test works in the model folder, with its catalog."""
    monkeypatch.setenv("PTM_CATALOG", str(model_folder / "tiny.toml"))
    monkeypatch.chdir(model_folder)
    return model_folder


@pytest.fixture(scope="session")
def shared_server(
    model_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Servers, dict[str, str]]]:
    """One server for the tests that only use it (starting one costs seconds); they see its counters move."""
    runtime = Path(tempfile.mkdtemp(prefix="ptm-serve-"))
    home = tmp_path_factory.mktemp("home")
    env = {"XDG_RUNTIME_DIR": str(runtime), "HOME": str(home), "TORCH_HOME": str(home / "torch"),
           "PTM_CATALOG": str(model_folder / "tiny.toml")}  # fmt: skip
    group = Servers(runtime)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, runtime, ignore_errors=True)
        cleanup.callback(group.stop_all, env)
        group.start(env=env, clean=True)
        yield group, env


@pytest.fixture
def warm(shared_server: tuple[Servers, dict[str, str]], model_folder: Path, monkeypatch: pytest.MonkeyPatch) -> Servers:
    """The shared server, with this test's environment made the one it was started in."""
    group, env = shared_server
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PTM_SERVER", raising=False)
    monkeypatch.chdir(model_folder)
    group.cwd = model_folder
    return group
