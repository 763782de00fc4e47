"""Naming torch.hub repositories: ``OWNER/NAME[:REF]`` on GitHub, or a local directory, and where torch.hub keeps them.

``OWNER/NAME[:REF]`` is a GitHub repository, always, even when the working
directory holds an ``OWNER/NAME`` folder (whose ``hubconf.py`` would otherwise
run without a trust check); a local directory holding a ``hubconf.py`` is
spelled as a path, starting with ``./``, ``../``, ``/`` or ``~``, or is an
existing folder whose name cannot be read as ``OWNER/NAME`` (see
:func:`parse_repo`). ``hub:REPO/ENTRY`` names one entry point as a model
(:func:`parse_model_spec`). The hub folder is ``$TORCH_HOME/hub``, or the one
``torch.hub.set_dir`` chose if torch is loaded; a repository at ``REF`` is
cached there as ``OWNER_NAME_REF`` (``/`` in REF becoming ``_``).

Importing this module does not import torch.
"""

from __future__ import annotations

import keyword
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from .. import settings
from ..errors import ConfigError, UsageError

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
COMMIT = re.compile(r"[0-9a-f]{7,40}")

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
    if _looks_like_path(text):
        return _local_repo(text, spec)
    match = _GITHUB.fullmatch(text)
    name = match.group("name") if match else ""
    ref = match.group("ref") if match else None
    if match is None or name in (".", "..") or (ref is not None and not _valid_ref(ref)):
        if _exists(text):  # a folder name that cannot be read as OWNER/NAME: no other reading
            return _local_repo(text, spec)
        raise UsageError(
            f"{spec!r} is not a hub repository; use OWNER/NAME or OWNER/NAME:REF (a GitHub repository, "
            "REF a tag, branch or commit) or a path like ./dir to a directory holding a hubconf.py"
        )
    return HubRepo("github", owner=match.group("owner"), name=name, ref=ref)


def as_repo(repo: HubRepo | str) -> HubRepo:
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
    return settings.torch_home() / "hub"


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


def check_entry_name(entry: str) -> None:
    if not entry.isidentifier() or keyword.iskeyword(entry):
        raise UsageError(f"{entry!r} is not an entry point name; `ptm hub list REPO` lists them")


def parse_model_spec(spec: str) -> tuple[HubRepo, str]:
    """``hub:OWNER/NAME[:REF]/ENTRY`` or ``hub:./dir/ENTRY`` -> (repository, entry point)."""
    text = spec.strip()
    if not text.startswith(MODEL_PREFIX):
        raise UsageError(f"{spec!r} is not a hub model; use hub:OWNER/NAME[:REF]/ENTRY or hub:./dir/ENTRY")
    repo_part, slash, entry = text[len(MODEL_PREFIX) :].rpartition("/")
    if not slash or not repo_part or not entry:
        raise UsageError(f"{spec!r} names no entry point; use hub:OWNER/NAME[:REF]/ENTRY or hub:./dir/ENTRY")
    check_entry_name(entry)
    return parse_repo(repo_part), entry
