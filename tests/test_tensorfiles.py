"""Inspecting and converting weights files: views, storages, dtypes, formats, atomic writes."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ptm_cli import tensorio
from ptm_cli.cache.catalog import Catalog
from ptm_cli.commands.cmd_weights import tensor_rows, totals
from ptm_cli.errors import MissingDependency, OutputError, UsageError, WeightsError
from ptm_cli.nets import architectures
from ptm_cli.tensorio import convert, h5, safetensors_io
from ptm_cli.tensorio.filetypes import detect_format
from ptm_cli.tensorio.inspection import Inspection, TensorInfo, inspect_file

h5py = pytest.importorskip("h5py")

# --- checkpoints with known layouts ------------------------------------------------------


def layout_state() -> dict[str, torch.Tensor]:
    """Views and copies as in the book's chapter 3, each one a fact inspect_file must report."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    points = torch.tensor([[4.0, 1.0], [5.0, 3.0], [2.0, 1.0]], dtype=torch.float64)
    return {
        "base": base,  # storage s0: 24 float32 = 96 bytes
        "transposed": base.t(),  # same storage, stride (1, 6): not contiguous
        "tail": base[2:],  # same storage, offset 2 * 6 = 12, contiguous
        "tied": base,  # the very same tensor under a second name
        "points": points,  # float64, as in the book
        "short": torch.tensor([1, 2, -3], dtype=torch.int16),
        "half_brain": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "mask": torch.tensor([True, False, True]),
    }


