"""The suite's one set of shared fixtures.

Every test runs in an isolated environment (no ptm setting from outside, its own HOME, torch
folder and runtime folder) and offline. Shared here: the tiny classifier and the generator,
seeded weights files, the HTTP fixture server, a weights cache, a local torch.hub repository,
and the warm ``ptm serve`` servers. Models are built once per session. Helper functions live in
the helper modules (helpers, corpus, photofiles, http_server, serverkit, batchkit).
"""

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
from helpers import TINY_HUBCONF, SeededWeights, TinyClassifier, write_tiny_model
from http_server import FixtureServer
from serverkit import Servers, write_model_folder

from ptm_cli.settings import VARIABLES  # the settings table only: nothing of ptm_cli.images is imported yet

# `make asan` runs the kernel's tests against a build with the sanitizers: load it in place of the installed one.
_SANITIZED = os.environ.get("PTM_RESAMPLE_EXTENSION")
if _SANITIZED:
    _spec = importlib.util.spec_from_file_location("ptm_cli.images._resample", _SANITIZED)
    assert _spec is not None and _spec.loader is not None, _SANITIZED
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _module
    _spec.loader.exec_module(_module)

# Every variable of ptm's settings table, and Python's proxy variables (the table names only HTTPS_PROXY).
_CLEARED = (
    *(variable.name for variable in VARIABLES),
    *("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"),
)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No ptm setting from outside, and fresh folders for everything ptm or torch could touch; gives HOME.

    Unsets every variable of ``settings.VARIABLES``, the warm server's too (a developer's
    ``PTM_SERVER=auto`` must never send a test through their own server), and the proxy variables (a
    test never reaches a real proxy). ``GOMP_SPINCOUNT`` goes for child processes only: libgomp read
    it when torch loaded. HOME and TORCH_HOME point at a fresh folder, XDG_RUNTIME_DIR at a fresh short
    one (a socket path must fit in 104 bytes) that is removed afterwards.
    """
    home = tmp_path_factory.mktemp("home")
    runtime = Path(tempfile.mkdtemp(prefix="ptm-rt-"))
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    try:
        yield home
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


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


# --- models and weights files ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def seeded_weights(tmp_path_factory: pytest.TempPathFactory) -> SeededWeights:
    """The session's factory of seeded weights files: the same arguments give the same (shared) file."""
    return SeededWeights(tmp_path_factory.mktemp("seeded"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyClassifier:
    """The tiny classifier's files (a calibrated 4-class MobileNet, its catalog and labels), for the session."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny(tiny_model: TinyClassifier, monkeypatch: pytest.MonkeyPatch) -> TinyClassifier:
    """The tiny classifier, with its catalog in PTM_CATALOG: ``-m tiny`` names it."""
    monkeypatch.setenv("PTM_CATALOG", str(tiny_model.catalog))
    return tiny_model


@pytest.fixture(scope="session")
def generator_file(seeded_weights: SeededWeights) -> Path:
    """A CycleGAN generator's weights file (seed 7, full size): what ``ptm zebra -w`` loads in the tests."""
    return seeded_weights.generator()


@pytest.fixture(scope="session")
def resnet18_file(seeded_weights: SeededWeights) -> Path:
    """A ResNet-18 weights file with seeded values whose top-5 order no rounding noise can flip."""
    return seeded_weights.classifier("resnet18", seed=1)


@pytest.fixture(scope="session")
def calibrated_resnet18_file(seeded_weights: SeededWeights) -> Path:
    """A ResNet-18 weights file that behaves like a trained one on the sample photos (for precision checks)."""
    return seeded_weights.calibrated("resnet18", logit_std=6.0)


@pytest.fixture(scope="session")
def net_bytes(seeded_weights: SeededWeights) -> bytes:
    """The bytes of a 3-class MobileNetV3-small weights file: what the download tests serve."""
    return seeded_weights.classifier("mobilenet_v3_small", seed=4, num_classes=3).read_bytes()


# --- downloads, the cache and torch.hub -----------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FixtureServer]:
    """The HTTP fixture server (tests/http_server.py) on 127.0.0.1, stopped after the test."""
    with FixtureServer() as running:
        yield running


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's weights cache, named by PTM_CACHE_DIR and not created yet."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("PTM_CACHE_DIR", str(directory))
    return directory


@pytest.fixture
def hub_repo(tmp_path: Path) -> Path:
    """A local torch.hub repository, ``tinyrepo`` in this test's folder: a tiny classifier and entries that are not."""
    repo = tmp_path / "tinyrepo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(TINY_HUBCONF)
    return repo


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
def docs_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the documentation's examples run in (tests/docs_sandbox.py), made once.

    Its users copy it (hard links) before they run anything, so it stays as it was made.
    """
    import docs_sandbox

    root = tmp_path_factory.mktemp("docs")
    docs_sandbox.build(root)
    return root


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
    env = {
        "XDG_RUNTIME_DIR": str(runtime),
        "HOME": str(home),
        "TORCH_HOME": str(home / "torch"),
        "PTM_CATALOG": str(model_folder / "tiny.toml"),
    }
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
