"""torch.hub models, behind a trust policy that never prompts and a cache that works offline.

A torch.hub repository is code: loading an entry point imports the
repository's ``hubconf.py`` and calls a function from it. This module decides
*before any of that code runs* whether it may run, and never asks on stdin, so
a pipeline with a closed or non-interactive stdin fails at once instead of
hanging on torch.hub's ``input()`` prompt.

Repositories
    ``OWNER/NAME[:REF]`` is a GitHub repository; a path that exists, or starts
    with ``./``, ``../``, ``/`` or ``~``, is a local directory holding a
    ``hubconf.py`` (see :func:`parse_repo`).

Trust (decided by ptm; torch.hub is then always called with ``trust_repo=True``)
    * A local directory is trusted: the user pointed at it, as they would
      point ``python`` at a script, and torch.hub itself never asks for
      ``source="local"``.
    * A GitHub repository is trusted when ``trust_repo=True`` is passed
      (``--trust-repo``), when its ``OWNER_NAME`` line is in torch.hub's own
      ``<hub dir>/trusted_list`` (so trust recorded by torch.hub or by
      ``ptm hub trust`` counts for both), or when its owner is one torch.hub
      trusts by default (:data:`TRUSTED_OWNERS`, a copy of
      ``torch.hub._TRUSTED_REPO_OWNERS``; owners and names compare
      case-sensitively, exactly as torch.hub compares them).
    * ``trust_repo=True`` is *recorded* in ``trusted_list``, like torch.hub's
      ``trust_repo=True``: torch.hub writes that line itself whenever it
      downloads a repository, so recording it on the cached path too keeps the
      outcome the same whether or not the repository was cached.
    * torch.hub also treats any folder already in its cache as trusted (a
      migration rule from torch 1.12). ptm does not: a folder in a cache is not
      a decision the user made, and anything may have written it.

Offline and the cache
    * ``OWNER/NAME:REF`` whose copy ``<hub dir>/OWNER_NAME_REF`` (``/`` in REF
      becoming ``_``, torch.hub's naming) holds a ``hubconf.py`` loads from that
      folder with no network call at all; torch.hub's own path would still ask
      GitHub about the ref.
    * Without a REF torch.hub asks GitHub for the default branch, so with
      ``PTM_OFFLINE=1`` that is an :class:`OfflineError` asking for a pinned ref.
    * A repository not in the cache with ``PTM_OFFLINE=1`` is an
      :class:`OfflineError` naming the folder looked in.
    * Inside hub calls with ``PTM_OFFLINE=1``, ``torch.hub.download_url_to_file``
      (which every torch.hub weight download goes through) refuses to download.
    * torch.hub's ref validation lists every branch and tag through the GitHub
      API, which is rate limited to 60 requests an hour without a token
      (pytorch/pytorch#61755). It guards one real risk: a *commit id* from a
      fork is served by GitHub under the upstream repository's name; branch and
      tag names cannot come from a fork. So ptm validates only refs that look
      like commit ids, or every ref when ``GITHUB_TOKEN`` is set (torch.hub
      sends it, and the limit is then 5000 an hour).

Weights
    During a hub call the default of ``torch.hub.load_state_dict_from_url``'s
    ``weights_only`` is switched to True, by editing the function's
    ``__defaults__``: that reaches every reference to the function, including
    the one torchvision bound at import time, without replacing anything. A
    weights file that needs full pickle then fails as :class:`UnsafeWeights`.
    An entry point that passes ``weights_only=False`` explicitly still gets it:
    that is a choice made by code the user decided to trust.

Output
    Everything torch.hub or the repository prints goes to stderr; stdout belongs
    to results.

Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import keyword
import os
import pickle
import re
import sys
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.error import HTTPError, URLError

from . import weights
from .errors import (
    ConfigError,
    DownloadError,
    MissingDependency,
    OfflineError,
    PtmError,
    UnsafeWeights,
    UsageError,
    WeightsError,
)

fcntl: ModuleType | None
try:  # POSIX only; without it two concurrent `ptm hub trust` may both append (harmless duplicate)
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None

if TYPE_CHECKING:
    from torch import nn

    from .catalog import Entry
    from .classify import Classifier

# Owners torch.hub trusts without asking (torch.hub._TRUSTED_REPO_OWNERS; a test keeps them in step).
TRUSTED_OWNERS = ("facebookresearch", "facebookincubator", "pytorch", "fairinternal")
TRUSTED_LIST = "trusted_list"
HUBCONF = "hubconf.py"
TRUST_FLAG = "--trust-repo"
MODEL_PREFIX = "hub:"

# GitHub owners are letters, digits and single hyphens (never "_", which keeps torch's OWNER_NAME key unambiguous).
_OWNER = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})"
_NAME = r"[A-Za-z0-9._-]+"
_REF = r"[A-Za-z0-9._/+@-]+"
_GITHUB = re.compile(rf"(?P<owner>{_OWNER})/(?P<name>{_NAME})(?::(?P<ref>{_REF}))?")
_COMMIT = re.compile(r"[0-9a-f]{7,40}")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
# torch.hub.load's own keyword arguments: an entry point can never receive these through it.
_TORCH_LOAD_KEYWORDS = frozenset(
    {"repo_or_dir", "model", "source", "trust_repo", "force_reload", "verbose", "skip_validation"}
)
# One hub call at a time: the call patches process-wide state (stdout, sys.path, a function default).
_SESSION_LOCK = threading.RLock()


# --- repositories -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubRepo:
    """A torch.hub repository: a GitHub ``owner/name[:ref]`` or a local directory."""

    source: str  # "github" or "local", torch.hub's names
    owner: str | None = None
    name: str | None = None
    ref: str | None = None
    path: Path | None = None

    @property
    def spec(self) -> str:
        """What to pass to torch.hub: ``owner/name[:ref]`` or the directory."""
        if self.source == "local":
            return str(self.path)
        return f"{self.slug}:{self.ref}" if self.ref else self.slug

    @property
    def slug(self) -> str:
        """``owner/name`` (the unit of trust), or the directory."""
        return f"{self.owner}/{self.name}" if self.source == "github" else str(self.path)

    @property
    def trust_key(self) -> str:
        """The line torch.hub's ``trusted_list`` holds for this repository."""
        return f"{self.owner}_{self.name}"

    def cache_dir_name(self, ref: str | None = None) -> str:
        """torch.hub's folder name for this repository at ``ref``: ``owner_name_ref``, ``/`` as ``_``."""
        chosen = ref or self.ref
        if chosen is None:
            raise UsageError(f"{self.spec} has no ref, so it has no single cache folder")
        return f"{self.owner}_{self.name}_{chosen.replace('/', '_')}"

    def __str__(self) -> str:
        return self.spec


