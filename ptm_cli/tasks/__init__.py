"""What ptm does with a model: one module per task, found here by name.

A task module is a public module of this package that defines ``TASK`` (see
:class:`~ptm_cli.tasks.base.Task`); modules whose names start with ``_``,
and :mod:`.base`, are the tasks' shared parts. Adding a task is adding its
module (and its catalog entries): the command line, ``ptm batch``,
``ptm serve`` and the results page find it here.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from .base import Alias, Task

_NOT_TASKS = frozenset({"base"})


@functools.cache
def registry() -> dict[str, Task[Any]]:
    """Every task by its name, in the order of their module names."""
    found: dict[str, Task[Any]] = {}
    for module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
        if module.startswith("_") or module in _NOT_TASKS:
            continue
        task = getattr(importlib.import_module(f".{module}", __name__), "TASK", None)
        if task is not None:
            found[task.name] = task
    return found


def names() -> list[str]:
    return list(registry())


def get(name: str) -> Task[Any]:
    """The task called ``name``; UsageError naming the tasks there are."""
    task = registry().get(name)
    if task is None:
        raise UsageError(f"there is no task {name!r}; ptm runs {', '.join(names())}")
    return task


def aliases() -> dict[str, tuple[Task[Any], Alias]]:
    """Other command names for tasks with a fixed model (``zebra``), with their task."""
    return {alias.name: (task, alias) for task in registry().values() for alias in task.aliases}


def find(command: str) -> tuple[Task[Any], Alias | None] | None:
    """The task a command name runs (a task's own name or an alias), or None."""
    task = registry().get(command)
    if task is not None:
        return task, None
    return aliases().get(command)
