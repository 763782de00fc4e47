"""`ptm similar` and `ptm dupes`: exact answers over an index, the faiss option, and results pages in Chromium.

Indexes come from `ptm embed` with the tiny classifier, or are written
directly with planted vectors where a test needs known neighbours; every
answer is checked against brute force over the same vectors.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import chromium, needs_chromium
from helpers import DATA, SeededWeights, TinyClassifier, assert_refused, run_ptm
from PIL import Image

from ptm_cli.vectors.indexfile import IndexMeta, IndexWriter, Row, open_index


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """Photos: the three samples, an exact copy, two resized copies, and a broken file."""
    folder = tmp_path / "library"
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png", "rocket.jpg"):
        shutil.copy(DATA / name, folder / name)
    shutil.copy(DATA / "coffee.png", folder / "coffee-copy.png")
    for name, size in (("chelsea-small.png", (225, 150)), ("rocket-small.jpg", (320, 213))):
        with Image.open(DATA / name.replace("-small", "")) as image:
            image.convert("RGB").resize(size).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


@pytest.fixture
def index(tiny: TinyClassifier, library: Path) -> Path:
    path = library.parent / "library.parquet"
    assert run_ptm(["embed", *tiny.options, str(library), "-o", str(path)]).code == 1
    return path


def brute_force(path: Path, query: np.ndarray, k: int, skip: int | None = None) -> list[tuple[str, float]]:
    found = open_index(path)
    vectors = found.vectors(list(range(len(found)))).astype(np.float64)
    scores = vectors @ query.astype(np.float64)
    order = [i for i in np.lexsort((np.arange(len(scores)), -scores)) if found.valid[i] and i != skip]
    return [(found.paths()[i], float(scores[i])) for i in order[:k]]


def test_neighbours_of_indexed_paths_and_of_new_images_are_exact(
    tiny: TinyClassifier, index: Path, library: Path, tmp_path: Path
) -> None:
    rocket = str(library / "rocket.jpg")
    outside = tmp_path / "outside.png"
    shutil.copy(DATA / "chelsea.png", outside)
    result = run_ptm(["similar", rocket, str(outside), "--index", str(index), "-k", "4", "-f", "jsonl"])
    assert result.code == 0, result.stderr
    by_path, by_image = result.records()
    found = open_index(index)
    row = found.paths().index(rocket)
    expected = brute_force(index, found.vectors([row])[0], 4, skip=row)
    assert [n["path"] for n in by_path["neighbours"]] == [p for p, _ in expected]
    assert [n["score"] for n in by_path["neighbours"]] == pytest.approx([s for _, s in expected], abs=2e-6)
    assert rocket not in [n["path"] for n in by_path["neighbours"]]  # a query is not its own neighbour
    # An image outside the index is embedded with the index's model: the same picture scores 1.
    assert by_image["query"] == str(outside)
    assert by_image["neighbours"][0] == {"path": str(library / "chelsea.png"), "score": pytest.approx(1.0, abs=1e-6)}
    assert str(library / "broken.jpg") not in str(result.stdout)  # a failed row is never a neighbour


def test_npy_and_parquet_indexes_give_the_same_answers(tiny: TinyClassifier, index: Path, library: Path) -> None:
    npy = index.with_suffix(".npy")
    run_ptm(["embed", *tiny.options, str(library), "-o", str(npy)])
    query = str(library / "coffee.png")
    a = run_ptm(["similar", query, "--index", str(index), "-f", "jsonl"]).records()
    b = run_ptm(["similar", query, "--index", str(npy), "-f", "jsonl"]).records()
    assert a == b
    assert a[0]["neighbours"][0] == {"path": str(library / "coffee-copy.png"), "score": 1.0}
    assert len(a[0]["neighbours"]) == 5  # 7 rows, less the broken one and the query itself


def test_similar_writes_csv_and_a_table_and_reports_failed_queries(index: Path, library: Path) -> None:
    result = run_ptm(["similar", str(library / "broken.jpg"), str(library / "coffee.png"), "--index", str(index),
                      "-k", "2", "-f", "csv"])  # fmt: skip
    assert result.code == 1  # broken.jpg is an image query that fails (its row holds no vector)
    lines = result.stdout.splitlines()
    assert lines[0] == "query,rank,score,path,error"
    assert lines[1].startswith(f'{library / "broken.jpg"},,,,"UnreadableImage')
    assert lines[2] == f"{library / 'coffee.png'},1,1,{library / 'coffee-copy.png'},"
    assert lines[3].startswith(",2,")
    table = run_ptm(["similar", str(library / "coffee.png"), "--index", str(index), "-k", "2", "-f", "table"])
    assert "coffee-copy.png" in table.stdout and "rank" in table.stdout


def test_a_neighbour_whose_file_is_gone_is_marked(index: Path, library: Path) -> None:
    os.remove(library / "coffee-copy.png")
    record = run_ptm(["similar", str(library / "coffee.png"), "--index", str(index), "-f", "jsonl"]).records()[0]
    first = record["neighbours"][0]
    assert first["path"].endswith("coffee-copy.png") and first["missing"] is True
    assert all("missing" not in n for n in record["neighbours"][1:])


def test_approximate_search_builds_once_and_agrees_on_a_small_index(index: Path, library: Path) -> None:
    pytest.importorskip("faiss")
    query = str(library / "rocket.jpg")
    exact = run_ptm(["similar", query, "--index", str(index), "-k", "3", "-f", "jsonl"]).records()
    first = run_ptm(["similar", query, "--index", str(index), "-k", "3", "-f", "jsonl", "--approximate"])
    assert "building a hnsw index" in first.stderr
    assert (index.parent / "library.parquet.hnsw.faiss").is_file()
    second = run_ptm(["similar", query, "--index", str(index), "-k", "3", "-f", "jsonl", "--approximate"])
    assert "building" not in second.stderr
    for records in (first.records(), second.records()):
        assert [n["path"] for n in records[0]["neighbours"]] == [n["path"] for n in exact[0]["neighbours"]]
    ivf = run_ptm(["similar", query, "--index", str(index), "-k", "3", "-f", "jsonl", "--approximate", "--ann", "ivf"])
    assert ivf.code == 0, ivf.stderr
    # The index rewritten: its faiss index is stale and is built again.
    run_ptm(["embed", "-m", "tiny", "-w", open_index(index).meta.weights, "--force", query, "-o", str(index)])
    third = run_ptm(["similar", query, "--index", str(index), "-k", "3", "-f", "jsonl", "--approximate"])
    assert "building a hnsw index of 1 vectors" in third.stderr


def test_an_index_of_a_hub_model_records_its_arguments_for_queries_and_updates(
    hub_repo: Path, library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model = ["-m", "hub:./tinyrepo/tiny", "--trust-repo"]
    index = tmp_path / "hub.npy"
    made = run_ptm(["embed", *model, "--arg", "scale=2", str(library / "coffee.png"), "-o", str(index)])
    assert made.code == 0, made.stderr
    meta = open_index(index).meta
    assert meta.hub_args() == ("scale=2",) and meta.dimension == 8
    found = run_ptm(["similar", str(DATA / "coffee.png"), "--index", str(index), "--trust-repo", "-f", "jsonl"])
    assert found.code == 0, found.stderr
    assert found.records()[0]["neighbours"][0]["score"] == pytest.approx(1.0, abs=1e-6)
    other = run_ptm(["embed", *model, "--arg", "scale=3", "--update", str(library), "-o", str(index)])
    assert_refused(other, "scale=2", "scale=3")


def test_an_index_of_raw_vectors_is_refused(tiny: TinyClassifier, library: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw.parquet"
    run_ptm(["embed", *tiny.options, "--raw", str(library / "coffee.png"), "-o", str(raw)])
    assert_refused(run_ptm(["similar", str(library / "coffee.png"), "--index", str(raw)]), "raw vectors", "--raw")
    assert_refused(run_ptm(["dupes", "--index", str(raw)]), "raw vectors")


def test_a_query_with_another_model_is_refused(index: Path, library: Path) -> None:
    query = str(DATA / "rocket.jpg")
    assert_refused(run_ptm(["similar", "-m", "resnet18", query, "--index", str(index)]), "tiny", "resnet18", "drop -m")
    assert_refused(
        run_ptm(["similar", "-w", "IMAGENET1K_V1", query, "--index", str(index)]), "IMAGENET1K_V1", "drop -w"
    )


def test_similar_refuses_an_index_whose_model_now_gives_other_vectors(
    tiny: TinyClassifier, library: Path, tmp_path: Path, seeded_weights: SeededWeights
) -> None:
    """The index names a weights file that has since been replaced by another network's."""
    weights = tmp_path / "w.pth"
    shutil.copy(tiny.weights, weights)
    path = tmp_path / "i.parquet"
    run_ptm(["embed", "-m", "tiny", "-w", str(weights), str(library / "coffee.png"), "-o", str(path)])
    shutil.copy(seeded_weights.classifier("mobilenet_v3_small", seed=4, num_classes=3), weights)
    result = run_ptm(["similar", str(DATA / "rocket.jpg"), "--index", str(path)])
    assert result.code == 2
    assert "Traceback" not in result.stderr