def _looks_like_path(text: str) -> bool:
    if text in (".", "..") or text.startswith(("./", "../", "/", "~")):
        return True
    return os.sep != "/" and text.startswith((f".{os.sep}", f"..{os.sep}"))


def _exists(text: str) -> bool:
    try:
        return Path(text).expanduser().exists()
    except (OSError, RuntimeError):  # a name too long for the file system, or ~user for no such user
        return False


def _local_repo(text: str, original: str) -> HubRepo:
    try:
        path = Path(text).expanduser()
    except RuntimeError:
        raise UsageError(f"cannot expand {original}: no such user's home directory") from None
    if not path.exists():
        raise UsageError(f"hub directory {original} does not exist; check the path")
    if not path.is_dir():
        raise UsageError(f"{original} is not a directory; give a directory that holds a hubconf.py")
    if not (path / HUBCONF).is_file():
        raise UsageError(f"{original} has no {HUBCONF}, so it is not a torch.hub repository")
    return HubRepo("local", path=path.resolve())


def _valid_ref(ref: str) -> bool:
    # The parts of `git check-ref-format` that matter for a URL and a folder name.
    bad = ".." in ref or "//" in ref or "@{" in ref
    return not (bad or ref.startswith(("/", ".", "-")) or ref.endswith(("/", ".", ".lock")))


