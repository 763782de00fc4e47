"""Every environment variable ptm reads, and the few tunables tests adjust.

This is the only module that reads ``os.environ`` for ptm's own settings.
Each variable is read when its value is asked for (so a test or a long-lived
process that changes the environment is seen), through one of three rules:

* flags (``PTM_OFFLINE``, ``PTM_DEBUG``): ``1/true/yes/on`` or ``0/false/no/off``
  (any case) or empty; anything else is a :class:`ConfigError` naming the
  variable and what to set it to;
* positive numbers (``PTM_MAX_PIXELS``, ``PTM_DOWNLOAD_TIMEOUT``,
  ``PTM_DOWNLOAD_RETRIES``, the server's seconds): empty means the default;
  anything that is not a number between 1 (or just above 0 for seconds) and
  the variable's documented maximum is a :class:`ConfigError`;
* text (paths and URLs): empty means unset;
* names (``PTM_EXTRA_FORMATS``): words separated by commas or blanks, any
  case; empty means none.

:data:`VARIABLES` lists them for ``ptm doctor`` and the docs test.

:data:`tuning` holds internal knobs (chunk sizes, backoff, lock notices) as
attributes of one object, read at the moment they are used: a test that
changes ``settings.tuning.backoff_base`` changes it for every module, and a
misspelt name fails loudly instead of patching nothing.

Importing this module imports nothing beyond the standard library.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

from .errors import ConfigError, UsageError

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})

DEFAULT_MAX_PIXELS = 2 * 89_478_485
"""Twice Pillow's default ``MAX_IMAGE_PIXELS``: where Pillow itself refuses to open an image."""
MAX_PIXELS_LIMIT = 1 << 31
"""The highest ``PTM_MAX_PIXELS`` accepted: Pillow and torch index an image's pixels with 32-bit numbers."""
MAX_SIDE = 16_384
"""The largest side ``--resize``, ``--crop``, ``--size`` and ``--tile`` accept (under ``PTM_MAX_PIXELS`` as well)."""
MAX_TIMEOUT = 86_400.0  # a day: PTM_DOWNLOAD_TIMEOUT
MAX_ATTEMPTS = 100  # PTM_DOWNLOAD_RETRIES
MAX_SERVE_SECONDS = 365 * 86_400.0  # a year: PTM_SERVE_IDLE_TIMEOUT, PTM_SERVE_KEEP_ALIVE
DEFAULT_TIMEOUT = 30.0
DEFAULT_ATTEMPTS = 3
DEFAULT_IDLE = 900
DEFAULT_KEEP_ALIVE = 300
SERVER_MODES = ("auto", "never")
# --precision's choices; here (not in device) so that the warm client's quick path reads them cheaply.
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
# libgomp, torch's OpenMP on Linux, lets a thread that has finished its share of a parallel region
# spin 300,000 rounds (about 5 ms on a 2-core EPYC) before it sleeps. Between two forward passes
# that is a core taken from the threads decoding the next batch; inside a forward pass the waits
# are far shorter than the 30,000 rounds (about 0.5 ms) the ptm command asks for instead.
OPENMP_SPIN_COUNT = 30_000


class Variable(NamedTuple):
    name: str
    kind: str  # "flag", "number", "path", "url", "paths", "names", "secret"
    meaning: str


