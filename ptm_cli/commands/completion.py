"""Shell completion values from the catalog: model names for ``-m``, weights variants for ``-w``, class names.

Click's own completion protocol drives it (``_PTM_COMPLETE=bash_source ptm``);
these functions only read the catalog files, so completing imports no torch
and answers in a few hundredths of a second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from click.shell_completion import CompletionItem

_PATH_HINTS = ("/", ".", "~")


def _catalog() -> Any:
    from ..cache.catalog import Catalog

    return Catalog.load()


def models(task: str | None = None) -> Callable[[Any, Any, str], list[CompletionItem]]:
    """Completion for a model name (of one task, when given)."""

    def complete(ctx: Any, param: Any, incomplete: str) -> list[CompletionItem]:
        try:
            names = _catalog().models(task)
        except Exception:  # a broken user catalog must not break the shell
            return []
        lowered = incomplete.lower()
        return [CompletionItem(n) for n in names if n.lower().startswith(lowered)]

    return complete


def _chosen_model(ctx: Any) -> str:
    """The model the command line names so far: ``-m``, else the command's default, else its alias's model."""
    model = ctx.params.get("model") or ctx.params.get("name")
    if model:
        return str(model)
    for param in ctx.command.params:
        if param.name == "model" and isinstance(param.default, str):
            return param.default
    from .. import tasks

    found = tasks.find(ctx.command.name or "")
    if found is not None and found[1] is not None:
        return found[1].model  # ptm zebra: horse2zebra
    return "resnet101"


def weights(ctx: Any, param: Any, incomplete: str) -> list[CompletionItem]:
    """Completion for ``-w``: the chosen model's variants, or files once the word looks like a path."""
    if incomplete.startswith(_PATH_HINTS):
        return [CompletionItem(incomplete, type="file")]
    model = _chosen_model(ctx)
    try:
        variants = _catalog().variants(model)
    except Exception:  # a broken user catalog must not break the shell
        variants = []
    if not variants:
        return [CompletionItem(incomplete, type="file")]
    return [CompletionItem(v) for v in ["DEFAULT", *variants] if v.upper().startswith(incomplete.upper())]


def classes(ctx: Any, param: Any, incomplete: str) -> list[CompletionItem]:
    """Completion for ``--classes person,do``: the chosen model's class names, after the names already given."""
    from ..cache.naming import class_names

    done, _, last = incomplete.rpartition(",")
    prefix = f"{done}," if done else ""
    try:
        names = class_names(_chosen_model(ctx))
    except Exception:  # an unknown model or a broken catalog must not break the shell
        return []
    given = {name.lower() for name in done.split(",")}
    return [
        CompletionItem(prefix + name)
        for name in names
        if name.lower() not in given and name.lower().startswith(last.lower())
    ]
