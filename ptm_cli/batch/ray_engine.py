"""``--engine ray``: shards as the rows of a Ray Dataset, run by a pool of actors that each load the model once.

The rows are built from the manifest with ``from_items`` and the actors open
the images by path with ptm's own decoder: ``read_images`` would fail the
whole job on one empty file and skip WebP, where ptm gives each bad file its
own error record. One row is one shard; an actor writes the shard's file
itself (atomically) and returns a small status row, so a retried or lost
task never leaves half a shard, and ``--resume`` knows exactly what is done.

Without ``--address`` (or ``RAY_ADDRESS``) Ray starts a cluster on this
machine for the run; ``ray.shutdown()`` runs in a ``finally``, so Ctrl-C or
an error never leaves worker processes behind. A Ray session that is already
initialised in this process is used as it is and left running.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigError, MissingDependency, first_line
from .job import Shard, Spec
from .worker import run_shard_to_file

MAX_TRIES = 2  # restarts of a lost actor, and retries of its shard


class ShardRunner:
    """A Ray actor: one model for every shard it is given (``map_batches`` with ``batch_size=1``)."""

    def __init__(self, spec: Spec):
        self.spec = spec

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        statuses = [
            run_shard_to_file(self.spec, Shard(int(index), int(start), tuple(json.loads(str(names)))))
            for index, start, names in zip(batch["shard"], batch["start"], batch["names"], strict=True)
        ]
        return {key: [status[key] for status in statuses] for key in statuses[0]} if statuses else {}


def require() -> None:
    """MissingDependency, saying what to install, when the engine's package is not importable."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")
            import ray.data  # noqa: F401
    except ImportError:
        raise MissingDependency("--engine ray needs Ray Data: pip install 'ptm[ray]'") from None


def run(spec: Spec, shards: list[Shard], *, address: str | None = None) -> Iterator[dict[str, Any]]:
    require()
    import ray
    import ray.data

    owned = not ray.is_initialized()
    with warnings.catch_warnings():
        # Ray Data warns about its own settings' deprecated names when it starts: nothing a ptm user can act on.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")
        # Ray Data takes actor retry limits only as extra keyword arguments, which it now calls deprecated.
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", DeprecationWarning)
        if owned:
            try:
                ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
                raise ConfigError(f"cannot start or reach {where}: {first_line(exc, 300)}") from None
        try:
            yield from _run_on_cluster(ray, spec, shards)
        finally:
            if owned:
                ray.shutdown()


def _run_on_cluster(ray: Any, spec: Spec, shards: list[Shard]) -> Iterator[dict[str, Any]]:
    from ray.data import ActorPoolStrategy

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    resources = ray.cluster_resources()
    on_gpu = spec.device.startswith("cuda")
    if on_gpu:
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise ConfigError("--device cuda on --engine ray needs GPUs in the Ray cluster, and it has none")
        actors = max(1, min(len(shards), gpus))
        per_actor: dict[str, float] = {"num_gpus": 1, "num_cpus": 1}
    else:
        cpus = max(1, int(resources.get("CPU", 1)))
        actors = max(1, min(len(shards), cpus))
        # Actors that ask for every CPU leave none for Ray Data's own tasks and can stall a small cluster
        # (two 1-CPU actors on 2 CPUs): each asks for a little under its share.
        per_actor = {"num_cpus": 0.9 * cpus / actors}
    if not on_gpu:  # Ray sets OMP_NUM_THREADS for an actor, but torch may have read it before; say it outright
        spec = dataclasses.replace(spec, threads=max(1, int(per_actor["num_cpus"])))
    rows = [{"shard": s.index, "start": s.start, "names": json.dumps(list(s.names))} for s in shards]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    options: dict[str, Any] = dict(
        fn_constructor_kwargs={"spec": spec},
        batch_size=1,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=actors),
        **per_actor,
    )
    try:
        # Ray retries a lost actor's work forever by default: an input that kills its worker every time (a
        # decoder crash, the OOM killer) would then hang the job. A few tries, then WorkerFailed records.
        statuses = dataset.map_batches(ShardRunner, max_restarts=MAX_TRIES, max_task_retries=MAX_TRIES, **options)
    except TypeError:  # a Ray that no longer takes them: its own retry policy applies
        statuses = dataset.map_batches(ShardRunner, **options)
    for row in statuses.iter_rows():
        yield {key: value.item() if hasattr(value, "item") else value for key, value in row.items()}