VARIABLES: tuple[Variable, ...] = (
    Variable("PTM_CACHE_DIR", "path", "folder for weights files (default: $TORCH_HOME/hub/checkpoints)"),
    Variable("PTM_CATALOG", "paths", "extra catalog files (TOML), separated by ':'"),
    Variable("PTM_OFFLINE", "flag", "never use the network; only cached or imported weights"),
    Variable("PTM_WEIGHTS_MIRROR", "url", "fetch weights files from MIRROR/FILE_NAME (http(s):// or file://)"),
    Variable("PTM_DOWNLOAD_TIMEOUT", "number", "seconds a download may stall (default 30)"),
    Variable("PTM_DOWNLOAD_RETRIES", "number", "tries per download in all (default 3)"),
    Variable("PTM_MAX_PIXELS", "number", f"largest image accepted, in pixels (default {DEFAULT_MAX_PIXELS:,})"),
    Variable("PTM_EXTRA_FORMATS", "names", "more of Pillow's image formats to open, e.g. TGA,PCX, or all"),
    Variable("PTM_DEBUG", "flag", "print tracebacks for errors"),
    Variable("PTM_SERVER", "choice", "auto: classify/translate through a warm `ptm serve` server; never (default)"),
    Variable("PTM_SERVE_IDLE_TIMEOUT", "number", f"idle seconds before a server exits (default {DEFAULT_IDLE})"),
    Variable("PTM_SERVE_KEEP_ALIVE", "number", f"seconds an unused model stays loaded (default {DEFAULT_KEEP_ALIVE})"),
    Variable("XDG_RUNTIME_DIR", "path", "the per-user folder for the server's socket (else a private folder in /tmp)"),
    Variable("TORCH_HOME", "path", "torch's folder, shared with torch.hub (default $XDG_CACHE_HOME/torch)"),
    Variable("XDG_CACHE_HOME", "path", "base of the default TORCH_HOME (default ~/.cache)"),
    Variable("GITHUB_TOKEN", "secret", "token torch.hub sends to GitHub (raises its rate limit)"),
    Variable("HTTPS_PROXY", "url", "proxy for downloads (Python's usual proxy variables)"),
    Variable("PYSPARK_PYTHON", "path", "Python that Spark runs `ptm batch` workers with (local Spark: ptm's own)"),
    Variable(
        "GOMP_SPINCOUNT",
        "number",
        "rounds an idle OpenMP thread of torch's spins before it sleeps "
        f"(the ptm command sets {OPENMP_SPIN_COUNT:,} unless this or OMP_WAIT_POLICY is set)",
    ),
)


def raw(name: str) -> str:
    """The variable's value with surrounding blanks removed ('' when unset)."""
    return os.environ.get(name, "").strip()


def flag(name: str) -> bool:
    value = raw(name).lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={os.environ[name]!r} is not understood; set it to 1 or 0 (or unset it)")


