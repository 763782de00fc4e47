"""Whether a torch.hub repository may run its code here, decided before any of it runs, never by a prompt.

* A local directory is trusted: the user pointed at it, as they would point
  ``python`` at a script, and torch.hub itself never asks for
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
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from ..errors import ConfigError, UsageError
from .repos import TRUST_FLAG, TRUSTED_OWNERS, HubRepo, as_repo, trusted_list_path, trusted_names

fcntl: ModuleType | None
try:  # POSIX only; without it two concurrent `ptm hub trust` may both append (harmless duplicate)
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None


def trusted_by(repo: HubRepo | str, *, trust_repo: bool = False) -> str | None:
    """Why ``repo`` may run its code here, in words; None when it may not."""
    hub_repo = as_repo(repo)
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
    hub_repo = as_repo(repo)
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


def authorize(repo: HubRepo, trust_repo: bool) -> str:
    """Decide before any repository code runs; never asks. Returns the reason it may run."""
    reason = trusted_by(repo)
    if reason is not None:
        return reason
    if not trust_repo:
        raise _untrusted(repo)
    trust(repo)
    return TRUST_FLAG
