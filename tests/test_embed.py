"""`ptm embed`: vectors from every classifier family, index files, --update, batch merge, and hostile indexes.

Most runs use the suite's tiny 4-class MobileNet (64-pixel crops: fast);
the features of each family are checked with its smallest member, and
ResNet-50 (the default) once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import DATA, TinyClassifier, assert_refused, run_ptm
from PIL import Image

from ptm_cli.errors import BadIndex
from ptm_cli.vectors.indexfile import META_KEY, IndexMeta, IndexWriter, Row, open_index, rows_path

PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """The sample photos, a broken file and a resized copy of one, in a folder of their own."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copy(DATA / name, folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with Image.open(DATA / "chelsea.png") as image:
        image.convert("RGB").resize((300, 200)).save(folder / "small-chelsea.jpg", quality=90)
    return folder


def embed(tiny: TinyClassifier, *args: str) -> Any:
    return run_ptm(["embed", *tiny.options, *args])


def index_vectors(path: Path) -> dict[str, np.ndarray | None]:
    index = open_index(path)
    vectors = index.vectors(list(range(len(index))))
    return {p: (vectors[i] if index.valid[i] else None) for i, p in enumerate(index.paths())}


# --- vectors ------------------------------------------------------------------------------------------------


def _smallest_per_family() -> list[tuple[str, int]]:
    """One catalog classifier per torchvision family (the fewest parameters), with the least side it takes."""
    catalog = json.loads((Path(__file__).parent.parent / "ptm_cli/models/torchvision.json").read_text())
    best: dict[str, tuple[int, str, int]] = {}
    for model in catalog["models"]:
        weights = model["weights"][0]
        family = re.match(r"[a-z]+", model["architecture"]).group()  # type: ignore[union-attr]
        family = {"wide": "resnet", "resnext": "resnet"}.get(family, family)
        candidate = (weights["num_params"], model["architecture"], max(64, *weights["min_size"]))
        if family not in best or candidate < best[family]:
            best[family] = candidate
    return sorted((architecture, side) for _, architecture, side in best.values())


@pytest.mark.parametrize(("architecture", "side"), _smallest_per_family())
def test_the_vector_is_exactly_what_the_head_is_given(architecture: str, side: int) -> None:
    """Every family: the features ptm takes equal the input of the layer that makes the class scores."""
    import torchvision

    from ptm_cli.nets.features import remove_head

    torch.manual_seed(0)
    extra = {"init_weights": False} if architecture in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(architecture, **extra).eval()
    head_name = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)][-1]
    head = model.get_submodule(head_name)
    seen: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    x = torch.randn(2, 3, side, side)
    with torch.inference_mode():
        logits = model(x)
        handle.remove()
        dimension = remove_head(model, classes=1000)
        vectors = model(x)
    given = seen[0]
    if given.ndim == 4:  # SqueezeNet: a 1x1 convolution head, then ReLU and pooling
        given = given.clamp_min(0).mean(dim=(2, 3))
    assert vectors.shape == (2, dimension) == given.shape
    torch.testing.assert_close(vectors, given, rtol=1e-5, atol=1e-5)
    if isinstance(head, torch.nn.Linear):
        with torch.inference_mode():
            torch.testing.assert_close(head(vectors), logits, rtol=1e-4, atol=1e-4)


def test_a_network_that_does_not_end_in_its_classes_is_refused() -> None:
    from ptm_cli.errors import ConfigError
    from ptm_cli.nets.features import remove_head

    with pytest.raises(ConfigError, match="cannot tell where its head is"):
        remove_head(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 7)), classes=1000)


