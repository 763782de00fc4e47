"""Running a torch.hub repository's code: located without the network, trusted first, fenced while it runs.

Offline and the cache
    * ``OWNER/NAME:REF`` whose copy ``<hub dir>/OWNER_NAME_REF`` holds a
      ``hubconf.py`` loads from that folder with no network call at all;
      torch.hub's own path would still ask GitHub about the ref.
    * Without a REF torch.hub asks GitHub for the default branch, so with
      ``PTM_OFFLINE=1`` that is an :class:`OfflineError` asking for a pinned ref.
    * A repository not in the cache with ``PTM_OFFLINE=1`` is an
      :class:`OfflineError` naming the folder looked in.
    * Inside hub calls with ``PTM_OFFLINE=1``, ``torch.hub.download_url_to_file``
      (which every torch.hub weight download goes through) refuses to download.
    * torch.hub's ref validation lists every branch and tag through the GitHub
      API, which is rate limited to 60 requests an hour without a token. It
      guards one real risk: a *commit id* from a fork is served by GitHub under
      the upstream repository's name; branch and tag names cannot come from a
      fork. So ptm validates only refs that look like commit ids, or every ref
      when ``GITHUB_TOKEN`` is set (torch.hub sends it, and the limit is then
      5000 an hour).

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
import pickle
import re
import sys
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.error import HTTPError, URLError

from .. import settings
from ..errors import (
    ConfigError,
    DownloadError,
    MissingDependency,
    OfflineError,
    PtmError,
    UnsafeWeights,
    UsageError,
    WeightsError,
    first_line,
)
from .repos import COMMIT, HUBCONF, HubRepo, as_repo, check_entry_name, hub_dir
from .trust import authorize

if TYPE_CHECKING:
    from torch import nn

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
# torch.hub.load's own keyword arguments: an entry point can never receive these through it.
_TORCH_LOAD_KEYWORDS = frozenset(
    {"repo_or_dir", "model", "source", "trust_repo", "force_reload", "verbose", "skip_validation"}
)
# One hub call at a time: the call patches process-wide state (stdout, sys.path, a function default).
_SESSION_LOCK = threading.RLock()

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
    if settings.github_token_set():
        return False
    return repo.ref is None or not COMMIT.fullmatch(repo.ref)


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
        return DownloadError(f"{what}: the archive GitHub sent is not usable ({first_line(exc)})")
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
            f"{what}: a weights file it loads is damaged ({first_line(exc)}); delete it from "
            f"{hub_dir() / 'checkpoints'} and try again"
        ) from exc
    except HTTPError as exc:
        raise _http_error(what, exc) from exc
    except URLError as exc:
        raise DownloadError(f"{what}: a download failed ({exc.reason}); check the network") from exc
    except (ConnectionError, TimeoutError) as exc:
        raise DownloadError(f"{what}: a download failed ({first_line(exc)}); check the network") from exc
    except ImportError as exc:
        missing = f"the Python package {exc.name!r}" if exc.name else "a Python package"
        raise MissingDependency(f"{what} needs {missing}, which does not import ({first_line(exc)})") from exc
    except Exception as exc:
        known = _torch_hub_error(what, repo, exc)
        if known is not None:
            raise known from exc
        raise UsageError(
            f"{what} failed in the repository's own code ({type(exc).__name__}: {first_line(exc)}); "
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
    hub_repo = as_repo(repo)
    offline = settings.offline()
    origin = _locate(hub_repo, offline)
    reason = authorize(hub_repo, trust_repo)
    return _Prepared(hub_repo, origin, reason, offline)


# --- public operations -----------------------------------------------------------------------------------


def list_entrypoints(repo: HubRepo | str, *, trust_repo: bool = False) -> list[str]:
    """The entry points of ``repo`` (imports its hubconf.py, so trust is required for GitHub repositories)."""
    ready = _prepare(repo, trust_repo)
    what = ready.repo.spec
    with _hub_session(ready.offline), _translated(what, ready.repo):
        if ready.origin.directory is not None:
            return _entrypoints(_import_hubconf(ready.origin.directory))
        import torch.hub

        found = torch.hub.list(  # type: ignore[no-untyped-call]
            ready.repo.spec, trust_repo=True, skip_validation=_skip_validation(ready.repo)
        )
        return sorted(found)


def entry_help(repo: HubRepo | str, entry: str, *, trust_repo: bool = False) -> str:
    """The docstring of ``entry`` (dedented; empty when it has none)."""
    check_entry_name(entry)
    ready = _prepare(repo, trust_repo)
    what = f"{ready.repo.spec} {entry}"
    with _hub_session(ready.offline), _translated(what, ready.repo):
        if ready.origin.directory is not None:
            module = _import_hubconf(ready.origin.directory)
            doc = _entry_point(module, ready.repo, entry).__doc__
        else:
            import torch.hub

            doc = torch.hub.help(  # type: ignore[no-untyped-call]
                ready.repo.spec, entry, trust_repo=True, skip_validation=_skip_validation(ready.repo)
            )
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

    return torch.hub.load(  # type: ignore[no-untyped-call]
        repo.spec, entry, source="github", trust_repo=True, skip_validation=_skip_validation(repo), **kwargs
    )


def load_model(
    repo: HubRepo | str, entry: str, *, kwargs: Mapping[str, Any] | None = None, trust_repo: bool = False
) -> tuple[nn.Module, LoadInfo]:
    """Call ``entry`` of ``repo`` with ``kwargs``; the model comes back in eval mode, where the entry point built it."""
    check_entry_name(entry)
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