# --- duplicates ----------------------------------------------------------------------------------------------


def planted_index(folder: Path, count: int = 60, dimension: int = 16, seed: int = 3) -> tuple[Path, np.ndarray]:
    """An index of real image files whose vectors hold near-duplicate pairs and one chain a~b~c."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, dimension)).astype(np.float32)
    for a, b in ((1, 2), (10, 11), (11, 12), (30, 45)):
        vectors[b] = vectors[a] + 0.05 * rng.normal(size=dimension).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    folder.mkdir(exist_ok=True)
    path = folder / "planted.parquet"
    with IndexWriter(path, IndexMeta("tiny", "w.pth", dimension), count, replace=True) as writer:
        for i, vector in enumerate(vectors):
            name = folder / f"img{i:02d}.png"
            Image.new("RGB", (20 + i, 10 + i), (i, 0, 0)).save(name)
            writer.add(Row(str(name), f"{i:064x}", name.stat().st_size, 1, vector))
        writer.commit()
    return path, vectors


def groups_by_brute_force(vectors: np.ndarray, threshold: float) -> list[list[int]]:
    scores = vectors @ vectors.T
    parent = list(range(len(vectors)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(vectors)):
        for j in range(i + 1, len(vectors)):
            if scores[i, j] >= np.float32(threshold):
                parent[max(root(i), root(j))] = min(root(i), root(j))
    groups: dict[int, list[int]] = {}
    for i in range(len(vectors)):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def test_dupes_on_an_index_are_the_brute_force_groups_with_the_largest_kept(tmp_path: Path) -> None:
    path, vectors = planted_index(tmp_path / "planted")
    before = {p.name: p.stat().st_mtime_ns for p in path.parent.iterdir()}
    result = run_ptm(["dupes", "--index", str(path), "--threshold", "0.9", "-f", "jsonl"])
    assert result.code == 0, result.stderr
    records = result.records()
    expected = groups_by_brute_force(vectors, 0.9)
    assert [[int(Path(f["path"]).stem[3:]) for f in r["files"]] for r in records] == expected
    assert [10, 11, 12] in expected  # the chain is one group
    for record in records:
        kept = [f for f in record["files"] if f["keep"]]
        assert len(kept) == 1
        assert kept[0]["width"] == max(f["width"] for f in record["files"])  # the image with the most pixels
    assert {p.name: p.stat().st_mtime_ns for p in path.parent.iterdir()} == before  # nothing deleted or moved
    csv = run_ptm(["dupes", "--index", str(path), "--threshold", "0.9", "-f", "csv"]).stdout.splitlines()
    assert csv[0] == "group,path,width,height,bytes,score,exact_copy,keep,error"
    assert len(csv) == 1 + sum(len(g) for g in expected)


def test_dupes_of_images_finds_exact_copies_first(tiny: TinyClassifier, library: Path) -> None:
    result = run_ptm(["dupes", *tiny.options, str(library), "--threshold", "0.9999", "-f", "jsonl"])
    assert result.code == 1  # broken.jpg
    records = result.records()
    assert records[0]["error"]["type"] == "UnreadableImage"
    groups = [{Path(f["path"]).name: f for f in r["files"]} for r in records[1:]]
    copies = next(g for g in groups if "coffee.png" in g)
    assert copies["coffee.png"]["exact_copy"] and copies["coffee-copy.png"]["exact_copy"]
    assert sum(f["keep"] for f in copies.values()) == 1
    assert_refused(run_ptm(["dupes", *tiny.options]), "IMAGES", "--index")
    assert_refused(run_ptm(["dupes", str(library), "--index", "x.parquet"]), "IMAGES", "--index")


def test_the_default_model_embeds_once(seeded_weights: SeededWeights, library: Path) -> None:
    """ResNet-50, `ptm embed`'s default: 2048 numbers."""
    weights = seeded_weights.classifier("resnet50", seed=2)
    result = run_ptm(["embed", "-w", str(weights), "-f", "jsonl", str(library / "rocket-small.jpg")])
    record = result.records()[0]
    assert record["model"] == "resnet50" and record["dimension"] == 2048 == len(record["vector"])


