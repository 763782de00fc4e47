"""Progress on stderr for long runs: images done of the total, images/s, elapsed, ETA, failures.

Shown only when stderr is a terminal and ``--quiet`` is not given; nothing
ever goes to stdout. The total is counted in a background thread (a folder of
a hundred thousand photos starts processing at once and the bar learns its
length when the walk is done); a stream of paths shows a running count.
Translation adds a tile bar for the image in progress under the same display.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..runtime import streams
from .common import printable


def stderr_is_terminal() -> bool:
    try:
        return bool(streams.stderr().isatty())
    except (AttributeError, ValueError):
        return False


class RunProgress:
    """A context manager; every method is a no-op when the display is off."""

    def __init__(self, *, quiet: bool = False, what: str = "images") -> None:
        # Kept here: decoding threads report through it, and they have the process's streams, not the command's.
        self.stderr = streams.stderr()
        self.enabled = not quiet and stderr_is_terminal()
        self.what = what
        self._bar: Any = None
        self._files: Any = None
        self._tiles: Any = None
        self.failed = 0

    def __enter__(self) -> RunProgress:
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            TextColumn("{task.fields[failures]}", style="red"),
            console=Console(file=self.stderr, width=streams.console_width()),
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
            refresh_per_second=4,  # cheap: the display never competes with the model for the cores
        )
        self._files = self._bar.add_task(self.what, total=None, **self._fields(0, None, None))
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def _fields(self, done: int, total: int | None, speed: float | None) -> dict[str, str]:
        count = f"{done}/{total}" if total is not None else f"{done}"
        unit = "frames" if self.what == "frames" else "img"
        rate = f"{speed:.1f} {unit}/s" if speed else ""
        eta = ""
        if speed and total is not None and total > done:
            left = int((total - done) / speed)
            eta = f"ETA {left // 3600:d}:{left // 60 % 60:02d}:{left % 60:02d}"
        return {"count": count, "rate": rate, "eta": eta, "failures": ""}

    def note(self, message: str) -> None:
        """A message for people: above the bar while it is drawn, else a plain line on stderr (any thread)."""
        if self._bar is not None:
            self._bar.console.print(f"ptm: {message}", markup=False, highlight=False)
            return
        self.stderr.write(f"ptm: {printable(message)}\n")
        self.stderr.flush()

    def count_in_background(self, count: Callable[[], int | None]) -> None:
        """Learn the total from ``count()`` in a daemon thread (a folder walk), when the display is on."""
        if not self.enabled:
            return

        def work() -> None:
            try:
                total = count()
            except Exception:  # the total is a nicety; the run reports real errors itself
                return
            if total is not None and self._bar is not None:
                self._bar.update(self._files, total=total)

        import threading  # only with the display on: a one-file call through a server has none

        threading.Thread(target=work, name="ptm-count", daemon=True).start()

    def set_total(self, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._files, total=total, **self._fields(0, total, None))

    def advance_by(self, count: int, failed: int = 0) -> None:
        """``count`` more inputs done at once (a batch shard), ``failed`` of them with error records."""
        self._advance(count, failed)

    def advance(self, ok: bool = True) -> None:
        self._advance(1, 0 if ok else 1)

    def _advance(self, count: int, failed: int) -> None:
        self.failed += failed
        if self._bar is None:
            return
        self._bar.advance(self._files, count)
        task = self._bar.tasks[self._files]
        total = int(task.total) if task.total is not None else None
        fields = self._fields(int(task.completed), total, task.speed)
        fields["failures"] = f"{self.failed} failed" if self.failed else ""
        self._bar.update(self._files, **fields)
        if self._tiles is not None:
            self._bar.remove_task(self._tiles)
            self._tiles = None

    def tiles(self, done: int, total: int) -> None:
        if self._bar is None:
            return
        if self._tiles is None:
            self._tiles = self._bar.add_task("tiles", total=total, **self._fields(0, total, None))
        self._bar.update(self._tiles, completed=done, total=total, count=f"{done}/{total}")