def parse_repo(spec: str) -> HubRepo:
    """``owner/name[:ref]`` (GitHub) or a local directory with a ``hubconf.py``; UsageError otherwise."""
    text = spec.strip()
    if not text:
        raise UsageError("no hub repository given; use OWNER/NAME[:REF] or a directory holding a hubconf.py")
    if _looks_like_path(text) or _exists(text):
        return _local_repo(text, spec)
    match = _GITHUB.fullmatch(text)
    name = match.group("name") if match else ""
    ref = match.group("ref") if match else None
    if match is None or name in (".", "..") or (ref is not None and not _valid_ref(ref)):
        raise UsageError(
            f"{spec!r} is not a hub repository; use OWNER/NAME or OWNER/NAME:REF (a GitHub repository, "
            "REF a tag, branch or commit) or a path like ./dir to a directory holding a hubconf.py"
        )
    return HubRepo("github", owner=match.group("owner"), name=name, ref=ref)


def _as_repo(repo: HubRepo | str) -> HubRepo:
    return repo if isinstance(repo, HubRepo) else parse_repo(repo)


# --- where torch.hub keeps things --------------------------------------------------------------------


def hub_dir() -> Path:
    """torch.hub's folder (``$TORCH_HOME/hub``), or the one ``torch.hub.set_dir`` chose if torch is loaded."""
    loaded = sys.modules.get("torch.hub")
    if loaded is not None:
        with warnings.catch_warnings():
            # get_dir() warns when the long-deprecated TORCH_HUB variable is set; that is not ours to report.
            warnings.simplefilter("ignore")
            return Path(loaded.get_dir())
    return weights.torch_home() / "hub"


def trusted_list_path() -> Path:
    """The ``trusted_list`` file torch.hub reads and writes (one ``owner_name`` per line)."""
    return hub_dir() / TRUSTED_LIST


def trusted_names() -> set[str]:
    """The ``owner_name`` keys in torch.hub's ``trusted_list`` (empty when there is none)."""
    path = trusted_list_path()
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return set()
    except OSError as exc:
        raise ConfigError(
            f"cannot read torch.hub's trust list {path} ({exc.strerror}); check its permissions"
        ) from None
    # torch.hub compares stripped lines, so blank lines and stray spaces mean nothing.
    return {line.strip() for line in text.splitlines() if line.strip()}


def cached_repos() -> list[Path]:
    """The repository folders in the hub cache (those holding a ``hubconf.py``)."""
    try:
        children = sorted(hub_dir().iterdir())
    except OSError:
        return []
    return [child for child in children if child.is_dir() and (child / HUBCONF).is_file()]


# --- trust ---------------------------------------------------------------------------------------------


def trusted_by(repo: HubRepo | str, *, trust_repo: bool = False) -> str | None:
    """Why ``repo`` may run its code here, in words; None when it may not."""
    hub_repo = _as_repo(repo)
    if hub_repo.source == "local":
        return "a local directory (your own code)"
    if trust_repo:
        return TRUST_FLAG
    if hub_repo.owner in TRUSTED_OWNERS:
        return f"owner {hub_repo.owner} (trusted by torch.hub by default)"
    if hub_repo.trust_key in trusted_names():
        return f"listed in {trusted_list_path()}"
    return None


def _untrusted(repo: HubRepo) -> UsageError:
    # A usage error (exit 2): what is missing is a flag on the command line, not a broken configuration.
    return UsageError(
        f"{repo.slug} is not a trusted repository and loading it runs its code; pass {TRUST_FLAG} "
        f"or run `ptm hub trust {repo.slug}` once if you trust it"
    )


def trust(repo: HubRepo | str) -> bool:
    """Record ``repo`` in torch.hub's ``trusted_list``; True if added, False if it was already there.

    The ref, if any, is ignored: torch.hub trusts a repository, not a ref.
    The line is appended under a lock in one write, as torch.hub appends.
    """
    hub_repo = _as_repo(repo)
    if hub_repo.source == "local":
        raise UsageError(f"{hub_repo.path} is a local directory; those are always trusted, nothing to record")
    path = trusted_list_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a+", encoding="utf-8") as stream:
            return _append_once(stream, hub_repo.trust_key)
    except OSError as exc:
        raise ConfigError(
            f"cannot write torch.hub's trust list {path} ({exc.strerror}); check the folder's permissions"
        ) from None