# --- results pages ----------------------------------------------------------------------------------------------


def _figures(dom: str) -> list[str]:
    import re

    return ["keep" if "keep" in tag else "" for tag in re.findall(r"<figure[^>]*>", dom)]


@needs_chromium
def test_similar_report_shows_each_query_beside_its_neighbours(index: Path, library: Path, tmp_path: Path) -> None:
    page = tmp_path / "similar.html"
    queries = [str(library / "coffee.png"), str(library / "rocket.jpg")]
    result = run_ptm(["similar", *queries, "--index", str(index), "-k", "3", "--report", str(page), "-f", "jsonl"])
    assert result.code == 0, result.stderr
    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout
    assert dom.count('<article class="entry">') == 2
    assert len(_figures(dom)) == 6
    assert dom.count("<img") == 2 + 6  # every query and every neighbour has its picture
    assert "coffee-copy.png" in dom and "1.0000" in dom


@needs_chromium
def test_dupes_report_shows_groups_side_by_side_with_the_one_to_keep(tmp_path: Path) -> None:
    path, vectors = planted_index(tmp_path / "planted")
    page = tmp_path / "dupes.html"
    assert run_ptm(["dupes", "--index", str(path), "--threshold", "0.9", "--report", str(page), "-q"]).code == 0
    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout
    expected = groups_by_brute_force(vectors, 0.9)
    assert dom.count('<article class="entry">') == len(expected)
    figures = _figures(dom)
    assert len(figures) == sum(len(g) for g in expected)
    assert figures.count("keep") == len(expected)
    assert "32x22" in dom  # img12's resolution, as the caption gives it


