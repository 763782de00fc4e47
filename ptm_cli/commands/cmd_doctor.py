"""``ptm doctor``: can ptm run here, and if not, why not."""

from __future__ import annotations

import click

from ..errors import EXIT_INPUT_FAILED, EXIT_OK
from .common import CONTEXT, note, stdout_is_data, writer
from .options import format_option


@click.command(context_settings=CONTEXT)
@format_option
def doctor(fmt: str | None) -> int:
    """Check that ptm can run here: Python, torch, devices, cache, settings.

    Exit 0 when ptm can run, 1 (with the reasons) when it cannot.

    \b
    Examples:
      ptm doctor
      ptm doctor -f json | jq .cuda
    """
    from ..doctor import collect, rows

    report = collect()
    with stdout_is_data() as out:
        if fmt == "json":
            import json

            out.write(json.dumps(report, indent=1) + "\n")
        else:
            with writer(out, fmt, columns=["section", "key", "value"]) as records:
                for row in rows(report):
                    records.write(row)
    for problem in report.get("problems") or []:
        note(f"problem: {problem}")
    return EXIT_OK if report.get("ok") else EXIT_INPUT_FAILED