def test_records_hold_unit_vectors_of_the_features(tiny: TinyClassifier, photos: Path) -> None:
    result = embed(tiny, "-f", "jsonl", str(photos))
    assert result.code == 1  # broken.jpg
    records = {Path(r["input"]).name: r for r in result.records()}
    assert records["broken.jpg"]["error"]["type"] == "UnreadableImage"
    good = {name: np.asarray(r["vector"], dtype=np.float32) for name, r in records.items() if "vector" in r}
    assert len(good) == 4
    for name, vector in good.items():
        record = records[name]
        assert record["dimension"] == 1024 == vector.size
        assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5
        data = (photos / name).read_bytes()
        assert record["bytes"] == len(data)
        assert record["mtime_ns"] == os.stat(photos / name).st_mtime_ns
    # Independent reference: torchvision's MobileNet without its last layer, on torchvision's preprocessing.
    import torchvision
    from torchvision.transforms import v2

    model = torchvision.models.mobilenet_v3_small(num_classes=4)
    model.load_state_dict(torch.load(tiny.weights))
    model.classifier[-1] = torch.nn.Identity()
    model.eval()
    steps = v2.Compose(
        [
            v2.Resize(72, antialias=True),
            v2.CenterCrop(64),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    for name in ("coffee.png", "chelsea.png"):  # PNGs: a JPEG is decoded at reduced scale, as ptm classify does
        with Image.open(photos / name) as image:
            x = steps(image.convert("RGB"))[None]
        with torch.inference_mode():
            reference = torch.nn.functional.normalize(model(x), dim=1)[0].numpy()
        assert float(reference @ good[name]) > 0.999, name
    # A copy at another size is nearer its original than the other photos are.
    scores = {name: float(good["small-chelsea.jpg"] @ vector) for name, vector in good.items()}
    assert max((s, n) for n, s in scores.items() if n != "small-chelsea.jpg")[1] == "chelsea.png"


def test_raw_vectors_are_the_unnormalised_features(tiny: TinyClassifier, photos: Path) -> None:
    unit = embed(tiny, "-f", "jsonl", str(photos / "coffee.png")).records()[0]["vector"]
    raw = embed(tiny, "--raw", "-f", "jsonl", str(photos / "coffee.png")).records()[0]["vector"]
    raw_v, unit_v = np.asarray(raw, np.float32), np.asarray(unit, np.float32)
    assert abs(float(np.linalg.norm(raw_v)) - 1) > 0.01
    np.testing.assert_allclose(raw_v / np.linalg.norm(raw_v), unit_v, rtol=1e-5, atol=1e-6)


def test_a_vector_does_not_depend_on_its_batch(tiny: TinyClassifier, photos: Path) -> None:
    """Batches are always run at --batch-size (padded), so neighbours and failures do not move a vector's bits."""
    alone = embed(tiny, "-f", "jsonl", str(photos / "rocket.jpg")).records()[0]["vector"]
    together = {r["input"]: r for r in embed(tiny, "-f", "jsonl", str(photos)).records()}
    assert together[str(photos / "rocket.jpg")]["vector"] == alone


# --- index files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_an_index_holds_every_input_and_the_exact_vectors(tiny: TinyClassifier, photos: Path, suffix: str) -> None:
    printed = {r["input"]: r for r in embed(tiny, "-f", "jsonl", str(photos)).records()}
    index_path = photos.parent / f"photos{suffix}"
    result = embed(tiny, "-f", "jsonl", str(photos), "-o", str(index_path))
    assert result.code == 1
    assert all("vector" not in r for r in result.records())
    assert f"wrote {index_path}: 5 rows" in result.stderr
    index = open_index(index_path)
    assert index.meta == IndexMeta("tiny", str(tiny.weights), 1024, "float32", True, 72, 64, index.meta.extra)
    assert index.paths() == sorted(printed)
    for path, vector in index_vectors(index_path).items():
        if "error" in printed[path]:
            assert vector is None
            assert index.rows.column("error")[index.paths().index(path)].as_py().startswith("UnreadableImage")
        else:
            assert vector is not None
            assert vector.tobytes() == np.asarray(printed[path]["vector"], np.float32).tobytes()
    if suffix == ".npy":
        assert rows_path(index_path).is_file()
        assert np.load(index_path).shape == (5, 1024)


def test_float16_halves_the_vectors(tiny: TinyClassifier, photos: Path, tmp_path: Path) -> None:
    full, half = tmp_path / "full.npy", tmp_path / "half.npy"
    embed(tiny, str(photos), "-o", str(full))
    embed(tiny, str(photos), "-o", str(half), "--dtype", "float16")
    assert half.stat().st_size - 128 == (full.stat().st_size - 128) // 2
    a, b = np.load(full), np.load(half)
    assert b.dtype == np.float16
    np.testing.assert_array_equal(a.astype(np.float16), b)


def test_an_existing_index_needs_update_or_force(tiny: TinyClassifier, photos: Path, tmp_path: Path) -> None:
    index = tmp_path / "i.parquet"
    embed(tiny, str(photos / "coffee.png"), "-o", str(index))
    before = index.read_bytes()
    assert_refused(embed(tiny, str(photos), "-o", str(index)), "already exists", "--update", "--force")
    assert index.read_bytes() == before
    assert embed(tiny, str(photos / "rocket.jpg"), "-o", str(index), "--force").code == 0
    assert open_index(index).paths() == [str(photos / "rocket.jpg")]
    assert_refused(embed(tiny, str(photos), "-o", str(tmp_path / "i.csv")), ".parquet", ".npy")
    (tmp_path / "folder.parquet").mkdir()
    assert_refused(embed(tiny, str(photos), "-o", str(tmp_path / "folder.parquet"), "--force"), "is a folder")
    (tmp_path / "link.npy").symlink_to(tmp_path / "elsewhere.npy")
    assert_refused(embed(tiny, str(photos), "-o", str(tmp_path / "link.npy"), "--force"), "not a regular file")
    assert not (tmp_path / "elsewhere.npy").exists()
    assert_refused(embed(tiny, str(photos), "-o", str(tmp_path / "no" / "i.parquet")), "does not exist")
    assert_refused(embed(tiny, "--update", str(photos)), "-o INDEX")


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_update_embeds_only_new_and_changed_files(
    tiny: TinyClassifier, photos: Path, tmp_path: Path, suffix: str
) -> None:
    index = tmp_path / f"i{suffix}"
    embed(tiny, str(photos), "-o", str(index))
    first = index_vectors(index)
    chelsea, coffee, rocket = (str(photos / n) for n in PHOTOS)
    # touched (same bytes, new time), replaced (new bytes), removed, added
    os.utime(chelsea, ns=(1_000_000_000, 1_000_000_000))
    shutil.copy(DATA / "chelsea.png", coffee)
    os.remove(rocket)
    shutil.copy(DATA / "rocket.jpg", photos / "new.jpg")
    result = embed(tiny, "-f", "jsonl", "--update", str(photos), "-o", str(index))
    assert result.code == 1, result.stderr  # broken.jpg again
    records = {r["input"]: r for r in result.records()}
    assert records[chelsea]["unchanged"] is True
    assert records[chelsea]["mtime_ns"] == 1_000_000_000
    assert "unchanged" not in records[coffee] and "unchanged" not in records[str(photos / "new.jpg")]
    assert "2 unchanged, 3 to embed, 1 gone (its row dropped)" in result.stderr
    after = index_vectors(index)
    assert rocket not in after
    assert after[chelsea] is not None and first[chelsea] is not None
    assert after[chelsea].tobytes() == first[chelsea].tobytes()
    assert after[coffee] is not None
    assert after[coffee].tobytes() == first[chelsea].tobytes()  # now the same picture as chelsea
    new = after[str(photos / "new.jpg")]
    assert new is not None and first[rocket] is not None
    assert new.tobytes() == first[rocket].tobytes()
    rows = open_index(index)
    assert rows.rows.column("mtime_ns")[rows.paths().index(chelsea)].as_py() == 1_000_000_000
    # Nothing changed since: everything but the broken file is unchanged.
    again = embed(tiny, "-f", "jsonl", "--update", str(photos), "-o", str(index)).records()
    assert sum(bool(r.get("unchanged")) for r in again) == 4


def test_update_refuses_an_index_of_another_model_and_keeps_it(
    tiny: TinyClassifier, photos: Path, tmp_path: Path, seeded_weights: Any
) -> None:
    index = tmp_path / "i.parquet"
    embed(tiny, str(photos / "coffee.png"), "-o", str(index))
    before = index.read_bytes()
    other = seeded_weights.classifier("resnet18", seed=1)
    result = run_ptm(["embed", "-m", "resnet18", "-w", str(other), "--update", str(photos), "-o", str(index)])
    assert_refused(result, "tiny", "resnet18", str(tiny.weights))
    assert_refused(embed(tiny, "--raw", "--update", str(photos), "-o", str(index)), "raw", "unit-length")
    assert_refused(embed(tiny, "--dtype", "float16", "--update", str(photos), "-o", str(index)), "float32")
    assert index.read_bytes() == before


def test_an_interrupted_write_leaves_the_old_index(tiny: TinyClassifier, photos: Path, tmp_path: Path) -> None:
    """A run that dies after some images (here: its model raises) publishes nothing and leaves no staged file."""
    from ptm_cli.tasks.base import ModelOptions
    from ptm_cli.tasks.embed import load_embedder

    for suffix in (".parquet", ".npy"):
        index = tmp_path / f"i{suffix}"
        embed(tiny, str(photos / "coffee.png"), "-o", str(index))
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        embedder = load_embedder(ModelOptions("tiny", str(tiny.weights)))
        calls = 0
        original = embedder.embed_each

        def failing(batch: torch.Tensor, size: int, original: Any = original) -> list[Any]:
            nonlocal calls
            calls += 1
            if calls > 1:
                raise KeyboardInterrupt
            return original(batch, size)

        embedder.embed_each = failing  # type: ignore[method-assign]
        from ptm_cli.images.inputs import ImageInput
        from ptm_cli.tasks._embed_index import write_index
        from ptm_cli.tasks._embedder import embed_images

        items = [ImageInput(str(p), path=p) for p in sorted(photos.iterdir())]
        with pytest.raises(KeyboardInterrupt):
            for _ in write_index(
                index,
                embedder,
                items,
                update=True,
                dtype=None,
                replace=True,
                run=lambda chosen, embedder=embedder: embed_images(chosen, embedder, batch_size=1, workers=1),
            ):
                pass
        assert calls == 2
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


# --- hostile indexes ---------------------------------------------------------------------------------------


def _write(path: Path, vectors: np.ndarray, *, paths: list[str] | None = None, meta: IndexMeta | None = None) -> None:
    meta = meta or IndexMeta("tiny", "w.pth", vectors.shape[1])
    names = paths or [f"img{i}.jpg" for i in range(len(vectors))]
    with IndexWriter(path, meta, len(vectors), replace=True) as writer:
        for name, vector in zip(names, vectors, strict=True):
            writer.add(Row(name, "0" * 64, 10, 1, vector))
        writer.commit()


def test_damaged_and_foreign_indexes_are_refused_clearly(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    _write(good, np.eye(3, 8, dtype=np.float32))
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:-100])
    not_parquet = tmp_path / "text.parquet"
    not_parquet.write_text("path,vector\n")
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"path": ["a"], "vector": [[1.0, 0.0]]}), foreign)
    lying = tmp_path / "lying.parquet"
    table = pq.read_table(good)
    meta = json.loads(table.schema.metadata[META_KEY])
    meta["dimension"] = 16
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta)}), lying)
    cases = {
        truncated: "truncated or damaged",
        not_parquet: "not a Parquet file",
        foreign: "not a ptm index",
        lying: "8 numbers but its metadata says 16",
        tmp_path / "missing.parquet": "no such index",
    }
    for path, words in cases.items():
        with pytest.raises(BadIndex, match=words):
            open_index(path)
        result = run_ptm(["similar", "img0.jpg", "--index", str(path)])
        assert_refused(result, words)
    # .npy: vectors replaced behind the rows' back, and the rows file gone
    npy = tmp_path / "pair.npy"
    _write(npy, np.eye(3, 8, dtype=np.float32))
    np.save(npy, np.eye(3, 8, dtype=np.float32)[::-1].copy())
    with pytest.raises(BadIndex, match="do not belong together"):
        open_index(npy)
    rows_path(npy).unlink()
    with pytest.raises(BadIndex, match="rows file"):
        open_index(npy)