def _append_once(stream: Any, key: str) -> bool:
    if fcntl is not None:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX)  # released when the file closes
    stream.seek(0)
    content = stream.read()
    if key in {line.strip() for line in content.splitlines()}:
        return False
    # A file whose last line lacks its newline would otherwise glue our key onto it.
    prefix = "\n" if content and not content.endswith("\n") else ""
    stream.write(f"{prefix}{key}\n")
    stream.flush()
    os.fsync(stream.fileno())
    return True


def _authorize(repo: HubRepo, trust_repo: bool) -> str:
    """Decide before any repository code runs; never asks. Returns the reason it may run."""
    reason = trusted_by(repo)
    if reason is not None:
        return reason
    if not trust_repo:
        raise _untrusted(repo)
    trust(repo)
    return TRUST_FLAG


# --- where the code comes from -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Origin:
    """Where a repository's code will be imported from."""

    directory: Path | None  # None: torch.hub must fetch it from GitHub
    source: str  # "local dir X", "hub cache X", or "" while unknown


def _locate(repo: HubRepo, offline: bool) -> _Origin:
    """Find the code without touching the network; OfflineError when it would be needed but is forbidden."""
    if repo.source == "local":
        return _Origin(repo.path, f"local dir {repo.path}")
    if repo.ref is None:
        if offline:
            raise OfflineError(
                f"{repo.slug} has no ref, and finding its default branch needs GitHub, which PTM_OFFLINE=1 "
                f"forbids; pin one, e.g. {repo.slug}:main or {repo.slug}:TAG"
            )
        return _Origin(None, "")
    cached = hub_dir() / repo.cache_dir_name()
    if cached.is_dir():
        if not (cached / HUBCONF).is_file():
            raise ConfigError(
                f"the cached copy {cached} of {repo.spec} has no {HUBCONF}; delete that folder so it is fetched again"
            )
        return _Origin(cached, f"hub cache {cached}")
    if offline:
        raise OfflineError(
            f"{repo.spec} is not in the torch.hub cache {hub_dir()} and PTM_OFFLINE=1 forbids downloading it; "
            f"run once online, or put a copy of the repository at {cached}"
        )
    return _Origin(None, "")


def _skip_validation(repo: HubRepo) -> bool:
    """Whether torch.hub may skip its GitHub API check of the ref (see the module docstring)."""
    if os.environ.get("GITHUB_TOKEN"):
        return False
    return repo.ref is None or not _COMMIT.fullmatch(repo.ref)


def _default_branch_dirs(repo: HubRepo) -> list[Path]:
    # torch.hub picks "main" when GitHub has it, else "master".
    return [hub_dir() / repo.cache_dir_name(ref) for ref in ("main", "master")]


def _fetched_source(repo: HubRepo, before: set[Path]) -> tuple[Path | None, str]:
    """Where torch.hub put (or found) the repository, and how to describe it."""
    candidates = [hub_dir() / repo.cache_dir_name()] if repo.ref else _default_branch_dirs(repo)
    present = [c for c in candidates if c.is_dir()]
    new = [c for c in present if c not in before]
    if new:
        return new[0], f"downloaded to {new[0]}"
    if present:
        return present[0], f"hub cache {present[0]}"
    return None, f"downloaded to {hub_dir()}"


def _existing(repo: HubRepo) -> set[Path]:
    candidates = [hub_dir() / repo.cache_dir_name()] if repo.ref else _default_branch_dirs(repo)
    return {c for c in candidates if c.is_dir()}


# --- running hub code safely -------------------------------------------------------------------------


def _weights_only_slot(func: Callable[..., Any]) -> tuple[str, int | None] | None:
    """Where ``weights_only``'s default lives: ("pos", index in __defaults__) or ("kw", None)."""
    code = getattr(func, "__code__", None)
    if code is None:
        return None
    if "weights_only" in (getattr(func, "__kwdefaults__", None) or {}):
        return ("kw", None)
    names = code.co_varnames[: code.co_argcount]
    defaults = getattr(func, "__defaults__", None) or ()
    if "weights_only" not in names:
        return None
    index = names.index("weights_only") - (len(names) - len(defaults))
    return ("pos", index) if index >= 0 else None


