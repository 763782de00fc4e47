"""`ptm weights inspect` and `ptm weights convert` from the command line.

Hostile files are refused before any data is read: HDF5 files whose data lives in another file,
link loops and bombs declared in the metadata, safetensors headers that are nested, unknown or
overlapping.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import DATA, assert_refused, run_ptm

h5py = pytest.importorskip("h5py")
np = pytest.importorskip("numpy")


def test_inspect_reports_every_tensor_and_the_architecture(resnet18_file: Path) -> None:
    result = run_ptm(["weights", "inspect", str(resnet18_file), "-f", "jsonl"])
    assert result.code == 0, result.stderr
    rows = {r["name"]: r for r in result.records()}
    assert len(rows) == 122
    assert rows["conv1.weight"]["shape"] == [64, 3, 7, 7]
    assert rows["conv1.weight"]["stride"] == [147, 49, 7, 1]
    assert rows["fc.bias"]["bytes"] == 4000
    assert "architecture: resnet18" in result.stderr
    # torchvision counts 11,689,512 parameters; the file also holds 9,600 BatchNorm running statistics.
    assert "11,699,112 floating-point values" in result.stderr


def test_inspect_json_is_one_object(resnet18_file: Path) -> None:
    report = json.loads(run_ptm(["weights", "inspect", str(resnet18_file), "-f", "json"]).stdout)
    assert report["architecture"] == "resnet18"
    assert report["float_values"] == 11_689_512 + 9_600
    assert len(report["tensors"]) == 122


def test_inspect_shows_views_and_sharing(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    path = tmp_path / "views.pth"
    torch.save({"base": base, "transposed": base.t(), "tail": base[1:], "tied": base}, path)
    rows = {r["name"]: r for r in run_ptm(["weights", "inspect", str(path), "-f", "jsonl"]).records()}
    assert rows["transposed"]["stride"] == [1, 4] and rows["transposed"]["contiguous"] is False
    assert rows["tail"]["offset"] == 4
    assert rows["base"]["storage"] == rows["tail"]["storage"] == rows["tied"]["storage"]
    assert rows["base"]["shares_with"] == ["transposed", "tail", "tied"]
    # Tables and CSV keep the compact text.
    text = run_ptm(["weights", "inspect", str(path), "-f", "csv"]).stdout.splitlines()
    assert 'transposed,4x3,float32,12,48,"(1, 4)",0,no,' in text[2]


def test_inspect_a_bare_tensor_and_nested_containers(tmp_path: Path) -> None:
    """The book's chapter 3 saves a bare tensor (`torch.save(points, "ourpoints.t")`); inspect reads it."""
    points = torch.tensor([[4.0, 1.0], [5.0, 3.0], [2.0, 1.0]])
    torch.save(points, tmp_path / "ourpoints.t")
    result = run_ptm(["weights", "inspect", str(tmp_path / "ourpoints.t"), "-f", "jsonl"])
    assert result.code == 0, result.stderr
    (row,) = result.records()
    assert (row["name"], row["shape"], row["dtype"], row["stride"]) == ("", [3, 2], "float32", [2, 1])
    torch.save([points, {"a": {"b": points.t()}, "n": 3}], tmp_path / "nested.pt")
    rows = {r["name"]: r for r in run_ptm(["weights", "inspect", str(tmp_path / "nested.pt"), "-f", "jsonl"]).records()}
    assert sorted(rows) == ["[0]", "[1].a.b"]
    assert rows["[1].a.b"]["stride"] == [1, 2] and rows["[1].a.b"]["shares_with"] == ["[0]"]


@pytest.mark.parametrize("suffix", [".safetensors", ".h5"])
def test_converted_files_classify_exactly_like_the_source(resnet18_file: Path, tmp_path: Path, suffix: str) -> None:
    converted = tmp_path / f"r18{suffix}"
    result = run_ptm(["weights", "convert", str(resnet18_file), str(converted), "-f", "jsonl"])
    assert result.code == 0, result.stderr
    assert result.records()[0]["tensors"] == 122
    back = tmp_path / "back.pth"
    assert run_ptm(["weights", "convert", str(converted), str(back)]).code == 0
    original, restored = torch.load(resnet18_file, weights_only=True), torch.load(back, weights_only=True)
    assert all(torch.equal(original[k], restored[k]) for k in original)

    image = str(DATA / "chelsea.png")
    source = run_ptm(["classify", "-m", "resnet18", "-w", str(resnet18_file), image]).records()[0]
    other = run_ptm(["classify", "-m", "resnet18", "-w", str(converted), image]).records()[0]
    assert source["predictions"] == other["predictions"]


