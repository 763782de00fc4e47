"""The ``ptm`` group itself: a command per task, and the tool commands, each imported on first use.

A one-file ``ptm classify`` should not pay for ``ptm batch``'s imports, and
``ptm --help`` should stay instant. The task commands are made from the task
modules' declarations (:mod:`.cmd_tasks`); the others live in their modules.
"""

from __future__ import annotations

import importlib

import click

from ..version import __version__
from .common import CONTEXT

# The tool commands, each in its module of this package (imported only when that command runs).
_LAZY = {
    "batch": "cmd_batch",
    "models": "cmd_models",
    "weights": "cmd_weights",
    "hub": "cmd_hub",
    "doctor": "cmd_doctor",
    "serve": "cmd_serve",
    "similar": "cmd_vectors",
    "dupes": "cmd_vectors",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported from their modules on first use; every task is one."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from .. import tasks

        return sorted({*super().list_commands(ctx), *_LAZY, *tasks.names(), *tasks.aliases()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = _LAZY.get(name)
        if module is None:
            from .cmd_tasks import command

            return command(name) or super().get_command(ctx, name)
        command_ = getattr(importlib.import_module(f".{module}", __package__), name)
        assert isinstance(command_, click.Command)
        return command_


@click.group(cls=LazyGroup, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="ptm")
def cli() -> None:
    """Run pretrained PyTorch image models on your own pictures.

    Results go to stdout (a table on a terminal, JSON Lines in a pipe);
    progress and messages go to stderr. Exit codes: 0 all done, 1 some
    inputs failed, 2 usage/configuration/weights error, 130 interrupted,
    141 the reader of stdout went away.
    """
