"""What the bench scripts share: running one measurement in its own Python process, and naming the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def run_python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    """The last line ``python -c code args...`` prints, run from the project root; its stderr if it fails."""
    out = subprocess.run(
        [PYTHON, "-c", code, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    if out.returncode != 0:
        raise RuntimeError(f"a benchmark process exited {out.returncode}: {out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def run_json(code: str, *args: str) -> dict[str, Any]:
    """The JSON object a measurement process prints last."""
    result: dict[str, Any] = json.loads(run_python(code, *args))
    return result


def cpu_model() -> str:
    """The CPU's model name, as `ptm doctor` reports it."""
    from ptm_cli.doctor import cpu_report

    model = cpu_report()["model"]
    return model if isinstance(model, str) and model else "unknown CPU"