def test_convert_refuses_to_overwrite_and_casts(resnet18_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "half.safetensors"
    assert run_ptm(["weights", "convert", str(resnet18_file), str(target), "--dtype", "fp16"]).code == 0
    again = run_ptm(["weights", "convert", str(resnet18_file), str(target)])
    assert again.code != 0 and "--force" in again.stderr
    inspected = {r["name"]: r for r in run_ptm(["weights", "inspect", str(target), "-f", "jsonl"]).records()}
    assert inspected["conv1.weight"]["dtype"] == "float16"
    assert inspected["bn1.num_batches_tracked"]["dtype"] == "int64"  # integers are not cast


# --- HDF5 files that read bytes they do not hold --------------------------------------------------


def plain_h5(path: Path) -> Path:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("weight", data=np.arange(6, dtype="float32").reshape(2, 3))
    return path


def h5_external_storage(tmp_path: Path) -> tuple[Path, bytes]:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"top secret bytes that are not in the weights file!!!!!!!!!!!!!")
    path = tmp_path / "external.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("weight", shape=(16,), dtype="float32", external=[(str(secret), 0, 64)])
    return path, secret.read_bytes()


def h5_relative_external_storage(tmp_path: Path) -> tuple[Path, bytes]:
    (tmp_path / "beside.bin").write_bytes(bytes(range(64)))
    path = tmp_path / "relative.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("weight", shape=(16,), dtype="float32", external=[("beside.bin", 0, 64)])
    return path, bytes(range(64))


def h5_external_link(tmp_path: Path) -> tuple[Path, bytes]:
    other = plain_h5(tmp_path / "other.h5")
    path = tmp_path / "extlink.h5"
    with h5py.File(path, "w") as handle:
        handle["weight"] = h5py.ExternalLink(str(other), "/weight")
    return path, np.arange(6, dtype="float32").tobytes()


def h5_virtual(tmp_path: Path) -> tuple[Path, bytes]:
    other = plain_h5(tmp_path / "source.h5")
    layout = h5py.VirtualLayout(shape=(2, 3), dtype="float32")
    layout[:] = h5py.VirtualSource(str(other), "weight", shape=(2, 3))
    path = tmp_path / "virtual.h5"
    with h5py.File(path, "w", libver="latest") as handle:
        handle.create_virtual_dataset("weight", layout)
    return path, np.arange(6, dtype="float32").tobytes()


@pytest.mark.parametrize("make", [h5_external_storage, h5_relative_external_storage, h5_external_link, h5_virtual])
@pytest.mark.parametrize("command", ["convert", "inspect", "classify"])
def test_h5_data_from_another_file_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: object, command: str
) -> None:
    path, foreign = make(tmp_path)  # type: ignore[operator]
    monkeypatch.chdir(tmp_path)  # relative external storage resolves against the working directory too
    out = tmp_path / "out.pth"
    if command == "convert":
        result = run_ptm(["weights", "convert", str(path), str(out)])
    elif command == "inspect":
        result = run_ptm(["weights", "inspect", str(path), "-f", "jsonl"])
    else:
        image = tmp_path / "x.png"
        from PIL import Image

        Image.new("RGB", (8, 8)).save(image)
        result = run_ptm(["classify", "-m", "resnet18", "-w", str(path), str(image)])
    assert_refused(result, "weight", "in the file itself")
    assert not out.exists()
    assert result.stdout == ""
    assert foreign[:8].hex() not in result.stdout


def test_h5_link_loops_and_soft_links_are_refused(tmp_path: Path) -> None:
    loop = tmp_path / "loop.h5"
    with h5py.File(loop, "w") as handle:
        group = handle.create_group("a")
        group.create_dataset("w", data=np.ones(2, dtype="float32"))
        group["again"] = group  # a hard link from a group into itself
    soft = tmp_path / "soft.h5"
    with h5py.File(soft, "w") as handle:
        handle["w"] = h5py.SoftLink("/w")  # points at itself
    for path, words in ((loop, ("again", "loop")), (soft, ("soft link",))):
        for args in (["weights", "inspect", str(path)], ["weights", "convert", str(path), str(tmp_path / "o.pth")]):
            assert_refused(run_ptm(args), *words)


