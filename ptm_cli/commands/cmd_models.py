"""``ptm models``: what the catalog offers, without importing torch."""

from __future__ import annotations

import click

from .. import tasks
from ..errors import EXIT_OK
from .common import CONTEXT, stdout_is_data, writer
from .options import format_option


class _TaskChoice(click.Choice[str]):
    """The registered tasks' names, read when ``-t`` is checked, completed or shown (not when this module loads)."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(tasks.names())

    @choices.setter
    def choices(self, value: object) -> None:  # click's __init__ sets it; the registry decides
        pass


@click.command(context_settings=CONTEXT)
@click.option("-t", "--task", type=_TaskChoice(), help="Only models for this task.")
@format_option
def models(task: str | None, fmt: str | None) -> int:
    """List the models and weights ptm knows (without importing torch).

    \b
    Examples:
      ptm models
      ptm models -t classify -f csv | sort -t, -k7 -n
    """
    from ..cache.catalog import Catalog
    from ..cache.weights import is_cached

    catalog = Catalog.load()
    entries = catalog.entries(task)
    columns = ["model", "weights", "task", "default", "params", "size_mib", "acc1", "acc5", "cached"]
    # Task-specific accuracy, after the columns a script may already count on: COCO box and mask mAP,
    # and the semantic models' mean IoU on COCO's images with VOC's classes.
    extra = [key for key in ("box_map", "mask_map", "miou") if any(getattr(e, key) is not None for e in entries)]
    columns += extra
    with stdout_is_data() as out, writer(out, fmt, columns=columns) as records:
        for entry in entries:
            row = {
                "model": entry.model,
                "weights": entry.weights,
                "task": entry.task,
                "default": entry.is_default,
                "params": entry.num_params,
                "size_mib": entry.size_mb,
                "acc1": entry.acc1,
                "acc5": entry.acc5,
                "cached": is_cached(entry),
            }
            for key in extra:
                row[key] = getattr(entry, key)
            records.write(row)
    return EXIT_OK