def positive_int(name: str, default: int, maximum: int) -> int:
    value = raw(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= maximum:
        raise ConfigError(
            f"{name}={value!r} is not valid; set it to a whole number from 1 to {maximum:,} (or unset it)"
        )
    return number


def positive_float(name: str, default: float, maximum: float) -> float:
    value = raw(name)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not 0 < number <= maximum:  # also refuses nan and inf
        raise ConfigError(
            f"{name}={value!r} is not valid; set it to a number of seconds above 0 and at most {maximum:,g} "
            "(or unset it)"
        )
    return number


# --- the variables ---------------------------------------------------------------------------


def debug() -> bool:
    """``PTM_DEBUG``: show tracebacks."""
    return flag("PTM_DEBUG")


def offline() -> bool:
    """``PTM_OFFLINE``: never download."""
    return flag("PTM_OFFLINE")


def max_pixels() -> int:
    """``PTM_MAX_PIXELS``: the decompression-bomb limit, checked against image headers."""
    return positive_int("PTM_MAX_PIXELS", DEFAULT_MAX_PIXELS, MAX_PIXELS_LIMIT)


def download_timeout() -> float:
    """``PTM_DOWNLOAD_TIMEOUT``: seconds a download may go without receiving a byte."""
    return positive_float("PTM_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT, MAX_TIMEOUT)


def download_attempts() -> int:
    """``PTM_DOWNLOAD_RETRIES``: how many times a download is tried in all."""
    return positive_int("PTM_DOWNLOAD_RETRIES", DEFAULT_ATTEMPTS, MAX_ATTEMPTS)


def extra_formats() -> frozenset[str]:
    """``PTM_EXTRA_FORMATS``: Pillow format names (upper case) to open beyond the default list; ``ALL`` for all.

    Only the spelling is checked here; whether Pillow has such a format is
    decided where images are opened.
    """
    value = raw("PTM_EXTRA_FORMATS")
    names = frozenset(name.upper() for name in value.replace(",", " ").split())
    bad = sorted(name for name in names if not name.replace("_", "").isalnum())
    if bad:
        raise ConfigError(
            f"PTM_EXTRA_FORMATS={value!r} is not understood ({bad[0]!r}); "
            "set it to Pillow format names separated by commas, such as TGA,PCX, or to all"
        )
    return names


def weights_mirror() -> str | None:
    """``PTM_WEIGHTS_MIRROR``, without a trailing slash; None when unset."""
    return raw("PTM_WEIGHTS_MIRROR").rstrip("/") or None


def catalog_paths() -> list[Path]:
    """The user catalog files named by ``PTM_CATALOG``."""
    return [Path(p).expanduser() for p in raw("PTM_CATALOG").split(os.pathsep) if p.strip()]


def github_token_set() -> bool:
    return bool(raw("GITHUB_TOKEN"))


def spark_python() -> str | None:
    """``PYSPARK_PYTHON`` when set: the Python Spark starts its workers with."""
    return raw("PYSPARK_PYTHON") or None


def torch_home() -> Path:
    """``$TORCH_HOME``, by the same rule as ``torch.hub._get_torch_home`` (without importing torch)."""
    default = os.path.join(raw("XDG_CACHE_HOME") or "~/.cache", "torch")
    return Path(os.path.expanduser(raw("TORCH_HOME") or default))


def cache_dir() -> Path:
    """The weights cache: ``PTM_CACHE_DIR``, else torch's checkpoint folder (created only when written)."""
    override = raw("PTM_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    return torch_home() / "hub" / "checkpoints"


def server_mode() -> str:
    """``PTM_SERVER``: ``auto`` (use or start a warm server) or ``never`` (the default)."""
    value = raw("PTM_SERVER").lower() or "never"
    if value not in SERVER_MODES:
        raise ConfigError(f"PTM_SERVER={os.environ['PTM_SERVER']!r} is not understood; set it to auto or never")
    return value


def serve_idle_timeout() -> float:
    """``PTM_SERVE_IDLE_TIMEOUT``: seconds without a request after which a server exits."""
    return positive_float("PTM_SERVE_IDLE_TIMEOUT", DEFAULT_IDLE, MAX_SERVE_SECONDS)


def serve_keep_alive() -> float:
    """``PTM_SERVE_KEEP_ALIVE``: seconds a server keeps a model nobody used."""
    return positive_float("PTM_SERVE_KEEP_ALIVE", DEFAULT_KEEP_ALIVE, MAX_SERVE_SECONDS)


def completing() -> bool:
    """Whether click was asked for shell completions (``_PTM_COMPLETE``, set by the shell's completion script)."""
    return bool(os.environ.get("_PTM_COMPLETE"))


def runtime_dir() -> Path:
    """The folder for the server's socket: ``$XDG_RUNTIME_DIR/ptm``, else ``ptm-UID`` in the temp folder."""
    base = raw("XDG_RUNTIME_DIR")
    if base and os.path.isabs(base):
        return Path(base) / "ptm"
    import tempfile

    return Path(tempfile.gettempdir()) / f"ptm-{os.getuid()}"


# What a warm server must share with its client for its answers to be the client's own: the
# variables that choose weights, catalogs, formats, limits and devices, and those that change how
# output looks on a terminal (rich and click read them). Not PTM_DEBUG (a client with it set runs
# its command itself, for the traceback) nor the server's own settings.
_RESULT_VARIABLES = (
    "PTM_CACHE_DIR",
    "PTM_CATALOG",
    "PTM_OFFLINE",
    "PTM_WEIGHTS_MIRROR",
    "PTM_DOWNLOAD_TIMEOUT",
    "PTM_DOWNLOAD_RETRIES",
    "PTM_MAX_PIXELS",
    "PTM_EXTRA_FORMATS",
    "TORCH_HOME",
    "XDG_CACHE_HOME",
    "HOME",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "GITHUB_TOKEN",
    "CUDA_VISIBLE_DEVICES",
    "TMPDIR",
    "TERM",
    "COLORTERM",
    "NO_COLOR",
    "FORCE_COLOR",
    "TTY_COMPATIBLE",
    "TTY_INTERACTIVE",
    "CLICOLOR",
    "CLICOLOR_FORCE",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "PYTHONIOENCODING",
)


def result_environment() -> dict[str, str]:
    """The values of the variables that can change a result (unset ones left out)."""
    return {name: os.environ[name] for name in _RESULT_VARIABLES if name in os.environ}


def check_side_pixels(option: str, side: int) -> None:
    """Refuse a square side (``--crop``, ``--resize``, ``--size``, ``--tile``) past ``PTM_MAX_PIXELS`` or MAX_SIDE.

    The same limit that keeps decompression bombs out bounds what an option
    may make ptm allocate: ``--crop 20000`` would be 400 million pixels.
    """
    limit = max_pixels()
    largest = min(math.isqrt(limit), MAX_SIDE)
    if side * side > limit:
        raise UsageError(
            f"{option} {side} means {side * side:,} pixels, more than PTM_MAX_PIXELS ({limit:,}); "
            f"use at most {largest}" + (", or raise PTM_MAX_PIXELS" if largest < MAX_SIDE else "")
        )
    if side > MAX_SIDE:  # reached only with a raised PTM_MAX_PIXELS
        raise UsageError(f"{option} {side} is more than ptm's largest side; use at most {MAX_SIDE}")


def check_all() -> list[str]:
    """One message per variable whose value is not understood (for ``ptm doctor``)."""
    problems = []
    for check in (
        debug,
        offline,
        max_pixels,
        download_timeout,
        download_attempts,
        extra_formats,
        server_mode,
        serve_idle_timeout,
        serve_keep_alive,
    ):
        try:
            check()
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


# --- tunables ------------------------------------------------------------------------------------


class Tuning:
    """Internal knobs; tests set them on :data:`tuning`, code reads them when it acts.

    The defaults are class attributes, so a misspelt knob fails to read. (A
    plain class rather than a dataclass: every ptm process imports this
    module, the warm server's clients included, and dataclasses costs the
    import of ``inspect``.)
    """

    chunk_size: int = 1 << 20  # bytes per read when downloading, hashing or copying
    backoff_base: float = 0.5  # a retry waits min(backoff_cap, backoff_base * 2**(n-1)) s
    backoff_cap: float = 8.0
    lock_wait_notice: float = 1.0  # a wait for another process's lock is announced after this long
    locking: bool = True  # False shows that concurrent downloads stay correct without locks
    max_stream_bytes: int = 1 << 30  # the most stdin or a pipe may send for one image
    serve_max_message: int = 64 << 20  # the largest JSON message a server or client accepts
    serve_start_wait: float = 120.0  # how long `ptm serve start` waits for a new server to answer
    serve_interrupt_wait: float = 10.0  # how long a client's Ctrl-C waits for the server to stop its command
    # A download must average this many bytes a second over each PTM_DOWNLOAD_TIMEOUT window.
    download_min_rate: float = 1024.0
    # A download may be this many times its catalog size_mb (plus download_size_slack) at most...
    download_size_factor: float = 2.0
    download_size_slack: int = 1 << 20
    # ...and this large when the catalog gives no size.
    max_download_bytes: int = 16 << 30
    max_list_bytes: int = 64 << 20  # a --files-from FILE (stdin is streamed, line by line)
    max_labels_bytes: int = 16 << 20  # a labels file
    max_line_bytes: int = 4096  # one path or label (PATH_MAX)
    # Memory a translation may give one forward pass before it is tiled (`--size full` without --tile):
    # with torch itself and the reused heap, a 1.2-megapixel photo then peaks near 1.9 GiB.
    translate_memory: int = 1280 << 20
    # While a model runs, large blocks come from glibc's heap and this much freed memory stays mapped
    # (see ptm_cli.runtime.tuning): a forward pass then reuses its pages instead of faulting in fresh ones.
    reuse_heap: bool = True
    heap_keep: int = 1 << 30
    # ...and a warm server idle this many seconds gives back what the last run kept (tuning.release).
    heap_release_idle: float = 10.0


tuning = Tuning()
