"""``ptm similar`` and ``ptm dupes``: searching an index of vectors that ``ptm embed`` wrote.

The work is the library's (:mod:`ptm_cli.tasks._neighbours`); here the
options are parsed, records written and results pages put together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from .common import CONTEXT, image_inputs, note, outcome, stdout_is_data, writer
from .options import (
    device_option,
    format_option,
    precision_option,
    quiet_option,
    report_force_option,
    report_option,
    stack,
)
from .progress import RunProgress

_KINDS = ("hnsw", "ivf")

embedding_options = stack(
    click.option(
        "--batch-size",
        type=click.IntRange(1, 1024),
        default=8,
        show_default=True,
        help="Images per forward pass, for images embedded now.",
    ),
    click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="Image decoding threads."),
    device_option,
    precision_option,
)


@click.command("similar", context_settings=CONTEXT)
@click.argument("queries", nargs=-1, type=click.Path(allow_dash=True), metavar="QUERY...")
@click.option("-r", "--recursive", is_flag=True, help="Descend into sub-directories of QUERY folders.")
@click.option("--files-from", metavar="FILE", help="Read query paths, one per line, from FILE ('-' for stdin).")
@click.option("--index", "index_path", required=True, metavar="INDEX", help="The index `ptm embed -o` wrote.")
@click.option(
    "-k", "--top-k", type=click.IntRange(1, 10_000), default=10, show_default=True, help="Neighbours per query."
)
@click.option(
    "--approximate",
    is_flag=True,
    help="Search a faiss index (built beside INDEX once, then reused) instead of every vector; needs ptm[faiss].",
)
@click.option(
    "--ann",
    type=click.Choice(_KINDS),
    default="hnsw",
    show_default=True,
    help="The faiss index --approximate builds: hnsw (graph) or ivf (inverted lists).",
)
@click.option("-m", "--model", help="The model that made the index (the default); any other is refused.")
@click.option("-w", "--weights", help="The index's weights (the default), or the path of its local weights file here.")
@click.option("--trust-repo", is_flag=True, help="Run the index's hub: model's code without it being trusted first.")
@embedding_options
@format_option
@quiet_option
@report_option
@report_force_option
def similar(
    queries: tuple[str, ...],
    recursive: bool,
    files_from: str | None,
    index_path: str,
    top_k: int,
    approximate: bool,
    ann: str,
    model: str | None,
    weights: str | None,
    trust_repo: bool,
    batch_size: int,
    workers: int,
    device: str,
    precision: str,
    fmt: str | None,
    quiet: bool,
    report_path: str | None,
    force: bool,
) -> int:
    """Find the images of INDEX nearest to each QUERY: an image (embedded with the index's model) or an indexed path.

    \b
    Examples:
      ptm similar beach.jpg --index photos.parquet
      ptm similar photos/2019/IMG_0042.jpg --index photos.parquet -k 5 -f csv
      ptm similar query/ --index photos.npy --approximate --report similar.html
    """
    from ..tasks._neighbours import Runtime, SimilarView, picture
    from ..tasks._neighbours import similar as search
    from ..vectors.indexfile import open_index

    if report_path is not None:
        from ..output.report import check_destination

        check_destination(Path(report_path), force=force)
    index = open_index(Path(index_path))
    items = list(image_inputs(queries, recursive, files_from))
    report: Any = None
    if report_path is not None:
        from ..output.report import Report

        report = Report(
            SimilarView(),
            {
                "index": index_path,
                "model": index.meta.model,
                "vectors": index.meta.describe(),
                "rows": len(index),
                "search": f"approximate ({ann})" if approximate else "exact",
            },
        )
    count = failed = 0
    with stdout_is_data() as out, RunProgress(quiet=quiet) as progress:
        runtime = Runtime(
            model=model,
            weights=weights,
            device=device,
            precision=precision,
            batch_size=batch_size,
            workers=workers,
            trust_repo=trust_repo,
            on_note=progress.note,
            on_image=None if report is None else report.keep_thumbnail,
        )
        records = search(index, items, k=top_k, runtime=runtime, approximate=ann if approximate else None)
        with writer(
            out, fmt, columns=["query", "rank", "score", "path", "error"], flatten=_similar_rows, optional=["error"]
        ) as sink:
            for record in records:
                count += 1
                failed += "error" in record
                sink.write(record)
                if report is not None:
                    _add_similar(report, record, picture)
    if report is not None and report_path is not None:
        report.write(Path(report_path))
        note(f"wrote the report {report_path}")
    return outcome(count, failed)


def _similar_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    if "error" in record:
        error = record["error"]
        return [{"query": record["query"], "error": f"{error['type']}: {error['message']}"}]
    return [
        {"query": record["query"] if rank == 1 else "", "rank": rank, "score": n["score"], "path": n["path"]}
        for rank, n in enumerate(record["neighbours"], start=1)
    ]


def _add_similar(report: Any, record: dict[str, Any], picture: Any) -> None:
    query = record["query"]
    if "error" not in record and not report.has_thumbnail(query):
        image = picture(query)
        if image is not None:
            report.keep_thumbnail(query, image)
    for neighbour in record.get("neighbours") or []:
        if not report.has_picture(neighbour["path"]):
            image = picture(neighbour["path"])
            if image is not None:
                report.keep_picture(neighbour["path"], image)
    report.add({"input": query, **record})


@click.command("dupes", context_settings=CONTEXT)
@click.argument("images", nargs=-1, type=click.Path(allow_dash=True))
@click.option("-r", "--recursive", is_flag=True, help="Descend into sub-directories.")
@click.option("--files-from", metavar="FILE", help="Read image paths, one per line, from FILE ('-' for stdin).")
@click.option("--index", "index_path", metavar="INDEX", help="Group the images of this index (no model runs).")
@click.option(
    "--threshold",
    type=click.FloatRange(-1.0, 1.0),
    default=0.95,
    show_default=True,
    help="Cosine at or above which two pictures are near-duplicates.",
)
@click.option("-m", "--model", default="resnet50", show_default=True, help="Classifier whose features compare IMAGES.")
@click.option("-w", "--weights", default="DEFAULT", show_default=True, help="Weights variant, or a local file.")
@embedding_options
@format_option
@quiet_option
@report_option
@report_force_option
def dupes(
    images: tuple[str, ...],
    recursive: bool,
    files_from: str | None,
    index_path: str | None,
    threshold: float,
    model: str,
    weights: str,
    batch_size: int,
    workers: int,
    device: str,
    precision: str,
    fmt: str | None,
    quiet: bool,
    report_path: str | None,
    force: bool,
) -> int:
    """Group near-duplicate pictures: exact copies (same sha256), then pairs whose cosine is at least --threshold.

    Each group marks the picture with the most pixels (then the largest file)
    as the one to keep. Nothing is deleted or moved.

    \b
    Examples:
      ptm dupes --index photos.parquet --threshold 0.95
      ptm dupes -m resnet18 holiday/ -f csv > groups.csv
      ptm dupes --index photos.parquet --report dupes.html
    """
    from ..tasks import _neighbours as nb

    if (index_path is None) == (not images and files_from is None):
        raise UsageError("give either IMAGES (embedded now) or --index INDEX (vectors made earlier), not both")
    if report_path is not None:
        from ..output.report import check_destination

        check_destination(Path(report_path), force=force)
    errors: list[dict[str, Any]] = []
    with stdout_is_data() as out, RunProgress(quiet=quiet) as progress:
        runtime = nb.Runtime(
            device=device, precision=precision, batch_size=batch_size, workers=workers, on_note=progress.note
        )
        if index_path is not None:
            from ..vectors.indexfile import open_index

            index = open_index(Path(index_path))
            nb.check_comparable(index)
            members, chunks, header = nb.index_members(index), index.chunks, {"index": index_path}
            meta_text = index.meta.describe()
        else:
            from ..tasks.base import ModelOptions
            from ..tasks.embed import load_embedder

            embedder = load_embedder(ModelOptions(model=model, weights=weights, device=device, precision=precision))
            members, chunks, errors = nb.embedded_members(
                image_inputs(images, recursive, files_from), embedder, runtime
            )
            header = {"model": model}
            meta_text = f"{embedder.entry.model} ({embedder.weights_label})"
        report: Any = None
        if report_path is not None:
            from ..output.report import Report

            report = Report(
                nb.DupesView(), {**header, "vectors": meta_text, "threshold": threshold, "pictures": len(members)}
            )
        groups = 0
        with writer(
            out,
            fmt,
            columns=["group", "path", "width", "height", "bytes", "score", "exact_copy", "keep", "error"],
            flatten=_dupes_rows,
            optional=["error"],
        ) as sink:
            for record in errors:
                sink.write(record)
            for record in nb.duplicate_groups(members, chunks, threshold):
                groups += 1
                sink.write(record)
                if report is not None:
                    _add_group(report, record, nb.picture)
    groups_text = "1 group" if groups == 1 else f"{groups} groups"
    pictures_text = "1 picture" if len(members) == 1 else f"{len(members)} pictures"
    note(f"{groups_text} of near-duplicates among {pictures_text}")
    if report is not None and report_path is not None:
        report.write(Path(report_path))
        note(f"wrote the report {report_path}")
    return outcome(len(members), len(errors)) if members else outcome(0, 0)


def _dupes_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    if "error" in record:
        error = record["error"]
        return [{"path": record["input"], "error": f"{error['type']}: {error['message']}"}]
    return [{"group": record["group"], **entry} for entry in record["files"]]


def _add_group(report: Any, record: dict[str, Any], picture: Any) -> None:
    kept = next(entry["path"] for entry in record["files"] if entry["keep"])
    for entry in record["files"]:
        image = picture(entry["path"])
        if image is not None:
            report.keep_picture(entry["path"], image)
            if entry["path"] == kept:
                report.keep_thumbnail(f"group {record['group']}", image)
    report.add({"input": f"group {record['group']}", **record})
