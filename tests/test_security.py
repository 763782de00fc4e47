"""Round two of the attacker's afternoon: weights files that reach outside themselves, hostile headers,
special output files, unbounded options and inputs, and messages that must say what to do.

Every test builds its own hostile file and runs it through the real command a user would type.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from helpers import run_ptm

h5py = pytest.importorskip("h5py")
np = pytest.importorskip("numpy")


def plain_h5(path: Path) -> Path:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("weight", data=np.arange(6, dtype="float32").reshape(2, 3))
    return path


def assert_refused(result: object, *words: str) -> None:
    code, stderr = result.code, result.stderr  # type: ignore[attr-defined]
    assert code == 2, stderr
    assert stderr.startswith("ptm: error: ") and len(stderr.strip().splitlines()) == 1, stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in stderr, stderr


# --- #1, #8: HDF5 files that read bytes they do not hold -----------------------------------------


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


@pytest.mark.parametrize(
    "make", [h5_external_storage, h5_relative_external_storage, h5_external_link, h5_virtual]
)
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


# --- #8, #14: hostile safetensors headers and tensors of the wrong kind ----------------------------


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


def kinds() -> dict[str, object]:
    return {
        "integer": lambda t: t.round().to(torch.int32),
        "complex": lambda t: t.to(torch.complex64),
        "boolean": lambda t: t > 0,
        "sparse": lambda t: t.to_sparse(),
        "quantized": quantized,
    }


def quantized(tensor: torch.Tensor) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized tensors are deprecated, which is the point
        return torch.quantize_per_tensor(tensor, 0.1, 0, torch.qint8)


@pytest.mark.parametrize("kind", list(kinds()))
def test_tensors_of_the_wrong_kind_are_refused_before_running(tmp_path: Path, kind: str) -> None:
    from helpers import seeded_state_dict

    state = seeded_state_dict("resnet18")
    state["conv1.weight"] = kinds()[kind](state["conv1.weight"])  # type: ignore[operator]
    weights = tmp_path / "w.pth"
    torch.save(state, weights)
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "x.png")
    result = run_ptm(["classify", "-m", "resnet18", "-w", str(weights), str(tmp_path / "x.png")])
    assert_refused(result, "conv1.weight", "do not fit")
    assert result.stdout == ""