def test_h5_bombs_are_refused_from_their_metadata(tmp_path: Path) -> None:
    never_written = tmp_path / "fill.h5"
    with h5py.File(never_written, "w") as handle:
        handle.create_dataset("w", shape=(1 << 28,), dtype="float32")  # 1 GiB of fill value, 0 bytes stored
    sparse = tmp_path / "sparse.h5"
    with h5py.File(sparse, "w") as handle:
        data = handle.create_dataset("w", shape=(1 << 28,), dtype="float32", chunks=(1 << 16,))
        data[:4] = 1.0  # one chunk written, the rest read as fill
    gzip = tmp_path / "gzip.h5"
    with h5py.File(gzip, "w") as handle:
        data = handle.create_dataset("w", shape=(1 << 26,), dtype="float32", chunks=(1 << 20,), compression="gzip")
        zeros = np.zeros(1 << 20, dtype="float32")
        for start in range(0, 1 << 26, 1 << 20):
            data[start : start + (1 << 20)] = zeros
    for path in (never_written, sparse, gzip):
        assert path.stat().st_size < 1 << 20
        assert_refused(run_ptm(["weights", "convert", str(path), str(tmp_path / "o.pth")]), "'w'")
        assert_refused(run_ptm(["weights", "inspect", str(path)]), "'w'")
    assert not (tmp_path / "o.pth").exists()


def test_h5_bad_dtype_is_found_before_any_data_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mixed.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("a", data=np.ones(4, dtype="float32"))
        handle.create_dataset("b", data=np.ones(4, dtype="complex64"))
    from ptm_cli.tensorio import h5

    reads: list[str] = []
    real = h5._tensor
    monkeypatch.setattr(h5, "_tensor", lambda p, name, d: reads.append(name) or real(p, name, d))
    assert_refused(run_ptm(["weights", "convert", str(path), str(tmp_path / "o.pth")]), "'b'", "complex64")
    assert reads == []


def test_h5_compressed_real_weights_still_load(tmp_path: Path) -> None:
    path = tmp_path / "gz.h5"
    values = torch.randn(64, 64)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("w", data=values.numpy(), chunks=(16, 64), compression="gzip")
        handle.create_dataset("zeros", data=np.zeros(1000, dtype="float32"), chunks=(1000,), compression="gzip")
    result = run_ptm(["weights", "convert", str(path), str(tmp_path / "o.pth")])
    assert result.code == 0, result.stderr
    loaded = torch.load(tmp_path / "o.pth", weights_only=True)
    assert torch.equal(loaded["w"], values) and torch.equal(loaded["zeros"], torch.zeros(1000))


# --- hostile safetensors headers ------------------------------------------------------------------


def safetensors_bytes(header: object, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


@pytest.mark.parametrize(
    ("header", "data", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, b"", ("nested too deeply",)),
        (b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", b"", ("nested too deeply",)),
        ({"w": {"dtype": "F4X", "shape": [4], "data_offsets": [0, 0]}}, b"", ("'w'", "F4X")),
        ({"w": {"dtype": "Q4", "shape": [2, 2], "data_offsets": [0, 0]}}, b"", ("'w'", "Q4")),
        (
            {
                "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
            },
            bytes(24),
            ("overlap",),
        ),
    ],
)
def test_hostile_safetensors_headers_are_damaged_files(
    tmp_path: Path, header: object, data: bytes, words: tuple[str, ...]
) -> None:
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(safetensors_bytes(header, data))
    assert_refused(run_ptm(["weights", "inspect", str(path)]), "is damaged", *words)
    assert_refused(run_ptm(["weights", "convert", str(path), str(tmp_path / "o.pth")]), "is damaged")
    assert not (tmp_path / "o.pth").exists()


def test_a_tensor_named_metadata_is_refused_by_convert_before_writing(tmp_path: Path) -> None:
    src = tmp_path / "w.pth"
    torch.save({"__metadata__": torch.ones(2), "w": torch.zeros(2)}, src)
    result = run_ptm(["weights", "convert", str(src), str(tmp_path / "w.safetensors")])
    assert_refused(result, "'__metadata__'", ".pth or .h5")
    assert not (tmp_path / "w.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth"]
    assert run_ptm(["weights", "convert", str(src), str(tmp_path / "w.h5")]).code == 0