@contextlib.contextmanager
def safe_hub_weights() -> Iterator[bool]:
    """Make ``torch.hub.load_state_dict_from_url`` default to ``weights_only=True`` inside the block.

    Yields whether the default could be changed (False on a torch whose function
    looks different, where the block then changes nothing).
    """
    import torch.hub

    func = inspect.unwrap(torch.hub.load_state_dict_from_url)
    slot = _weights_only_slot(func)
    if slot is None:
        yield False
        return
    kind, index = slot
    saved_defaults, saved_kwdefaults = func.__defaults__, func.__kwdefaults__
    if kind == "kw":
        func.__kwdefaults__ = {**(saved_kwdefaults or {}), "weights_only": True}
    else:
        assert saved_defaults is not None and index is not None
        func.__defaults__ = (*saved_defaults[:index], True, *saved_defaults[index + 1 :])
    try:
        yield True
    finally:
        func.__defaults__, func.__kwdefaults__ = saved_defaults, saved_kwdefaults


@contextlib.contextmanager
def _downloads_refused(offline: bool) -> Iterator[None]:
    """With PTM_OFFLINE=1, turn torch.hub's downloads (repositories and weights) into OfflineError."""
    if not offline:
        yield
        return
    import torch.hub

    original = torch.hub.download_url_to_file

    def refuse(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        raise OfflineError(f"PTM_OFFLINE=1 forbids downloading {url}; put the file at {dst} or unset PTM_OFFLINE")

    # load_state_dict_from_url looks this name up in torch.hub's globals at call time.
    torch.hub.download_url_to_file = refuse
    try:
        yield
    finally:
        torch.hub.download_url_to_file = original


@contextlib.contextmanager
def _hub_session(offline: bool) -> Iterator[None]:
    """The conditions every piece of hub code runs under (one call at a time)."""
    with (
        _SESSION_LOCK,
        contextlib.redirect_stdout(sys.stderr),  # torch.hub and hubconf print: keep stdout for results
        safe_hub_weights(),
        _downloads_refused(offline),
    ):
        yield


@contextlib.contextmanager
def _on_sys_path(directory: Path) -> Iterator[None]:
    # As torch.hub does: a hubconf imports its sibling modules.
    entry = str(directory)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def _import_hubconf(directory: Path) -> ModuleType:
    """Import ``directory/hubconf.py`` as torch.hub does (not registered in sys.modules)."""
    path = directory / HUBCONF
    spec = importlib.util.spec_from_file_location("hubconf", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    with _on_sys_path(directory):
        spec.loader.exec_module(module)
    return module


def _entrypoints(module: ModuleType) -> list[str]:
    # torch.hub's rule: every public callable of hubconf is an entry point.
    return sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))


def _entry_point(module: ModuleType, repo: HubRepo, entry: str) -> Callable[..., Any]:
    func = getattr(module, entry, None) if not entry.startswith("_") else None
    if func is None or not callable(func):
        names = ", ".join(_entrypoints(module)) or "none"
        raise UsageError(f"{repo.spec} has no entry point {entry!r}; its entry points are: {names}")
    return func  # type: ignore[no-any-return]


def _check_dependencies(module: ModuleType, repo: HubRepo) -> None:
    """The packages hubconf's ``dependencies`` list must be importable (as torch.hub checks)."""
    wanted = getattr(module, "dependencies", None) or []
    missing = [name for name in wanted if isinstance(name, str) and not _module_exists(name)]
    if missing:
        raise MissingDependency(
            f"{repo.spec} needs the Python packages {', '.join(missing)}; install them (`pip install ...`)"
        )


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package raises instead of returning None
        return False