def test_record_views_name_every_picture(index: Path, library: Path) -> None:
    from ptm_cli.tasks._neighbours import DupesView, SimilarView

    record: dict[str, Any] = {"query": "q", "neighbours": [{"path": "a.jpg", "score": 0.5}]}
    assert SimilarView().report_view(record)["gallery"] == [{"name": "a.jpg", "caption": "0.5000  a.jpg"}]
    group = {"size": 1, "files": [{"path": "b.jpg", "width": 4, "height": 3, "bytes": 10, "score": 1.0,
                                   "exact_copy": True, "keep": True}]}  # fmt: skip
    assert DupesView().report_view(group)["gallery"][0]["keep"] is True


def test_paths_in_an_index_that_name_a_fifo_or_a_device_are_not_opened(tmp_path: Path) -> None:
    """An index from someone else may name a FIFO (opening it would block) or /dev/zero: no picture, no hang."""
    import subprocess
    import sys

    folder = tmp_path / "hostile"
    folder.mkdir()
    fifo = folder / "pipe.png"
    os.mkfifo(fifo)
    path = folder / "hostile.parquet"
    vectors = np.eye(3, 4, dtype=np.float32)
    vectors[1] = vectors[0]
    with IndexWriter(path, IndexMeta("tiny", "w.pth", 4), 3, replace=True) as writer:
        for name, vector in zip([str(fifo), "/dev/zero", str(DATA / "rocket.jpg")], vectors, strict=True):
            writer.add(Row(name, None, None, None, vector))
        writer.commit()
    page = tmp_path / "page.html"
    for args in (
        ["dupes", "--index", str(path), "--report", str(page), "-f", "jsonl", "--force"],
        ["similar", str(fifo), "--index", str(path), "--report", str(page), "-f", "jsonl", "--force"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "ptm_cli", *args], capture_output=True, timeout=120, check=False, text=True
        )
        assert done.returncode == 0, done.stderr
        assert page.is_file()
    group = json.loads(
        subprocess.run(
            [sys.executable, "-m", "ptm_cli", "dupes", "--index", str(path), "-f", "jsonl"],
            capture_output=True,
            timeout=120,
            check=True,
            text=True,
        ).stdout
    )
    assert [f["path"] for f in group["files"]] == [str(fifo), "/dev/zero"]
    assert all(f["width"] is None for f in group["files"])


def test_a_faiss_file_another_user_could_have_planted_is_not_read(index: Path, library: Path) -> None:
    pytest.importorskip("faiss")
    query = str(library / "rocket.jpg")
    run_ptm(["similar", query, "--index", str(index), "--approximate", "-f", "jsonl"])
    planted = index.parent / "library.parquet.hnsw.faiss"
    planted.write_bytes(b"\x00" * 64)  # what faiss would parse, were it trusted
    planted.chmod(0o666)
    before = planted.read_bytes()
    result = run_ptm(["similar", query, "--index", str(index), "--approximate", "-f", "jsonl"])
    assert result.code == 0, result.stderr
    assert "writable by others; building a faiss index in memory instead" in result.stderr
    assert planted.read_bytes() == before  # neither read nor replaced
