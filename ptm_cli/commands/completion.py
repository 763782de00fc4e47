"""Shell completion values from the catalog: model names for ``-m``, weights variants for ``-w``.

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


def weights(ctx: Any, param: Any, incomplete: str) -> list[CompletionItem]:
    """Completion for ``-w``: the chosen model's variants, or files once the word looks like a path."""
    if incomplete.startswith(_PATH_HINTS):
        return [CompletionItem(incomplete, type="file")]
    model = ctx.params.get("model") or ctx.params.get("name") or "resnet101"
    try:
        variants = _catalog().variants(str(model))
    except Exception:  # a broken user catalog must not break the shell
        variants = []
    if not variants:
        return [CompletionItem(incomplete, type="file")]
    return [CompletionItem(v) for v in ["DEFAULT", *variants] if v.upper().startswith(incomplete.upper())]