def _check_arguments(func: Callable[..., Any], kwargs: Mapping[str, Any], repo: HubRepo, entry: str) -> None:
    """Refuse arguments the entry point cannot take before calling it (clearer than its TypeError)."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return  # builtins and some C callables have none; the call will tell
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise UsageError(
            f"entry point {entry} of {repo.spec} does not accept these arguments ({exc}); "
            f"`ptm hub help {repo.spec} {entry}` describes it"
        ) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def _http_error(what: str, exc: HTTPError) -> DownloadError:
    hint = ""
    if exc.code in (403, 429):
        hint = "; GitHub may be rate limiting you: wait, or set GITHUB_TOKEN to a personal access token"
    elif exc.code == 404:
        hint = "; check the repository name and ref"
    return DownloadError(f"{what}: downloading {exc.url} failed with HTTP {exc.code} {exc.reason}{hint}")


def _torch_hub_error(what: str, repo: HubRepo, exc: Exception) -> PtmError | None:
    """Turn torch.hub's own exceptions (known by their messages) into ptm errors."""
    text = str(exc)
    if isinstance(exc, RuntimeError) and text.startswith("Cannot find callable"):
        return UsageError(f"{what}: no such entry point; `ptm hub list {repo.spec}` lists them")
    if isinstance(exc, RuntimeError) and text.startswith("Missing dependencies:"):
        return MissingDependency(f"{what} needs the Python packages {text.split(':', 1)[1].strip()}; install them")
    if isinstance(exc, RuntimeError) and "no internet connection" in text:
        return DownloadError(f"{what}: GitHub cannot be reached and no copy is cached; check the network")
    if isinstance(exc, ValueError) and text.startswith("Cannot find "):
        return UsageError(
            f"{what}: GitHub does not list ref {repo.ref} as a branch, tag or branch head of {repo.slug} "
            "(torch.hub refuses commit ids it cannot tie to the repository, since a fork's commit is also "
            "served under the upstream name); use a tag or branch name"
        )
    if isinstance(exc, zipfile.BadZipFile) or (isinstance(exc, ValueError) and text.startswith("Archive entry")):
        return DownloadError(f"{what}: the archive GitHub sent is not usable ({_first_line(exc)})")
    return None


@contextlib.contextmanager
def _translated(what: str, repo: HubRepo) -> Iterator[None]:
    """Every failure inside hub code becomes a ptm error (the original stays chained for PTM_DEBUG)."""
    try:
        yield
    except PtmError:
        raise
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise UnsafeWeights(
                f"{what}: a weights file it loads stores pickled Python objects, not just tensors, and ptm loads "
                "hub weights with weights_only=True; ask the repository for a plain state_dict"
            ) from exc
        raise WeightsError(
            f"{what}: a weights file it loads is damaged ({_first_line(exc)}); delete it from "
            f"{hub_dir() / 'checkpoints'} and try again"
        ) from exc
    except HTTPError as exc:
        raise _http_error(what, exc) from exc
    except URLError as exc:
        raise DownloadError(f"{what}: a download failed ({exc.reason}); check the network") from exc
    except (ConnectionError, TimeoutError) as exc:
        raise DownloadError(f"{what}: a download failed ({_first_line(exc)}); check the network") from exc
    except ImportError as exc:
        missing = f"the Python package {exc.name!r}" if exc.name else "a Python package"
        raise MissingDependency(f"{what} needs {missing}, which does not import ({_first_line(exc)})") from exc
    except Exception as exc:
        known = _torch_hub_error(what, repo, exc)
        if known is not None:
            raise known from exc
        raise UsageError(
            f"{what} failed in the repository's own code ({type(exc).__name__}: {_first_line(exc)}); "
            "PTM_DEBUG=1 shows the traceback"
        ) from exc


@dataclass(frozen=True)
class _Prepared:
    repo: HubRepo
    origin: _Origin
    trusted_by: str
    offline: bool


def _prepare(repo: HubRepo | str, trust_repo: bool) -> _Prepared:
    """Locate the code, then decide trust: all before any repository code runs or any byte is fetched."""
    hub_repo = _as_repo(repo)
    offline = weights.is_offline()
    origin = _locate(hub_repo, offline)
    reason = _authorize(hub_repo, trust_repo)
    return _Prepared(hub_repo, origin, reason, offline)


def _check_entry_name(entry: str) -> None:
    if not entry.isidentifier() or keyword.iskeyword(entry):
        raise UsageError(f"{entry!r} is not an entry point name; `ptm hub list REPO` lists them")


# --- public operations -----------------------------------------------------------------------------------


def list_entrypoints(repo: HubRepo | str, *, trust_repo: bool = False) -> list[str]:
    """The entry points of ``repo`` (imports its hubconf.py, so trust is required for GitHub repositories)."""
    ready = _prepare(repo, trust_repo)
    what = ready.repo.spec
    with _hub_session(ready.offline), _translated(what, ready.repo):
        if ready.origin.directory is not None:
            return _entrypoints(_import_hubconf(ready.origin.directory))
        import torch.hub

        found = torch.hub.list(ready.repo.spec, trust_repo=True, skip_validation=_skip_validation(ready.repo))
        return sorted(found)