def bit_patterns() -> dict[str, torch.Tensor]:
    """Every supported dtype, with the values a float conversion would lose: NaN payloads, -0.0, inf."""
    f32_bits = torch.tensor([0x7FC00001, 0x7F800001, -0x80000000, 0x7F800000, 0x3F800000], dtype=torch.int32)
    f64_bits = torch.tensor([0x7FF8000000000123, -0x8000000000000000, 0x7FF0000000000000], dtype=torch.int64)
    f16_bits = torch.tensor([0x7E01, -0x8000, 0x7C00, 0x3C00], dtype=torch.int16)
    bf16_bits = torch.tensor([0x7FC1, -0x8000, 0x7F80, 0x3F80, 0x7F81], dtype=torch.int16)
    generator = torch.Generator().manual_seed(0)
    return {
        "f32": f32_bits.view(torch.float32),
        "f64": f64_bits.view(torch.float64),
        "f16": f16_bits.view(torch.float16),
        "bf16": bf16_bits.view(torch.bfloat16),
        "f8_e4m3": torch.tensor([0x7F, 0x80, 0x01, 0x38], dtype=torch.uint8).view(torch.float8_e4m3fn),
        "f8_e5m2": torch.tensor([0x7E, 0x80, 0x7C, 0x3C], dtype=torch.uint8).view(torch.float8_e5m2),
        "i64": torch.tensor([-(2**63), 2**63 - 1, 0]),
        "i32": torch.tensor([-(2**31), 2**31 - 1], dtype=torch.int32),
        "i16": torch.tensor([-(2**15), 2**15 - 1], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "flag": torch.tensor([[True, False], [False, True]]),
        "scalar": torch.tensor(math.pi, dtype=torch.float64),
        "empty": torch.empty(0, 3),
        "weights": torch.randn(3, 5, generator=generator),
        "layer.0.weight": torch.randn(2, 2, generator=generator, dtype=torch.float64),
    }


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bytes, so NaN payloads and -0.0 compare exactly."""
    return tensor.contiguous().view(torch.uint8) if tensor.dim() else tensor.reshape(1).view(torch.uint8)


def assert_bit_identical(
    got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], *, ordered: bool = True
) -> None:
    assert list(got) == list(expected) if ordered else sorted(got) == sorted(expected)
    for key, want in expected.items():
        have = got[key]
        assert have.dtype == want.dtype, key
        assert have.shape == want.shape, key
        assert torch.equal(bits(have), bits(want)), key


def save(state: dict[str, Any], path: Path, **kwargs: Any) -> Path:
    torch.save(state, path, **kwargs)
    return path


def by_name(inspection: Inspection) -> dict[str, TensorInfo]:
    return {t.name: t for t in inspection.tensors}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


# --- importing -----------------------------------------------------------------------------


def test_import_loads_no_heavy_package() -> None:
    code = (
        "import sys, ptm_cli.tensorio, ptm_cli.tensorio.inspection, ptm_cli.tensorio.convert; "
        "print([m for m in ('torch', 'numpy', 'h5py', 'safetensors') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- inspecting .pth ---------------------------------------------------------------------------


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_inspect_pth_reports_every_view_fact(tmp_path: Path, zipped: bool) -> None:
    path = save(layout_state(), tmp_path / "layout.pth", _use_new_zipfile_serialization=zipped)
    inspection = inspect_file(path)
    info = by_name(inspection)

    assert inspection.format == "pth"
    assert list(info) == list(layout_state())
    base, transposed, tail, tied = info["base"], info["transposed"], info["tail"], info["tied"]
    assert (base.shape, base.stride, base.storage_offset, base.is_contiguous) == ((4, 6), (6, 1), 0, True)
    assert (transposed.shape, transposed.stride, transposed.storage_offset) == ((6, 4), (1, 6), 0)
    assert transposed.is_contiguous is False
    assert (tail.shape, tail.stride, tail.storage_offset, tail.is_contiguous) == ((2, 6), (6, 1), 12, True)
    assert (tail.numel, tail.nbytes) == (12, 48)
    # One storage under four names, 96 bytes; tied is an alias, the others are different views.
    assert {base.storage, transposed.storage, tail.storage, tied.storage} == {base.storage}
    assert all(t.storage_nbytes == 96 for t in (base, transposed, tail, tied))
    assert base.shares_with == ["transposed", "tail", "tied"]
    assert tail.shares_with == ["base", "transposed", "tied"]
    assert (tied.alias_of, base.alias_of, transposed.alias_of, tail.alias_of) == ("base", None, None, None)

    others = [info[n] for n in ("points", "short", "half_brain", "mask")]
    assert len({t.storage for t in others} | {base.storage}) == 5
    assert all(t.shares_with == [] and t.alias_of is None and t.is_contiguous for t in others)
    assert [t.dtype for t in others] == ["float64", "int16", "bfloat16", "bool"]
    assert [(t.numel, t.nbytes, t.storage_nbytes) for t in others] == [(6, 48, 48), (3, 6, 6), (2, 4, 4), (3, 3, 3)]
    assert info["points"].stride == (2, 1)


def test_inspect_pth_totals(tmp_path: Path) -> None:
    inspection = inspect_file(save(layout_state(), tmp_path / "layout.pth"))
    # Floating elements, the alias counted once: base 24 + transposed 24 + tail 12 + points 6 + bf16 2.
    assert inspection.num_params == 68
    assert inspection.total_numel == 24 * 3 + 12 + 6 + 3 + 2 + 3
    assert inspection.tensor_nbytes == 96 * 3 + 48 + 48 + 6 + 4 + 3
    assert inspection.bytes_by_dtype == {"float32": 336, "float64": 48, "int16": 6, "bfloat16": 4, "bool": 3}
    assert inspection.num_storages == 5
    assert inspection.storage_nbytes == 96 + 48 + 6 + 4 + 3  # the shared storage once


def test_rows_and_summary_are_flat_records(tmp_path: Path) -> None:
    inspection = inspect_file(save(layout_state(), tmp_path / "layout.pth"))
    rows = {r["name"]: r for r in tensor_rows(inspection, as_text=True)}
    assert rows["transposed"] == {
        "name": "transposed",
        "shape": "6x4",
        "dtype": "float32",
        "numel": 24,
        "bytes": 96,
        "stride": "(1, 6)",
        "offset": 0,
        "contiguous": False,
        "storage": rows["base"]["storage"],
        "shares_with": "base, tail, tied",
    }
    assert rows["short"]["stride"] == "(1,)" and rows["short"]["shares_with"] == ""
    # JSON gets arrays a jq user can index, not text.
    arrays = {r["name"]: r for r in tensor_rows(inspection, as_text=False)}
    assert arrays["transposed"]["shape"] == [6, 4] and arrays["transposed"]["stride"] == [1, 6]
    assert arrays["transposed"]["shares_with"] == ["base", "tail", "tied"]
    assert arrays["short"]["stride"] == [1] and arrays["short"]["shares_with"] == []
    record = totals(inspection)
    assert record["tensors"] == 8 and record["storages"] == 5 and record["storage_bytes"] == 157
    assert record["format"] == "pth" and record["file_bytes"] == inspection.path.stat().st_size
    json.dumps(record)  # a record the CLI can print as it is


def test_inspect_scalar_and_empty(tmp_path: Path) -> None:
    path = save({"pi": torch.tensor(3.0), "none": torch.empty(0, 4)}, tmp_path / "odd.pth")
    info = by_name(inspect_file(path))
    assert (info["pi"].shape, info["pi"].stride, info["pi"].numel) == ((), (), 1)
    assert (info["none"].numel, info["none"].nbytes) == (0, 0)
    assert info["pi"].storage != info["none"].storage
    assert tensor_rows(inspect_file(path), as_text=True)[0]["shape"] == "scalar"
    assert tensor_rows(inspect_file(path), as_text=False)[0]["shape"] == []


def test_inspect_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        inspect_file(tmp_path / "nothing.pth")


# --- inspecting .safetensors (header only) -------------------------------------------------------


def write_safetensors(path: Path, state: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    save_file(state, str(path))
    return path


def test_inspect_safetensors_reads_the_header_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = {
        "a": torch.zeros(3, 4),
        "b": torch.zeros(2, dtype=torch.float64),
        "c": torch.zeros(5, dtype=torch.int16),
        "d": torch.zeros(1, dtype=torch.bfloat16),
    }
    path = write_safetensors(tmp_path / "m.safetensors", state)
    header, start = safetensors_io.read_header(path)
    # Cut the data section short: nothing but the header is left to read.
    with path.open("r+b") as stream:
        stream.truncate(start + 4)

    import safetensors
    import safetensors.torch

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("inspection must not load tensor data")

    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors.torch, "safe_open", refuse)

    inspection = inspect_file(path)
    info = by_name(inspection)
    assert inspection.format == "safetensors"
    assert set(info) == set(state)
    for name, tensor in state.items():
        begin, end = header[name]["data_offsets"]
        got = info[name]
        assert (got.shape, got.dtype, got.numel) == (tuple(tensor.shape), str(tensor.dtype)[6:], tensor.numel())
        assert got.stride == tensor.stride() and got.is_contiguous
        assert got.nbytes == got.storage_nbytes == end - begin
        assert got.storage_offset == begin // tensor.element_size()
        assert got.shares_with == [] and got.alias_of is None
    assert inspection.num_storages == 4
    assert inspection.storage_nbytes == 48 + 16 + 10 + 2
    assert len(inspection.warnings) == 1 and "truncated" in inspection.warnings[0]


def test_inspect_safetensors_needs_no_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", {"w": torch.ones(2, 2)})
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    assert by_name(inspect_file(path))["w"].shape == (2, 2)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x05\x00", struct.pack("<Q", 10**12) + b"{}", struct.pack("<Q", 4) + b"nope", struct.pack("<Q", 2) + b"[]"],
    ids=["empty", "short", "huge-length", "not-json", "not-object"],
)
def test_damaged_safetensors_header(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="damaged"):
        inspect_file(path)


def test_safetensors_entry_sizes_are_checked(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}).encode()
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(WeightsError, match="takes 12 bytes"):
        inspect_file(path)


# --- HDF5 ------------------------------------------------------------------------------------------


def test_h5_keys_round_trip_even_when_they_are_prefixes(tmp_path: Path) -> None:
    keys = ["a", "a.b", "a.b.c", "model.1.weight", "x/y", "100%", ".", "..", "", "%2F", "é.weight"]
    state = {k: torch.full((2,), float(i)) for i, k in enumerate(keys)}
    src = save(state, tmp_path / "keys.pth")
    report = convert.convert_file(src, tmp_path / "keys.h5")
    assert report.dst_format == "h5"
    assert_bit_identical(h5.load(tmp_path / "keys.h5"), state)
    with h5py.File(tmp_path / "keys.h5", "r") as handle:
        assert handle.attrs["ptm_format"] == h5.FORMAT
        assert list(handle) == [h5.dataset_name(k) for k in keys]  # flat, in state-dict order
        assert handle["a.b"].attrs["ptm_key"] == "a.b" and handle["x%2Fy"].attrs["ptm_key"] == "x/y"
    assert len({h5.dataset_name(k) for k in keys}) == len(keys)


def test_h5_bfloat16_is_raw_uint16_with_a_tag(tmp_path: Path) -> None:
    state = {"w": bit_patterns()["bf16"]}
    convert.convert_file(save(state, tmp_path / "b.pth"), tmp_path / "b.h5")
    with h5py.File(tmp_path / "b.h5", "r") as handle:
        assert handle["w"].dtype.name == "uint16" and handle["w"].attrs["ptm_dtype"] == "bfloat16"
    info = by_name(inspect_file(tmp_path / "b.h5"))["w"]
    assert (info.dtype, info.nbytes, info.shape) == ("bfloat16", 10, (5,))
    assert_bit_identical(h5.load(tmp_path / "b.h5"), state)


def test_h5_written_by_other_tools(tmp_path: Path) -> None:
    import numpy as np

    path = tmp_path / "foreign.hdf5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("coords", data=np.arange(6, dtype=">f4").reshape(3, 2))  # big-endian on disk
        handle.create_dataset("block/conv/weight", data=np.ones((2, 2), dtype=np.int16))
    state = tensorio.load_state_dict(path)
    assert list(state) == ["block.conv.weight", "coords"]
    assert torch.equal(state["coords"], torch.arange(6, dtype=torch.float32).reshape(3, 2))
    assert state["block.conv.weight"].dtype == torch.int16
    info = by_name(inspect_file(path))
    assert info["coords"].stride == (2, 1) and info["coords"].storage != info["block.conv.weight"].storage


def test_h5_text_datasets_are_reported_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "mixed.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("w", data=[1.0, 2.0])
        handle.create_dataset("note", data="not a tensor")
    inspection = inspect_file(path)
    assert [t.name for t in inspection.tensors] == ["w"]
    assert "note" in inspection.warnings[0]
    with pytest.raises(WeightsError, match="note"):
        h5.load(path)


def test_missing_h5py_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = save({"w": torch.ones(2)}, tmp_path / "w.pth")
    convert.convert_file(src, tmp_path / "w.h5")
    monkeypatch.setitem(sys.modules, "h5py", None)  # `import h5py` now raises ImportError
    for action in (
        lambda: convert.convert_file(src, tmp_path / "again.h5"),
        lambda: inspect_file(tmp_path / "w.h5"),
        lambda: tensorio.load_state_dict(tmp_path / "w.h5"),
    ):
        with pytest.raises(MissingDependency, match=r"pip install 'ptm\[h5\]'"):
            action()
    assert not (tmp_path / "again.h5").exists() and leftovers(tmp_path) == []


def test_missing_safetensors_for_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = save({"w": torch.ones(2)}, tmp_path / "w.pth")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(MissingDependency, match=r"pip install 'ptm\[safetensors\]'"):
        convert.convert_file(src, tmp_path / "w.safetensors")


# --- converting ---------------------------------------------------------------------------------------


def test_round_trip_through_every_format_is_bit_identical(tmp_path: Path) -> None:
    state = bit_patterns()
    src = save(state, tmp_path / "start.pth")
    convert.convert_file(src, tmp_path / "a.safetensors")
    convert.convert_file(tmp_path / "a.safetensors", tmp_path / "b.h5")
    convert.convert_file(tmp_path / "b.h5", tmp_path / "c.pth")
    for step in ("a.safetensors", "b.h5", "c.pth"):
        assert_bit_identical(tensorio.load_state_dict(tmp_path / step), state)
    # And the other way round.
    convert.convert_file(tmp_path / "c.pth", tmp_path / "d.h5")
    convert.convert_file(tmp_path / "d.h5", tmp_path / "e.safetensors")
    convert.convert_file(tmp_path / "e.safetensors", tmp_path / "f.pt")
    assert_bit_identical(tensorio.load_state_dict(tmp_path / "f.pt"), state)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".h5"])
def test_views_are_written_compact(tmp_path: Path, suffix: str) -> None:
    state = layout_state()
    dst = tmp_path / f"out{suffix}"
    report = convert.convert_file(save(state, tmp_path / "layout.pth"), dst)
    assert report.made_contiguous == ["transposed"]
    assert report.compacted == ["tail"]
    assert_bit_identical(tensorio.load_state_dict(dst), state)
    info = by_name(inspect_file(dst))
    assert info["transposed"].is_contiguous and info["transposed"].stride == (4, 1)
    assert info["tail"].storage_offset == 0 or suffix == ".safetensors"  # there: its place in the data section
    assert info["tail"].storage_nbytes == 48
    if suffix == ".pth":
        # Tied weights stay one storage; every other tensor has a storage of its own, exactly its size.
        assert report.aliases_kept == [("tied", "base")] and report.duplicated == []
        assert info["tied"].alias_of == "base" and info["base"].shares_with == ["tied"]
        assert inspect_file(dst).storage_nbytes == 96 + 96 + 48 + 48 + 6 + 4 + 3
    else:
        assert report.duplicated == [("tied", "base")] and report.aliases_kept == []
        assert all(t.shares_with == [] for t in info.values())


def test_pth_alias_loads_tied_again(tmp_path: Path) -> None:
    convert.convert_file(save(layout_state(), tmp_path / "layout.pth"), tmp_path / "out.pth")
    loaded = tensorio.load_state_dict(tmp_path / "out.pth")
    assert loaded["tied"].untyped_storage().data_ptr() == loaded["base"].untyped_storage().data_ptr()
    assert loaded["tail"].untyped_storage().data_ptr() != loaded["base"].untyped_storage().data_ptr()


def test_slice_alone_is_saved_without_its_base(tmp_path: Path) -> None:
    # The book's warning: saving a slice saves its whole storage. Converting writes only the slice.
    big = torch.zeros(1000, 10)
    src = save({"row": big[500]}, tmp_path / "row.pth")
    assert inspect_file(src).storage_nbytes == 40_000
    report = convert.convert_file(src, tmp_path / "row2.pth")
    assert report.compacted == ["row"]
    assert inspect_file(tmp_path / "row2.pth").storage_nbytes == 40
    assert report.bytes_written < src.stat().st_size // 10


@pytest.mark.parametrize(
    ("dtype", "target"), [("fp16", torch.float16), ("bf16", torch.bfloat16), ("FP32", torch.float32)]
)
def test_dtype_casts_floating_tensors_only(tmp_path: Path, dtype: str, target: torch.dtype) -> None:
    state = layout_state()
    report = convert.convert_file(save(state, tmp_path / "layout.pth"), tmp_path / "cast.pth", dtype=dtype)
    loaded = tensorio.load_state_dict(tmp_path / "cast.pth")
    for key, original in state.items():
        if original.is_floating_point():
            assert loaded[key].dtype == target, key
            assert torch.equal(loaded[key], original.to(target)), key
        else:
            assert loaded[key].dtype == original.dtype and torch.equal(loaded[key], original), key
    assert report.cast == [k for k, v in state.items() if v.is_floating_point() and v.dtype != target]
    assert report.dtype == str(target)[6:]
    if target != torch.float32:
        assert report.aliases_kept == [("tied", "base")]  # the cast copy is still shared by both names


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_converted_files_load_through_weights(tmp_path: Path, suffix: str) -> None:
    state = bit_patterns()
    dst = tmp_path / f"w{suffix}"
    convert.convert_file(save(state, tmp_path / "w0.pth"), dst)
    # The state dict's own order comes back from safetensors too (ptm records it in the header).
    assert_bit_identical(tensorio.load_state_dict(dst), state, ordered=True)


def test_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    src = save({"w": torch.ones(3)}, tmp_path / "w.pth")
    dst = tmp_path / "w.safetensors"
    dst.write_bytes(b"keep me")
    dst.chmod(0o640)
    with pytest.raises(OutputError, match="already exists"):
        convert.convert_file(src, dst)
    assert dst.read_bytes() == b"keep me"
    report = convert.convert_file(src, dst, force=True)
    assert report.bytes_written == dst.stat().st_size
    assert_bit_identical(tensorio.load_state_dict(dst), {"w": torch.ones(3)})
    assert leftovers(tmp_path) == []
    assert dst.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its mode


def test_converting_in_place_with_force(tmp_path: Path) -> None:
    path = save({"w": torch.ones(3, dtype=torch.float64)}, tmp_path / "w.pth")
    convert.convert_file(path, path, dtype="fp32", force=True)
    assert tensorio.load_state_dict(path)["w"].dtype == torch.float32


def test_unsupported_dtype_writes_nothing(tmp_path: Path) -> None:
    src = save({"ok": torch.ones(2), "z": torch.ones(2, dtype=torch.complex64)}, tmp_path / "c.pth")
    for suffix in (".pth", ".safetensors", ".h5"):
        with pytest.raises(WeightsError, match="'z' is complex64"):
            convert.convert_file(src, tmp_path / f"out{suffix}")
        assert not (tmp_path / f"out{suffix}").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".h5"])
def test_failing_writer_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    src = save({"w": torch.ones(1000)}, tmp_path / "w.pth")
    fmt = detect_format(Path(f"x{suffix}"))
    real = convert._WRITERS[fmt]

    def half_then_fail(tensors: dict[str, torch.Tensor], path: Path) -> None:
        real(tensors, path)
        with path.open("r+b") as stream:
            stream.truncate(path.stat().st_size // 2)
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(convert._WRITERS, fmt, half_then_fail)
    dst = tmp_path / f"out{suffix}"
    with pytest.raises(OutputError, match="disk on fire"):
        convert.convert_file(src, dst)
    assert not dst.exists()
    dst.write_bytes(b"old")
    with pytest.raises(OutputError, match="disk on fire"):
        convert.convert_file(src, dst, force=True)
    assert dst.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_write_errors_become_output_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(tensors: dict[str, torch.Tensor], path: Path) -> None:
        path.write_bytes(b"x")
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(convert._WRITERS, "pth", full_disk)
    src = save({"w": torch.ones(2)}, tmp_path / "w.pth")
    with pytest.raises(OutputError, match="No space left"):
        convert.convert_file(src, tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists() and leftovers(tmp_path) == []


def test_usage_errors(tmp_path: Path) -> None:
    src = save({"w": torch.ones(2)}, tmp_path / "w.pth")
    with pytest.raises(UsageError, match=r"\.safetensors"):
        convert.convert_file(src, tmp_path / "w.npz")
    with pytest.raises(UsageError, match="bf16, fp16 or fp32"):
        convert.convert_file(src, tmp_path / "w.h5", dtype="int8")
    with pytest.raises(UsageError, match="folder"):
        convert.convert_file(src, tmp_path)
    with pytest.raises(OutputError, match="does not exist"):
        convert.convert_file(src, tmp_path / "no" / "such.pth")


def test_load_any_goes_through_the_safe_loader(tmp_path: Path) -> None:
    wrapped = save({"state_dict": {"module.w": torch.ones(2)}, "epoch": 3}, tmp_path / "ckpt.pth")
    assert list(tensorio.load_state_dict(wrapped)) == ["w"]
    assert detect_format(tmp_path / "ckpt.pth") == "pth"
    convert.convert_file(wrapped, tmp_path / "plain.h5")
    os.replace(tmp_path / "plain.h5", tmp_path / "plain.weights")  # no telling suffix: sniffed
    assert detect_format(tmp_path / "plain.weights") == "h5"
    assert list(tensorio.load_state_dict(tmp_path / "plain.weights")) == ["w"]


# --- matching an architecture ---------------------------------------------------------------------------


def test_match_architecture_finds_resnet18(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    path = save(model.state_dict(), tmp_path / "r18.pth")
    catalog = Catalog.load()
    assert architectures.match_architecture(inspect_file(path), catalog) == "resnet18"
    # The same facts from the header of a safetensors copy.
    convert.convert_file(path, tmp_path / "r18.safetensors")
    assert architectures.match_architecture(inspect_file(tmp_path / "r18.safetensors"), catalog) == "resnet18"


def test_match_architecture_none_for_other_dicts(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    state = {"encoder.weight": torch.randn(64, 32, generator=generator), "encoder.bias": torch.randn(64)}
    inspection = inspect_file(save(state, tmp_path / "random.pth"))
    assert architectures.match_architecture(inspection, Catalog.load(), exhaustive=True) is None


def test_match_architecture_needs_exact_shapes(tmp_path: Path) -> None:
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    state["fc.weight"] = state["fc.weight"][:, :-1].clone()  # same keys, one shape off
    inspection = inspect_file(save(state, tmp_path / "r18.pth"))
    assert architectures.match_architecture(inspection, Catalog.load(), exhaustive=True) is None


def test_match_architecture_finds_the_cyclegan_generator(tmp_path: Path) -> None:
    from ptm_cli.nets.cyclegan import build_generator

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_generator().state_dict().items()}
    state = {k: torch.zeros(shape) for k, shape in shapes.items()}
    inspection = inspect_file(save(state, tmp_path / "g.pth"))
    assert architectures.match_architecture(inspection, Catalog.load()) == "cyclegan_resnet9"
