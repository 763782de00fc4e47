"""The ``ptm`` group itself: its commands, each imported from its module on first use.

A one-file ``ptm classify`` through a warm server should not pay for
``ptm batch``'s imports, and ``ptm --help`` should stay instant.
"""

from __future__ import annotations

import importlib

import click

from ..version import __version__
from .common import CONTEXT

# Each command's module in this package, imported only when that command runs (or help lists them all).
_LAZY = {
    "classify": "cmd_classify",
    "translate": "cmd_translate",
    "zebra": "cmd_translate",
    "batch": "cmd_batch",
    "models": "cmd_models",
    "weights": "cmd_weights",
    "hub": "cmd_hub",
    "doctor": "cmd_doctor",
    "serve": "cmd_serve",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported from their modules on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = _LAZY.get(name)
        if module is None:
            return super().get_command(ctx, name)
        command = getattr(importlib.import_module(f".{module}", __package__), name)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="ptm")
def cli() -> None:
    """Run pretrained PyTorch image models on your own pictures.

    Results go to stdout (a table on a terminal, JSON Lines in a pipe);
    progress and messages go to stderr. Exit codes: 0 all done, 1 some
    inputs failed, 2 usage/configuration/weights error, 130 interrupted,
    141 the reader of stdout went away.
    """