def entry_help(repo: HubRepo | str, entry: str, *, trust_repo: bool = False) -> str:
    """The docstring of ``entry`` (dedented; empty when it has none)."""
    _check_entry_name(entry)
    ready = _prepare(repo, trust_repo)
    what = f"{ready.repo.spec} {entry}"
    with _hub_session(ready.offline), _translated(what, ready.repo):
        if ready.origin.directory is not None:
            module = _import_hubconf(ready.origin.directory)
            doc = _entry_point(module, ready.repo, entry).__doc__
        else:
            import torch.hub

            doc = torch.hub.help(ready.repo.spec, entry, trust_repo=True, skip_validation=_skip_validation(ready.repo))
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


@dataclass(frozen=True)
class LoadInfo:
    """What ``load_model`` loaded and where it came from."""

    repo: str
    entry: str
    class_name: str
    num_params: int
    source: str  # "local dir X", "hub cache X" or "downloaded to X"
    directory: Path | None
    trusted_by: str


def _call_local(directory: Path, repo: HubRepo, entry: str, kwargs: Mapping[str, Any]) -> Any:
    module = _import_hubconf(directory)
    func = _entry_point(module, repo, entry)
    _check_dependencies(module, repo)
    _check_arguments(func, kwargs, repo, entry)
    with _on_sys_path(directory):  # the entry may import sibling modules lazily
        return func(**kwargs)


def _call_github(repo: HubRepo, entry: str, kwargs: Mapping[str, Any]) -> Any:
    clash = sorted(_TORCH_LOAD_KEYWORDS & set(kwargs))
    if clash:
        raise UsageError(
            f"torch.hub.load cannot pass {', '.join(clash)} to an entry point; pin a ref ({repo.slug}:REF) "
            "and run once so the repository is cached, then ptm passes every argument itself"
        )
    import torch.hub

    return torch.hub.load(
        repo.spec, entry, source="github", trust_repo=True, skip_validation=_skip_validation(repo), **kwargs
    )


def load_model(
    repo: HubRepo | str, entry: str, *, kwargs: Mapping[str, Any] | None = None, trust_repo: bool = False
) -> tuple[nn.Module, LoadInfo]:
    """Call ``entry`` of ``repo`` with ``kwargs``; the model comes back in eval mode, where the entry point built it."""
    _check_entry_name(entry)
    arguments = dict(kwargs or {})
    ready = _prepare(repo, trust_repo)
    hub_repo = ready.repo
    what = f"{hub_repo.spec} {entry}"
    directory: Path | None
    with _hub_session(ready.offline), _translated(what, hub_repo):
        if ready.origin.directory is not None:
            result = _call_local(ready.origin.directory, hub_repo, entry, arguments)
            directory, source = ready.origin.directory, ready.origin.source
        else:
            before = _existing(hub_repo)
            result = _call_github(hub_repo, entry, arguments)
            directory, source = _fetched_source(hub_repo, before)
    model = _as_module(result, what)
    model.eval()  # ptm only ever runs inference
    info = LoadInfo(
        repo=hub_repo.spec,
        entry=entry,
        class_name=type(model).__name__,
        num_params=sum(p.numel() for p in model.parameters()),
        source=source,
        directory=directory,
        trusted_by=ready.trusted_by,
    )
    return model, info


def _as_module(result: Any, what: str) -> nn.Module:
    from torch import nn

    if not isinstance(result, nn.Module):
        raise UsageError(f"{what} returned a {type(result).__name__}, not a torch model (nn.Module)")
    return result


# --- entry-point arguments ------------------------------------------------------------------------------


def _parse_value(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    if _INT.fullmatch(raw):
        return int(raw)
    if _FLOAT.fullmatch(raw):
        return float(raw)
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]  # quotes force a string: name="true"
    return raw


