"""The errors ptm raises, and the exit code each one means.

Library code raises these; only ``cli.py`` turns them into messages and exit
codes. Every message is one sentence that says what went wrong and, where the
user can do something about it, what to do next.

Exit codes a script can rely on:

* 0 - everything asked for was done;
* 1 - some inputs failed (their records say why), the rest were done;
* 2 - usage, configuration, device or weights problem: nothing was done;
* 70 - a bug in ptm (an internal error; PTM_DEBUG=1 shows the traceback);
* 130 - interrupted (Ctrl-C);
* 141 - stdout's reader went away (``| head``), as a shell reports SIGPIPE.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INPUT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type's name when empty), cut to ``limit`` characters."""
    lines = str(exc).strip().splitlines()
    line = " ".join(lines[0].split()) if lines else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


class PtmError(Exception):
    """Base class of every error ptm reports to users."""

    exit_code = EXIT_USAGE

    @property
    def kind(self) -> str:
        """The name scripts see in error records (``UnreadableImage``...)."""
        return type(self).__name__

    def record(self) -> dict[str, str]:
        """The ``error`` field of a record: ``{"type": ..., "message": ...}``."""
        return {"type": self.kind, "message": str(self)}


# --- usage and configuration: exit 2 -------------------------------------


class UsageError(PtmError):
    """The command line asks for something that cannot work."""


class StdoutUnwritable(PtmError):
    """Writing to stdout failed (a full disk, ``> /dev/full``, an I/O error).

    Exit 2 when nothing reached stdout; 1 when some records did and the rest were lost.
    """

    def __init__(self, message: str, *, records_lost: bool = False):
        super().__init__(message)
        self.exit_code = EXIT_INPUT_FAILED if records_lost else EXIT_USAGE


class DeviceUnavailable(UsageError):
    """The requested device (cuda, mps, ...) is not present."""


class BadIndex(UsageError):
    """A vector index ptm cannot use: missing, not an index, damaged, or half of a pair gone."""


class ConfigError(PtmError):
    """A catalog file or environment variable is malformed."""


class UnknownModel(ConfigError):
    """No catalog entry has this model or weights name."""


class CompileFailed(ConfigError):
    """torch.compile could not compile the model (on CPU it needs a working C++ compiler)."""


class MissingDependency(ConfigError):
    """An optional package is needed for this feature."""


# --- weights: exit 2 -------------------------------------------------------


class WeightsError(PtmError):
    """Weights cannot be found, fetched, verified or loaded."""


class DownloadError(WeightsError):
    """A download failed (network, server, truncated body...)."""


class OfflineError(DownloadError):
    """A download is needed but ``PTM_OFFLINE=1`` forbids the network."""


class DamagedWeights(WeightsError):
    """A weights file's bytes are not a readable weights file (truncated, corrupt, another format)."""

    def __init__(self, message: str, *, path: object = None, detail: str = ""):
        super().__init__(message)
        self.path = path
        self.detail = detail


class HashMismatch(WeightsError):
    """A file's sha256 differs from the one the catalog (or a pin) expects."""


class UnsafeWeights(WeightsError):
    """A weights file needs full pickle (arbitrary code) to load."""


class IncompatibleWeights(WeightsError):
    """A weights file does not fit the model's architecture."""


# --- per-input failures: exit 1, the run goes on ---------------------------


class InputError(PtmError):
    """One input could not be processed; the others still are."""

    exit_code = EXIT_INPUT_FAILED


class InputNotFound(InputError):
    """The path does not exist or cannot be read."""


class UnreadableImage(InputError):
    """The bytes are not an image ptm can decode (empty, corrupt, truncated)."""


class UnsupportedFormat(InputError):
    """The image is in a format ptm does not open (PSD, SVG, ...)."""


class ImageTooLarge(InputError):
    """The image declares more pixels than the decompression-bomb limit."""


class OutputError(InputError):
    """The result for one input could not be written."""


class WorkerFailed(InputError):
    """No result came back for this input from a batch worker (a lost worker, a crash, a failed retry)."""


class NonFiniteOutput(InputError):
    """The model's output for one input holds NaN or infinity, so it has no probabilities to report."""