def test_update_refuses_nan_or_zero_vectors_and_keeps_the_index(
    tiny: TinyClassifier, photos: Path, tmp_path: Path
) -> None:
    for bad in (np.nan, 0.0):
        index = tmp_path / "i.parquet"
        embed(tiny, str(photos / "coffee.png"), str(photos / "rocket.jpg"), "-o", str(index), "--force")
        table = pq.read_table(index)
        vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
        vectors[0] = bad
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1).astype(np.float32)), 1024)
        table = table.set_column(table.schema.get_field_index("vector"), "vector", column)
        pq.write_table(table, index)
        before = index.read_bytes()
        os.utime(photos / "rocket.jpg", ns=(5, 5))  # the broken row must be carried over, not re-embedded
        result = embed(tiny, "--update", str(photos / "rocket.jpg"), "-o", str(index))
        assert_refused(result, "coffee.png", "rebuild the index")
        assert index.read_bytes() == before


def test_an_interrupted_npy_commit_is_finished_by_the_next_reader(tmp_path: Path) -> None:
    """Vectors renamed into place, rows not yet: the staged rows file completes the pair."""
    npy = tmp_path / "pair.npy"
    _write(npy, np.eye(3, 8, dtype=np.float32))
    old_rows = rows_path(npy).read_bytes()
    staged = tmp_path / f".{rows_path(npy).name}.next"
    _write(tmp_path / "next.npy", np.eye(4, 8, dtype=np.float32))
    rows_path(tmp_path / "next.npy").rename(staged)
    (tmp_path / "next.npy").rename(npy)
    assert rows_path(npy).read_bytes() == old_rows
    assert len(open_index(npy)) == 4
    assert not staged.exists()