def parse_kwargs(items: Iterable[str]) -> dict[str, Any]:
    """``["pretrained=true", "num_classes=10", "x=none"]`` -> keyword arguments (bool/None/int/float/str)."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier() or keyword.iskeyword(key):
            raise UsageError(f"{item!r} is not KEY=VALUE with KEY a Python identifier, e.g. pretrained=true")
        if key in result:
            raise UsageError(f"argument {key} is given twice")
        result[key] = _parse_value(raw.strip())
    return result


# --- classification through hub models ---------------------------------------------------------------------


def parse_model_spec(spec: str) -> tuple[HubRepo, str]:
    """``hub:OWNER/NAME[:REF]/ENTRY`` or ``hub:./dir/ENTRY`` -> (repository, entry point)."""
    text = spec.strip()
    if not text.startswith(MODEL_PREFIX):
        raise UsageError(f"{spec!r} is not a hub model; use hub:OWNER/NAME[:REF]/ENTRY or hub:./dir/ENTRY")
    repo_part, slash, entry = text[len(MODEL_PREFIX) :].rpartition("/")
    if not slash or not repo_part or not entry:
        raise UsageError(f"{spec!r} names no entry point; use hub:OWNER/NAME[:REF]/ENTRY or hub:./dir/ENTRY")
    _check_entry_name(entry)
    return parse_repo(repo_part), entry


def _classify_entry(spec: str, labels_file: str | os.PathLike[str] | None) -> Entry:
    """A catalog entry for a hub model: ImageNet preprocessing (the book's), ImageNet or the user's labels."""
    from .catalog import IMAGENET_MEAN, IMAGENET_STD, Entry

    labels = str(Path(labels_file).expanduser()) if labels_file is not None else "imagenet"
    return Entry(
        model=spec,
        weights="hub",
        task="classify",
        architecture="hub",
        labels=labels,
        resize=256,
        crop=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        source="hub",
    )


def _to_device(model: nn.Module, device: Any) -> nn.Module:
    import torch

    # As classify does: channels_last lets oneDNN/cuDNN pick their fastest convolution kernels.
    return model.to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _output_classes(classifier: Classifier, crop: int) -> int:
    """Run one blank image through the model as ``predict`` would, and count its outputs."""
    import torch

    x = torch.zeros(1, 3, crop, crop, device=classifier.device).contiguous(memory_format=torch.channels_last)
    precision = classifier.precision
    what = classifier.entry.model
    try:
        with (
            torch.inference_mode(),
            torch.autocast(classifier.device.type, dtype=precision.dtype, enabled=precision.autocast),
        ):
            out = classifier.model(x)
    except Exception as exc:
        raise UsageError(
            f"{what} fails on a 1x3x{crop}x{crop} image batch ({type(exc).__name__}: {_first_line(exc)}), "
            "so it is not an image classifier ptm can run"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(
            f"{what} returns {shape}, not one row of class scores per image, so ptm cannot classify with it"
        )
    return int(out.shape[1])


def hub_classifier(
    spec: str,
    *,
    labels_file: str | os.PathLike[str] | None = None,
    device: str = "auto",
    precision: str = "fp32",
    trust_repo: bool = False,
    kwargs: Mapping[str, Any] | None = None,
) -> Classifier:
    """A ready ``Classifier`` for ``hub:OWNER/NAME[:REF]/ENTRY`` or ``hub:./dir/ENTRY``."""
    from .catalog import load_labels
    from .classify import Classifier
    from .device import check_device_spec, choose_device, choose_precision

    repo, entry_name = parse_model_spec(spec)
    check_device_spec(device)
    entry = _classify_entry(spec.strip(), labels_file)
    # Labels, device and precision first: each can fail without running any repository code.
    labels = load_labels(entry)
    torch_device = choose_device(device)
    chosen_precision = choose_precision(precision, torch_device)
    model, info = load_model(repo, entry_name, kwargs=kwargs, trust_repo=trust_repo)
    entry = replace(entry, num_params=info.num_params, description=info.source)
    classifier = Classifier(
        entry,
        _to_device(model, torch_device),
        weights_label="hub",
        labels=labels,
        preprocess=entry.preprocess(),
        device=torch_device,
        precision=chosen_precision,
    )
    outputs = _output_classes(classifier, entry.crop or 224)
    if labels is not None and outputs != len(labels):
        raise ConfigError(
            f"{spec} gives {outputs} class scores but its labels list {len(labels)} names; "
            "pass a labels file with one name per output (--labels)"
        )
    return classifier
