"""Image vectors: ``ptm embed``, a vector per image from any catalog classifier or hub model, into an index.

A vector is what the classifier's head would have been given (see
:mod:`ptm_cli.nets.features`), L2-normalised unless ``--raw``. Without
``-o`` each record carries its vector (JSON Lines); with ``-o INDEX`` the
vectors go into an index file (:mod:`ptm_cli.vectors.indexfile`) and the
records say what happened to each input. ``--update`` re-embeds only new and
changed files (:mod:`._embed_index`). ``ptm similar`` and ``ptm dupes``
search an index (:mod:`._neighbours`). :data:`TASK` is ``ptm embed``.

Importing this module imports neither torch nor numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..errors import UsageError
from ._embedder import Embedder, Embedding, embed_images, planned_meta, to_record
from .base import WORKERS_OPTION, ModelOptions, Option, Outcome, Plan, RunContext, Task, batch_size_option
from .classify import CROP_OPTION, HUB_OPTIONS, RESIZE_OPTION, hub_plan

if TYPE_CHECKING:
    from ..images.inputs import ImageInput
    from ..output.records import RecordWriter

__all__ = ["TASK", "Embedder", "Embedding", "embed_images", "load_embedder", "to_record"]

DTYPES = ("float32", "float16")


def load_embedder(options: ModelOptions, *, raw: bool = False, progress: bool = True) -> Embedder:
    """A ready :class:`Embedder` for ``options``, exactly as ``ptm embed`` builds it."""
    embedder: Embedder = TASK.plan(options).load(progress=progress)
    embedder.normalise = not raw
    return embedder


class EmbedTask(Task[Embedder]):
    name = "embed"
    title = "Embedding"
    summary = "Vectors of IMAGES from a classifier's features, into an index for ptm similar and ptm dupes."
    help = """Turn IMAGES (files, directories, or - for stdin) into vectors: a classifier's features before its head.

    Vectors are L2-normalised (unless --raw), so the cosine of two images is
    the dot product of their vectors. With -o they go into an index file for
    `ptm similar` and `ptm dupes`; without, each record holds its vector.

    \b
    Examples:
      ptm embed -m resnet50 photos/ -o photos.parquet
      ptm embed -m resnet50 --update photos/ -o photos.parquet   # only new and changed files
      ptm embed -m resnet18 --dtype float16 photos/ -o photos.npy  # memory-mapped search, half the size
      ptm embed -m mobilenet_v3_small cat.jpg | jq '.vector | length'
    """
    batch_help = """Embed IMAGES into shard files under --output DIR; `ptm batch merge DIR -o INDEX` makes the index.

    \b
    Examples:
      ptm batch embed -m resnet50 -r photos/ --output run1 --engine ray
      ptm batch merge run1 -o photos.parquet
    """
    default_model = "resnet50"
    catalog_task = "classify"
    model_help = "Classifier whose features to take (see `ptm models`), or hub:OWNER/NAME[:REF]/ENTRY."
    weights_help = "Weights variant (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT), or the path of a local weights file."
    options = (
        Option(
            "output",
            ("-o", "--output"),
            "Index file to write: INDEX.parquet, or INDEX.npy with INDEX.rows.parquet beside it.",
            metavar="INDEX",
            batch=(),
            records=False,
        ),
        Option(
            "update",
            ("--update",),
            "Update -o INDEX: embed only new and changed files, drop rows of files that are gone.",
            kind="flag",
            batch=(),
            records=False,
        ),
        Option("raw", ("--raw",), "Keep the vectors as the network gives them (not L2-normalised).", kind="flag"),
        Option(
            "dtype",
            ("--dtype",),
            "Numbers stored in the index: float32, or float16 (half the size). Default: float32, or the index's.",
            kind="choice",
            choices=DTYPES,
        ),
        Option(
            "force",
            ("--force",),
            "Replace an existing -o INDEX (and a --report FILE that is not a results page).",
            kind="flag",
            batch=(),
            records=False,
        ),
        batch_size_option(8, 1024, "Images per forward pass (vectors are bit-identical at one batch size)."),
        WORKERS_OPTION,
        RESIZE_OPTION,
        CROP_OPTION,
        *HUB_OPTIONS,
    )
    hub_models = True
    flush_every = "batch_size"
    columns = ("input", "model", "weights", "dimension", "sha256", "bytes", "mtime_ns", "vector", "error")

    # -- options and plans

    def refuses_videos(self, params: Mapping[str, Any]) -> str | None:
        if params.get("output") is not None:
            return "an index file holds images; without -o, ptm embed writes each frame's vector as a record"
        return None

    def check(self, params: Mapping[str, Any]) -> None:
        output = params.get("output")
        if output is None:
            if params.get("update"):
                raise UsageError("--update needs the index to update: -o INDEX")
            return
        from ..vectors.indexfile import check_target

        check_target(
            Path(output),
            replace=bool(params.get("update") or params.get("force")),
            hint="add --update to bring it up to date, or --force to replace it",
        )

    def check_plan(self, plan: Plan[Embedder], params: Mapping[str, Any]) -> None:
        """A video classifier, and an --update of an index made another way, are refused before the model loads."""
        if plan.entry is not None and plan.entry.is_video:
            raise UsageError(f"{plan.entry.ref} labels clips of video; ptm embed takes the image classifiers")
        if not (params.get("update") and params.get("output") and Path(params["output"]).exists()):
            return
        from ..vectors.indexfile import read_meta

        path = Path(params["output"])
        stored = read_meta(path)
        dtype = params.get("dtype") or stored.dtype
        if dtype != stored.dtype:
            raise UsageError(f"{path} stores {stored.dtype}; --update keeps it (drop --dtype, or write a new index)")
        wanted = planned_meta(plan, raw=bool(params.get("raw")), dtype=dtype)
        stored.check_matches(replace(wanted, dimension=stored.dimension), what="this command", path=path)

    def plan_hub(self, options: ModelOptions) -> Plan[Embedder]:
        return hub_plan(self, options)

    def servable(self, params: Mapping[str, Any], options: ModelOptions) -> bool:
        # The index file is this command's to write, in its own folder.
        return not (options.is_hub or params.get("output"))

    # -- the model

    def build(self, plan: Plan[Embedder], *, progress: bool) -> Embedder:
        from .classify import TASK as CLASSIFY

        classifier = CLASSIFY.build(plan, progress=progress)  # type: ignore[arg-type]  # a classify entry's plan
        embedder = Embedder(classifier)
        if plan.entry is None:
            embedder.hub_args = tuple(plan.options.hub_args)
        return embedder

    def prepare(self, model: Embedder, params: Mapping[str, Any]) -> None:
        model.normalise = not params.get("raw")

    # -- running

    def run(
        self, model: Embedder, inputs: Iterable[ImageInput], params: Mapping[str, Any], context: RunContext
    ) -> Iterator[Outcome]:
        model.normalise = not params.get("raw")
        on_image = context.on_image
        options = {
            "batch_size": params.get("batch_size", 8),
            "workers": params.get("workers", 2),
            "on_image": None if on_image is None else lambda item, image: on_image(item.name, image),
            "on_note": context.on_note,
        }
        dtype = params.get("dtype") or "float32"
        if params.get("output") is None:
            results = embed_images(inputs, model, **options)
            try:
                for result in results:
                    yield Outcome(to_record(result, model, dtype=dtype))
            finally:
                results.close()
            return
        from ._embed_index import write_index

        yield from write_index(
            Path(params["output"]),
            model,
            list(inputs),
            update=bool(params.get("update")),
            dtype=params.get("dtype"),
            replace=bool(params.get("update") or params.get("force")),
            run=lambda items: embed_images(items, model, **options),
            on_note=context.on_note,
        )

    # -- records

    def writer(self, stream: IO[str], fmt: str | None) -> RecordWriter:
        """On a terminal, the first numbers of each vector; in csv/tsv, the whole vector in one cell."""
        from ..output.records import RecordWriter, default_format

        chosen = fmt or default_format(stream)

        def rows(record: dict[str, Any]) -> list[dict[str, Any]]:
            row = dict(record)
            if "error" in row:
                row["error"] = f"{row['error']['type']}: {row['error']['message']}"
            vector = row.get("vector")
            if vector is not None:
                if chosen == "table":
                    row["vector"] = " ".join(f"{v:+.3f}" for v in vector[:4]) + (" ..." if len(vector) > 4 else "")
                else:
                    row["vector"] = " ".join(repr(v) for v in vector)
            return [row]

        if chosen == "table":
            return RecordWriter(
                stream,
                chosen,
                columns=["input", "dimension", "sha256", "vector", "unchanged", "error"],
                flatten=rows,
                table_style=lambda row: "red" if row.get("error") else None,
                optional=["vector", "unchanged", "error"],
            )
        return RecordWriter(stream, chosen, columns=[*self.columns, "unchanged"], flatten=rows)

    def parquet_fields(self) -> list[tuple[str, Any]]:
        import pyarrow as pa

        return [
            ("input", pa.string()),
            ("model", pa.string()),
            ("weights", pa.string()),
            ("dimension", pa.int32()),
            ("sha256", pa.string()),
            ("bytes", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("vector", pa.list_(pa.float32())),
            ("unchanged", pa.bool_()),
        ]

    def collect(self, records: Any, path: Path, job: Mapping[str, Any], *, force: bool) -> str:
        """A finished ``ptm batch embed`` job's records as one index at ``path`` (``ptm batch merge -o``)."""
        from ._embed_index import index_from_records

        return index_from_records(records, path, job, replace=force)

    # -- the results page

    def report_header(self, model: Embedder, params: Mapping[str, Any]) -> dict[str, Any]:
        p = model.preprocess
        return {
            **super().report_header(model, params),
            "preprocessing": ", ".join(
                x for x in (f"resize {p.resize}" if p.resize else "", f"crop {p.crop}" if p.crop else "") if x
            ),
            "vector": f"{model.dimension} numbers, {'raw' if params.get('raw') else 'unit length'}",
            "index": params.get("output") or "",
        }

    def report_view(self, record: Mapping[str, Any]) -> dict[str, Any]:
        lines = [f"{record.get('dimension')} numbers", f"sha256 {str(record.get('sha256', ''))[:16]}"]
        if record.get("unchanged"):
            lines.append("unchanged since the index was written")
        return {"lines": lines}


TASK = EmbedTask()
