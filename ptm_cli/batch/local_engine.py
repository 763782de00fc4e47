"""``--engine local``: the shards one after another in this process, with one model for all of them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import UsageError
from .job import Shard, Spec
from .worker import forget_model, run_shard_to_file


def run(spec: Spec, shards: list[Shard], *, address: str | None = None) -> Iterator[dict[str, Any]]:
    if address:
        raise UsageError("--address names a Ray cluster or a Spark master; use it with --engine ray or spark")
    try:
        for shard in shards:
            yield run_shard_to_file(spec, shard)
    finally:
        forget_model()
