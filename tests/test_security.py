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
from helpers import run_ptm, save_generator

h5py = pytest.importorskip("h5py")
np = pytest.importorskip("numpy")


def plain_h5(path: Path) -> Path:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("weight", data=np.arange(6, dtype="float32").reshape(2, 3))
    return path


def assert_refused(result: object, *words: str) -> None:
    code, stderr = result.code, result.stderr  # type: ignore[attr-defined]
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    # One error line, last; a download may have announced itself before it.
    assert lines and lines[-1].startswith("ptm: error: "), stderr
    assert all(not line.startswith("ptm: ") for line in lines[:-1]), stderr
    stderr = lines[-1]
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


# --- #5, #16: names from data are never markup, formulas are defused, big tables stream ------------


@pytest.fixture
def tiny(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from helpers import TINY_TOML, informative_state_dict

    folder = tmp_path_factory.mktemp("tiny")
    torch.save(informative_state_dict(), folder / "tiny.pth")
    (folder / "labels.txt").write_text("apple\nbanana\ncherry\ndate\n")
    (folder / "tiny.toml").write_text(TINY_TOML)
    monkeypatch.setenv("PTM_CATALOG", str(folder / "tiny.toml"))
    return ["classify", "-m", "tiny", "-w", str(folder / "tiny.pth")]


# "a[/b].png" is a file "b].png" in a folder "a[".
MARKUP_NAMES = ["scan [b].jpg", "a[/b].png", "[link=https:example]x.png", "[bold red]y.png", ":smile:.png"]


def test_file_names_with_markup_are_shown_verbatim_in_tables(tiny: list[str], tmp_path: Path) -> None:
    from PIL import Image

    paths = []
    (tmp_path / "a[").mkdir()
    for index, name in enumerate(MARKUP_NAMES):
        Image.new("RGB", (40, 40), (index * 40, 90, 200)).save(tmp_path / name, format="PNG")
        paths.append(str(tmp_path / name))
    escape_name = tmp_path / "\x1b[2Jcleared.png"
    Image.new("RGB", (40, 40)).save(escape_name, format="PNG")
    result = run_ptm([*tiny, "-f", "table", "-k", "1", *paths, str(escape_name)])
    assert result.code == 0, result.stderr
    for name in MARKUP_NAMES:
        assert name in result.stdout
    assert "\x1b" not in result.stdout and "\\x1b[2Jcleared.png" in result.stdout
    assert "]8;" not in result.stdout  # no terminal hyperlink was made


def test_tensor_names_with_markup_are_shown_verbatim(tmp_path: Path) -> None:
    names = ["[bold]w[/bold]", "a[/b]", "[link=http://127.0.0.1:9/]hidden[/link]"]
    torch.save({name: torch.zeros(2) for name in names}, tmp_path / "w.pth")
    result = run_ptm(["weights", "inspect", str(tmp_path / "w.pth"), "-f", "table"])
    assert result.code == 0, result.stderr
    for name in names:
        assert name in result.stdout


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_csv_and_tsv_defuse_spreadsheet_formulas_in_names(
    tiny: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    import csv
    import io

    from PIL import Image

    names = ["=HYPERLINK(1).png", "+1+1.png", "-2+3.png", "@SUM(1).png", "\tx.png", "plain.png"]
    for name in names:
        Image.new("RGB", (40, 40), "blue").save(tmp_path / name, format="PNG")
    monkeypatch.chdir(tmp_path)
    result = run_ptm([*tiny, "-f", fmt, "-k", "1", "--", *names])
    assert result.code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout, newline=""), delimiter="," if fmt == "csv" else "\t"))
    assert [row["input"] for row in rows] == ["'" + n for n in names[:-1]] + ["plain.png"]
    assert all(float(row["probability"]) > 0 for row in rows)


def test_csv_cells_that_start_like_formulas_get_a_quote_and_json_is_untouched() -> None:
    import csv
    import io

    from ptm_cli.output.records import RecordWriter

    names = ["=1+2", "+1", "-1", "@A1", "\t=1", "\r=1", "ok", "a=b"]
    for fmt, delimiter in (("csv", ","), ("tsv", "\t")):
        stream = io.StringIO()
        with RecordWriter(stream, fmt, columns=["input", "probability"]) as writer:
            for name in names:
                writer.write({"input": name, "probability": -0.5})
        rows = list(csv.DictReader(io.StringIO(stream.getvalue(), newline=""), delimiter=delimiter))
        assert [row["input"] for row in rows] == ["'=1+2", "'+1", "'-1", "'@A1", "'\t=1", "'\r=1", "ok", "a=b"]
        assert stream.getvalue().count("\n") == len(names) + 1 and "\r\n" not in stream.getvalue()
        assert {row["probability"] for row in rows} == {"-0.5"}  # numbers are data, not formulas
    stream = io.StringIO()
    with RecordWriter(stream, "jsonl", columns=["input"]) as writer:
        for name in names:
            writer.write({"input": name})
    assert [json.loads(line)["input"] for line in stream.getvalue().splitlines()] == names


def test_a_big_table_is_drawn_line_by_line_exactly_as_rich_draws_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from ptm_cli.output import records as output

    rows = [
        {"model": f"m{i}[x]", "weights": "W" * (i % 7), "params": i * 1001, "acc1": 0.5 + i, "cached": i % 2 == 0}
        for i in range(300)
    ]
    rows.append({"model": "wide 猫 名前", "weights": "\x1b[31m", "params": None, "acc1": -1.25, "cached": None})

    def draw() -> str:
        stream = io.StringIO()
        with output.RecordWriter(stream, "table", columns=["model", "weights", "params", "acc1", "cached"]) as w:
            for row in rows:
                w.write(row)
        return stream.getvalue()

    monkeypatch.setattr(output, "RICH_TABLE_ROWS", 10_000)
    by_rich = draw()
    monkeypatch.setattr(output, "RICH_TABLE_ROWS", 10)
    assert draw() == by_rich


def test_models_table_of_a_huge_catalog_never_builds_a_rich_table(tmp_path: Path) -> None:
    import subprocess
    import sys

    catalog = tmp_path / "big.toml"
    catalog.write_text(
        "".join(
            f'[[model]]\nname = "m{i:05d}"\narchitecture = "resnet18"\nnum_params = {i + 1}\n\n' for i in range(3000)
        )
    )
    code = (
        "import sys; from ptm_cli.cli import run; code = run(['models', '-f', 'table']); "
        "sys.stderr.write(repr([code, 'rich.table' in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env={**os.environ, "PTM_CATALOG": str(catalog)}, timeout=120
    )
    assert done.stderr.decode().endswith("[0, False]"), done.stderr
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 1 + 3000 + len([e for e in lines if not e.startswith(("m0", "model"))])
    assert [line.split()[0] for line in lines if line.startswith("m0")][:2] == ["m00000", "m00001"]


# --- #3, #6, #15, #17: the cache and its downloads ------------------------------------------------


@pytest.fixture
def server() -> object:
    from http_server import FixtureServer

    with FixtureServer() as running:
        yield running


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PTM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def net_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from helpers import save_weights

    return save_weights(
        tmp_path_factory.mktemp("w") / "net.pth", "mobilenet_v3_small", seed=4, num_classes=3
    ).read_bytes()


def catalog_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, extra: str = "") -> None:
    """A user catalog with one unhashed mobilenet_v3_small entry named "loose" (as the shipped CycleGANs are)."""
    catalog = tmp_path / "served.toml"
    catalog.write_text(
        f'[[model]]\nname = "loose"\nurl = "{url}"\narchitecture = "mobilenet_v3_small"\nnum_classes = 3\n'
        f'labels = "labels.txt"\n{extra}'
    )
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    monkeypatch.setenv("PTM_CATALOG", str(catalog))


@pytest.mark.parametrize(
    "name", ["ptm-pins.json", "PTM-PINS.JSON", "x.pth.lock", "ptm-pins.json.lock", "a.part", ".hidden.pth"]
)
def test_catalog_file_names_never_reach_the_caches_own_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object, net_bytes: bytes, name: str
) -> None:
    # A real pin for another entry, which `weights rm` must never lose.
    good_url = server.serve("/good.pth", net_bytes)  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, good_url)
    assert run_ptm(["weights", "download", "loose"]).code == 0
    pins = (cache / "ptm-pins.json").read_bytes()
    lock = cache / "x.pth.lock"
    lock.write_bytes(b"")
    catalog = tmp_path / "evil.toml"
    catalog.write_text(f'[[model]]\nname = "evil"\narchitecture = "resnet18"\nurl = "{server.url}/dir/{name}"\n')  # type: ignore[attr-defined]
    monkeypatch.setenv("PTM_CATALOG", f"{tmp_path / 'served.toml'}:{catalog}")
    for args in (
        ["weights", "rm", "evil", "--forget-pin"],
        ["weights", "download", "evil"],
        ["weights", "path", "evil"],
    ):
        assert_refused(run_ptm(args), repr(name), "file_name")
    assert (cache / "ptm-pins.json").read_bytes() == pins
    assert lock.exists()
    assert server.requests(f"/dir/{name}") == 0  # type: ignore[attr-defined]
    listed = run_ptm(["models", "-f", "jsonl"]).records()
    assert [r["cached"] for r in listed if r["model"] == "evil"] == [False]


def html_page() -> bytes:
    return b"<!doctype html><html><body>Sign in to continue</body></html>\n" * 40


@pytest.mark.parametrize("bad", ["html", "cut", "other_architecture", "empty"])
def test_a_bad_first_download_is_neither_saved_nor_pinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object, net_bytes: bytes, bad: str
) -> None:
    from helpers import save_weights

    if bad == "html":
        body = html_page()
    elif bad == "cut":
        body = net_bytes[: len(net_bytes) // 2]  # and a Content-Length that says so: nothing looks short
    elif bad == "other_architecture":
        body = save_weights(tmp_path / "r.pth", "resnet18", num_classes=3).read_bytes()
    else:
        body = b""
    url = server.serve("/loose.pth", body)  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, url)
    result = run_ptm(["weights", "download", "loose"])
    assert_refused(result, "not a usable weights file", "nothing was saved")
    assert not (cache / "loose.pth").exists()
    if (cache / "ptm-pins.json").exists():
        assert json.loads((cache / "ptm-pins.json").read_text())["pins"] == {}
    # The right file is accepted afterwards, and pinned then.
    server.serve("/loose.pth", net_bytes)  # type: ignore[attr-defined]
    assert run_ptm(["weights", "download", "loose"]).code == 0
    assert (cache / "loose.pth").read_bytes() == net_bytes
    assert len(json.loads((cache / "ptm-pins.json").read_text())["pins"]) == 1


def test_classify_checks_a_first_download_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object
) -> None:
    from PIL import Image

    url = server.serve("/loose.pth", html_page())  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, url)
    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    assert_refused(run_ptm(["classify", "-m", "loose", str(tmp_path / "x.png")]), "not a usable weights file")
    assert not (cache / "loose.pth").exists()


def test_an_import_without_a_full_hash_must_fit_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, net_bytes: bytes
) -> None:
    catalog_for(tmp_path, monkeypatch, "http://127.0.0.1:9/loose.pth")
    (tmp_path / "page.pth").write_bytes(html_page())
    assert_refused(run_ptm(["weights", "import", "loose", str(tmp_path / "page.pth")]), "is damaged")
    assert not (cache / "loose.pth").exists()
    (tmp_path / "good.pth").write_bytes(net_bytes)
    assert run_ptm(["weights", "import", "loose", str(tmp_path / "good.pth")]).code == 0


def test_every_pinned_hash_mismatch_says_how_to_forget_the_pin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object, net_bytes: bytes
) -> None:
    from helpers import save_weights

    url = server.serve("/loose.pth", net_bytes)  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, url)
    assert run_ptm(["weights", "download", "loose"]).code == 0
    other = save_weights(tmp_path / "v2.pth", "mobilenet_v3_small", seed=9, num_classes=3)
    advice = "ptm weights rm loose:DEFAULT --forget-pin"
    # the cached file changed
    (cache / "loose.pth").write_bytes(other.read_bytes())
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    assert_refused(run_ptm(["classify", "-m", "loose", str(tmp_path / "x.png")]), advice)
    # an import of another file
    assert_refused(run_ptm(["weights", "import", "loose", str(other)]), advice)
    # a download of another file
    (cache / "loose.pth").unlink()
    server.serve("/loose.pth", other.read_bytes())  # type: ignore[attr-defined]
    assert_refused(run_ptm(["weights", "download", "loose"]), advice)
    # and the advice works
    assert run_ptm(["weights", "rm", "loose", "--forget-pin"]).code == 0
    assert run_ptm(["weights", "download", "loose"]).code == 0


@pytest.mark.parametrize("length", ["announced", "unannounced"])
def test_a_body_far_larger_than_the_catalog_size_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object, length: str
) -> None:
    body = bytes(8 << 20)  # 8 MiB for an entry of about 0.1 MiB
    url = server.serve("/loose.pth", body, content_length=None if length == "announced" else "")  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, url, extra="size_mb = 0.1\n")
    result = run_ptm(["weights", "download", "loose"])
    assert_refused(result, "far more than")
    assert server.requests("/loose.pth") == 1  # type: ignore[attr-defined]
    assert not cache.exists() or [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_a_server_dripping_bytes_fails_within_a_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: object
) -> None:
    from ptm_cli.cache import download
    from ptm_cli.errors import DownloadError

    monkeypatch.setenv("PTM_DOWNLOAD_TIMEOUT", "0.5")  # each read waits at most this; the pace window too
    # 80 bytes, one every 0.2 s: every read returns in time, so only the average rate can stop it.
    url = server.serve("/drip.bin", bytes(80), chunk=1, chunk_delay=0.2)  # type: ignore[attr-defined]
    with pytest.raises(DownloadError, match="too slow"):
        download.download(url, tmp_path / "drip.bin", progress=False, attempts=1)
    assert not (tmp_path / "drip.bin").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_negative_content_length_shows_no_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object, net_bytes: bytes
) -> None:
    url = server.serve("/loose.pth", net_bytes, content_length="-5")  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, url)
    result = run_ptm(["weights", "download", "loose"])
    assert result.code == 0, result.stderr
    assert f"downloading loose.pth from {url}" in result.stderr
    assert "-0.0" not in result.stderr and " kB" not in result.stderr


def test_a_folder_in_the_caches_place_is_reported_before_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object, net_bytes: bytes
) -> None:
    url = server.serve("/loose.pth", net_bytes)  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, url)
    (cache / "loose.pth").mkdir(parents=True)
    assert_refused(run_ptm(["weights", "download", "loose"]), "is a folder", "remove it")
    assert_refused(run_ptm(["weights", "import", "loose", str(tmp_path / "labels.txt")]), "is a folder")
    assert server.requests() == 0  # type: ignore[attr-defined]


def test_importing_a_device_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    catalog_for(tmp_path, monkeypatch, "http://127.0.0.1:9/loose.pth", extra="size_mb = 1.0\n")
    assert_refused(run_ptm(["weights", "import", "loose", "/dev/zero"]), "device")
    assert_refused(run_ptm(["weights", "import", "loose", str(tmp_path / "nothing.pth")]), "no such file")


def test_an_endless_pipe_import_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    import subprocess

    catalog_for(tmp_path, monkeypatch, "http://127.0.0.1:9/loose.pth", extra="size_mb = 1.0\n")
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    feeder = subprocess.Popen(["sh", "-c", f"exec cat /dev/zero > '{fifo}'"])
    try:
        result = run_ptm(["weights", "import", "loose", str(fifo)])
    finally:
        feeder.kill()
        feeder.wait(timeout=10)
    assert_refused(result, "larger than")
    assert not (cache / "loose.pth").exists()


def test_weights_removed_while_in_use_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object, net_bytes: bytes
) -> None:
    from ptm_cli.cache import weights

    url = server.serve("/loose.pth", net_bytes)  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, url)
    assert run_ptm(["weights", "download", "loose"]).code == 0
    store = json.loads((cache / "ptm-pins.json").read_text())
    store["stamps"] = {}  # make the next use hash the file, which `weights rm` then races
    (cache / "ptm-pins.json").write_text(json.dumps(store))
    real = weights._hash_file

    def racing_rm(path: Path) -> object:
        assert run_ptm(["weights", "rm", "loose"]).code == 0
        return real(path)

    monkeypatch.setattr(weights, "_hash_file", racing_rm)
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    result = run_ptm(["classify", "-m", "loose", str(tmp_path / "x.png")])
    assert_refused(result, "was removed while ptm was using it", "run the command again")
    assert "permissions" not in result.stderr


def test_prune_removes_idle_lock_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, server: object, net_bytes: bytes
) -> None:
    import time

    url = server.serve("/loose.pth", net_bytes)  # type: ignore[attr-defined]
    catalog_for(tmp_path, monkeypatch, url)
    assert run_ptm(["weights", "download", "loose"]).code == 0
    locks = sorted(p.name for p in cache.iterdir() if p.name.endswith(".lock"))
    assert locks == ["loose.pth.lock", "ptm-pins.json.lock"]
    old = time.time() - 2 * 3600
    for name in locks:
        os.utime(cache / name, (old, old))
    result = run_ptm(["weights", "prune"])
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in cache.iterdir()) == ["loose.pth", "ptm-pins.json"]
    assert run_ptm(["weights", "verify", "loose"]).code == 0


def test_weights_inspect_name_means_the_catalog_not_a_file_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"planted": torch.zeros(1)}, tmp_path / "resnet18")
    result = run_ptm(["weights", "inspect", "resnet18", "-f", "jsonl"])
    assert result.code == 2 and "not downloaded yet" in result.stderr, result.stderr
    assert "planted" not in result.stdout
    spelled = run_ptm(["weights", "inspect", "./resnet18", "-f", "jsonl"])
    assert spelled.code == 0 and "planted" in spelled.stdout


# --- #4: OWNER/NAME always means GitHub ------------------------------------------------------------


@pytest.mark.parametrize("spec", ["someone/models", "someone/models:v1"])
def test_a_local_owner_name_folder_never_runs_as_a_hub_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str
) -> None:
    marker = tmp_path / "ran"
    planted = tmp_path / "someone" / "models"
    planted.mkdir(parents=True)
    (planted / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef model():\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PTM_OFFLINE", "1")  # the GitHub reading must not reach the network either
    for args in (["hub", "list", spec], ["hub", "load", spec, "model"]):
        result = run_ptm(args)
        assert result.code == 2, result.stderr
        assert "Traceback" not in result.stderr
    assert not marker.exists()
    from ptm_cli import hub

    assert hub.parse_repo(spec).source == "github"
    assert hub.parse_repo(f"./{spec.split(':')[0]}").source == "local"


# --- #9, #13: catalogs and non-finite output ------------------------------------------------------


def strict_json(line: str) -> object:
    def refuse(name: str) -> None:
        raise AssertionError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


def test_nan_logits_give_an_error_record_and_valid_json(tiny: list[str], tmp_path: Path) -> None:
    from helpers import informative_state_dict
    from PIL import Image

    state = informative_state_dict()
    last_bias = [k for k in state if k.endswith(".bias")][-1]
    state[last_bias] = torch.full_like(state[last_bias], float("nan"))
    torch.save(state, tmp_path / "nan.pth")
    for index in range(2):
        Image.new("RGB", (40, 40), (index * 90, 10, 10)).save(tmp_path / f"{index}.png")
    args = [*tiny[:-1], str(tmp_path / "nan.pth"), str(tmp_path / "0.png"), str(tmp_path / "1.png")]
    for fmt in ("jsonl", "json"):
        result = run_ptm([*args, "-f", fmt])
        assert result.code == 1, result.stderr
        records = (
            [strict_json(line) for line in result.stdout.splitlines()] if fmt == "jsonl" else strict_json(result.stdout)
        )
        assert [r["error"]["type"] for r in records] == ["NonFiniteOutput", "NonFiniteOutput"]  # type: ignore[index]
        assert "NaN" not in result.stdout.replace("NaN or infinity", "")
    assert "2 of 2 inputs failed" in result.stderr


def test_json_writer_never_writes_nan() -> None:
    import io

    from ptm_cli.output.records import RecordWriter

    stream = io.StringIO()
    with RecordWriter(stream, "jsonl", columns=["x"]) as writer:
        writer.write({"x": float("nan"), "y": [float("inf"), 1.5], "z": {"w": float("-inf")}})
    assert strict_json(stream.getvalue()) == {"x": None, "y": [None, 1.5], "z": {"w": None}}


@pytest.mark.parametrize(
    ("field", "value"),
    [("std", "[1e-45, 0.2, 0.2]"), ("std", "[0.0, 0.2, 0.2]"), ("std", "[nan, 0.2, 0.2]"), ("mean", "[inf, 0, 0]")],
)
def test_catalog_normalisation_values_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    catalog = tmp_path / "c.toml"
    catalog.write_text(f'[[model]]\nname = "m"\narchitecture = "resnet18"\n{field} = {value}\n')
    monkeypatch.setenv("PTM_CATALOG", str(catalog))
    assert_refused(run_ptm(["models"]), str(catalog), field)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b'[[model]]\nname = "m"\narchitecture = "resnet18"\nx = ' + b"[" * 50_000 + b"]" * 50_000 + b"\n", ()),
        (
            b'[[model]]\nname = "m"\narchitecture = "resnet18"\nbuilder_kwargs = {a = '
            + b"[" * 60
            + b"]" * 60
            + b"}\n",
            ("nested",),
        ),
        (b'[[model]]\nname = "m"\n\narchitecture = "r\xffnet"\n', ("line 4", "UTF-8")),
        (b'\xef\xbb\xbf[[model]]\nname = "\xe9"\n', ("line 2", "UTF-8")),
        (
            b'[[model]]\nname = "m"\narchitecture = "resnet18"\nnum_classes = 1180591620717411303424\n',
            ("num_classes", "64 bits"),
        ),
        (b'[[model]]\nname = "m"\narchitecture = "resnet18"\nresize = ' + b"9" * 5000 + b"\n", ()),
        (b'[[model]]\nname = "m"\narchitecture = "resnet18"\nsize_mb = inf\n', ("size_mb",)),
        (
            b'[[model]]\nname = "m"\narchitecture = "resnet18"\nbuilder_kwargs = {n = -99999999999999999999999}\n',
            ("64 bits",),
        ),
    ],
)
def test_hostile_catalog_files_are_configuration_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, words: tuple[str, ...]
) -> None:
    catalog = tmp_path / "hostile.toml"
    catalog.write_bytes(content)
    monkeypatch.setenv("PTM_CATALOG", str(catalog))
    assert_refused(run_ptm(["models"]), str(catalog), *words)


@pytest.mark.parametrize(
    "content",
    [b"[" * 100_000 + b"]" * 100_000, b'{"models": [' + b"\xff" + b"]}", b'{"models": ' + b"7" * 5000 + b"}"],
)
def test_hostile_json_catalogs_are_configuration_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    catalog = tmp_path / "hostile.json"
    catalog.write_bytes(content)
    monkeypatch.setenv("PTM_CATALOG", str(catalog))
    assert_refused(run_ptm(["models"]), str(catalog))


# --- #10: stdout and the disk can fail --------------------------------------------------------------


def run_to(stdout: object, args: list[str], **kwargs: object) -> tuple[int, str]:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "ptm_cli", *args], stdout=stdout, stderr=subprocess.PIPE, timeout=120, **kwargs
    )
    return done.returncode, done.stderr.decode()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize(
    "args", [["--help"], ["--version"], ["models"], ["models", "-f", "json"], ["weights", "--help"]]
)
def test_a_full_stdout_is_exit_2_with_one_line(args: list[str]) -> None:
    with open("/dev/full", "w") as full:
        code, stderr = run_to(full, args)
    assert code == 2, stderr
    assert stderr.splitlines() == [
        "ptm: error: cannot write to stdout (No space left on device); send the output somewhere with room, "
        "or check the device"
    ]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_classify_into_a_full_stdout(tiny: list[str], tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    with open("/dev/full", "w") as full:
        code, stderr = run_to(full, [*tiny, str(tmp_path / "x.png")], env=os.environ)
    assert code == 2, stderr
    assert stderr.strip().splitlines()[-1].startswith("ptm: error: cannot write to stdout (No space left on device)")
    assert "Traceback" not in stderr and "Exception ignored" not in stderr


def test_records_lost_midway_are_exit_1(tiny: list[str], tmp_path: Path) -> None:
    import resource

    from PIL import Image

    names = []
    for index in range(40):
        Image.new("RGB", (40, 40), (index * 6, 0, 0)).save(tmp_path / f"{index:02d}.png")
        names.append(str(tmp_path / f"{index:02d}.png"))

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))  # writes past 3000 bytes fail with EFBIG

    with open(tmp_path / "out.jsonl", "w") as out:
        code, stderr = run_to(out, [*tiny, "-f", "jsonl", *names], env=os.environ, preexec_fn=small_files)
    assert code == 1, stderr
    assert stderr.strip().splitlines()[-1].startswith("ptm: error: cannot write to stdout (File too large)")
    assert "the rest of the output was lost" in stderr
    delivered = (tmp_path / "out.jsonl").read_text().splitlines()
    assert 0 < len(delivered) < 40
    assert all(json.loads(line)["input"] == names[i] for i, line in enumerate(delivered[:-1]))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".h5"])
def test_convert_onto_a_full_disk_is_exit_2(tmp_path: Path, suffix: str) -> None:
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        torch.save({"w": torch.zeros(100_000)}, tmp_path / "big.pth")
        result = run_ptm(["weights", "convert", str(tmp_path / "big.pth"), str(small / f"out{suffix}")])
        assert_refused(result, "No space left on device", "free space")
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


# --- #7: outputs never replace special files, and keep the modes a user expects --------------------


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_generator(tmp_path_factory.mktemp("gen") / "gen.pth")


@pytest.fixture
def zebra(generator_file: Path, tmp_path: Path) -> list[str]:
    from PIL import Image

    Image.effect_noise((24, 20), 50).convert("RGB").save(tmp_path / "horse.png")
    return ["zebra", "-w", str(generator_file), "--size", "32", str(tmp_path / "horse.png")]


def char_device(path: Path) -> Path:
    import stat

    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the same device as /dev/null
    return path


def is_char_device(path: Path) -> bool:
    import stat

    return stat.S_ISCHR(os.lstat(path).st_mode)


@pytest.mark.parametrize("force", [False, True])
def test_output_onto_a_character_device_writes_through_it(zebra: list[str], tmp_path: Path, force: bool) -> None:
    node = char_device(tmp_path / "null")
    result = run_ptm([*zebra, "-o", str(node), *(["--force"] if force else [])])
    assert result.code == 0, result.stderr
    assert is_char_device(node)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_output_onto_dev_null_itself_needs_no_force(zebra: list[str]) -> None:
    for extra in ([], ["--force"]):
        result = run_ptm([*zebra, "-o", os.devnull, *extra])
        assert result.code == 0, result.stderr
        assert is_char_device(Path(os.devnull))


def test_output_into_a_fifo_is_written_through(zebra: list[str], tmp_path: Path) -> None:
    import stat
    import threading

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = run_ptm([*zebra, "-o", str(fifo)])
    reader.join(timeout=60)
    assert result.code == 0, result.stderr
    assert received and received[0].startswith(b"\x89PNG\r\n\x1a\n")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("force", [False, True])
def test_links_at_the_output_path_are_never_replaced_or_followed(zebra: list[str], tmp_path: Path, force: bool) -> None:
    target = tmp_path / "elsewhere.png"
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(target)
    precious = tmp_path / "precious.png"
    precious.write_bytes(b"keep me")
    linked = tmp_path / "linked.png"
    linked.symlink_to(precious)
    for path in (dangling, linked):
        result = run_ptm([*zebra, "-o", str(path), *(["--force"] if force else [])])
        assert result.code == 1, result.stderr
        (record,) = result.records()
        assert record["error"]["type"] == "OutputError"
        assert ("--force" in record["error"]["message"]) != force
        assert path.is_symlink()
    assert not target.exists()
    assert precious.read_bytes() == b"keep me"


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_new_outputs_get_the_umasks_mode_and_replaced_ones_keep_theirs(
    zebra: list[str], generator_file: Path, tmp_path: Path, mask: int
) -> None:
    import stat

    old = os.umask(mask)
    try:
        fresh = tmp_path / "fresh.png"
        assert run_ptm([*zebra, "-o", str(fresh)]).code == 0
        converted = tmp_path / "fresh.safetensors"
        assert run_ptm(["weights", "convert", str(generator_file), str(converted)]).code == 0
        kept = tmp_path / "kept.png"
        kept.write_bytes(b"old")
        os.chmod(kept, 0o604)
        assert run_ptm([*zebra, "-o", str(kept), "--force"]).code == 0
        kept_weights = tmp_path / "kept.pth"
        kept_weights.write_bytes(b"old")
        os.chmod(kept_weights, 0o640)
        assert run_ptm(["weights", "convert", str(generator_file), str(kept_weights), "--force"]).code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(os.stat(converted).st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o604 and kept.read_bytes().startswith(b"\x89PNG")
    assert stat.S_IMODE(os.stat(kept_weights).st_mode) == 0o640 and kept_weights.read_bytes() != b"old"


def test_convert_never_writes_over_devices_pipes_or_links(generator_file: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)  # opening it would hang: it must not be opened at all
    target = tmp_path / "elsewhere.pth"
    dangling = tmp_path / "dangling.pth"
    dangling.symlink_to(target)
    precious = tmp_path / "precious.pth"
    precious.write_bytes(b"keep me")
    linked = tmp_path / "linked.pth"
    linked.symlink_to(precious)
    destinations = [fifo, dangling, linked]
    if os.geteuid() == 0:
        destinations.append(char_device(tmp_path / "null.pth"))
    for dst in destinations:
        for extra in ([], ["--force"]):
            result = run_ptm(["weights", "convert", str(generator_file), str(dst), *extra])
            assert_refused(result, "not a regular file", "choose another name")
    assert not target.exists() and precious.read_bytes() == b"keep me"
    assert os.path.islink(dangling) and os.path.islink(linked)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


# --- #11: options and lists without bounds, under a memory ceiling --------------------------------

CEILING = 5 << 30  # address space: torch and its libraries need about 4 GiB of it to start


def run_with_ceiling(args: list[str], stdin: object = None, **env: str) -> tuple[int, str, str]:
    import resource
    import subprocess
    import sys

    def ceiling() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CEILING, CEILING))

    environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **env}
    done = subprocess.run(
        [sys.executable, "-m", "ptm_cli", *args],
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
        env=environment,
        preexec_fn=ceiling,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def assert_one_error_line(code: int, stderr: str, expected_code: int, *words: str) -> None:
    assert code == expected_code, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("ptm: error: "), stderr
    assert "MemoryError" not in stderr and "Traceback" not in stderr
    for word in words:
        assert word in lines[-1], stderr


@pytest.mark.parametrize("option", ["--crop", "--resize"])
def test_huge_crop_and_resize_are_usage_errors_naming_the_limit(tiny: list[str], tmp_path: Path, option: str) -> None:
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    code, stdout, stderr = run_with_ceiling([*tiny, option, "20000", str(tmp_path / "x.png")])
    assert_one_error_line(code, stderr, 2, option, "PTM_MAX_PIXELS", "13377")
    assert stdout == ""
    code, _, stderr = run_with_ceiling([*tiny, option, "2000", str(tmp_path / "x.png")], PTM_MAX_PIXELS="1000000")
    assert_one_error_line(code, stderr, 2, option, "1,000,000")


def test_huge_translate_size_is_a_usage_error(generator_file: Path, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (20, 20)).save(tmp_path / "x.png")
    args = [
        "zebra",
        "-w",
        str(generator_file),
        "--size",
        "20000",
        str(tmp_path / "x.png"),
        "-o",
        str(tmp_path / "y.png"),
    ]
    code, _, stderr = run_with_ceiling(args)
    assert_one_error_line(code, stderr, 2, "--size", "PTM_MAX_PIXELS")
    assert not (tmp_path / "y.png").exists()


def test_a_strip_resized_without_a_crop_is_refused_not_allocated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import informative_state_dict
    from PIL import Image

    torch.save(informative_state_dict(), tmp_path / "tiny.pth")
    (tmp_path / "labels.txt").write_text("apple\nbanana\ncherry\ndate\n")
    (tmp_path / "nocrop.toml").write_text(
        '[[model]]\nname = "nocrop"\narchitecture = "mobilenet_v3_small"\nnum_classes = 4\nlabels = "labels.txt"\n'
        "resize = 2000\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n"
    )
    Image.new("RGB", (100_000, 2), "white").save(tmp_path / "strip.png")  # a few hundred bytes
    Image.new("RGB", (30, 20), "white").save(tmp_path / "small.png")
    args = ["classify", "-m", "nocrop", "-w", str(tmp_path / "tiny.pth"), "-f", "jsonl", "-k", "1"]
    code, stdout, stderr = run_with_ceiling(
        [*args, str(tmp_path / "strip.png"), str(tmp_path / "small.png")], PTM_CATALOG=str(tmp_path / "nocrop.toml")
    )
    assert code == 1, stderr
    strip, small = (json.loads(line) for line in stdout.splitlines())
    assert strip["error"]["type"] == "ImageTooLarge" and "PTM_MAX_PIXELS" in strip["error"]["message"]
    assert small["predictions"][0]["probability"] > 0


def test_files_from_an_endless_source_is_bounded(tiny: list[str], tmp_path: Path) -> None:
    code, _, stderr = run_with_ceiling([*tiny, "--files-from", "/dev/zero"])
    assert_one_error_line(code, stderr, 2, "line 1", "/dev/zero", "4096")
    with open("/dev/zero", "rb") as zero:
        code, _, stderr = run_with_ceiling([*tiny, "--files-from", "-"], stdin=zero)
    assert_one_error_line(code, stderr, 2, "line 1", "--files-from -")
    (tmp_path / "list.txt").write_bytes(b"x.png\n" * 100 + b"y" * 5000 + b"\n")
    code, _, stderr = run_with_ceiling([*tiny, "--files-from", str(tmp_path / "list.txt")])
    assert_one_error_line(code, stderr, 2, "line 101")


def test_a_too_large_files_from_list_says_to_stream_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ptm_cli import settings
    from ptm_cli.errors import UsageError
    from ptm_cli.images import inputs

    monkeypatch.setattr(settings.tuning, "max_list_bytes", 1000)
    (tmp_path / "list.txt").write_bytes(b"photo.png\n" * 101)
    with pytest.raises(UsageError, match="--files-from - <"):
        inputs.expand_inputs([], files_from=str(tmp_path / "list.txt"))
    (tmp_path / "short.txt").write_bytes(b"photo.png\n" * 99)
    assert len(list(inputs.expand_inputs([], files_from=str(tmp_path / "short.txt")))) == 99


def test_labels_from_an_endless_source_are_bounded(tmp_path: Path) -> None:
    from helpers import informative_state_dict

    torch.save(informative_state_dict(), tmp_path / "tiny.pth")
    (tmp_path / "endless.toml").write_text(
        '[[model]]\nname = "endless"\narchitecture = "mobilenet_v3_small"\nnum_classes = 4\nlabels = "/dev/zero"\n'
    )
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    args = ["classify", "-m", "endless", "-w", str(tmp_path / "tiny.pth"), str(tmp_path / "x.png")]
    code, _, stderr = run_with_ceiling(args, PTM_CATALOG=str(tmp_path / "endless.toml"))
    assert_one_error_line(code, stderr, 2, "/dev/zero", "MiB")


# --- #12: JPEGs the decoder would pad with grey ------------------------------------------------------


def jpeg_bytes(image: object, **options: object) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)  # type: ignore[attr-defined]
    return buffer.getvalue()


def noisy(width: int, height: int, seed: int = 0) -> object:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype("uint8"))


def with_height(data: bytes, height: int) -> bytes:
    """The same JPEG with its frame header claiming ``height`` rows."""
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    return data[: sof + 5] + height.to_bytes(2, "big") + data[sof + 7 :]


@pytest.mark.parametrize("subsampling", [0, 2])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
def test_a_jpeg_cut_short_and_closed_with_an_end_marker_is_unreadable(subsampling: int, fraction: float) -> None:
    from ptm_cli.errors import UnreadableImage
    from ptm_cli.images.decode import load_image

    data = jpeg_bytes(noisy(320, 240), quality=90, subsampling=subsampling)
    cut = data[: int(len(data) * fraction)] + b"\xff\xd9"
    with pytest.raises(UnreadableImage, match="truncated"):
        load_image(cut, name="cut.jpg")
    with pytest.raises(UnreadableImage, match="truncated"):
        load_image(cut, name="cut.jpg", min_short_side=60)  # decoded at reduced scale first
    assert load_image(data, name="whole.jpg").size == (320, 240)


def test_a_jpeg_whose_header_declares_more_rows_than_its_data_is_unreadable() -> None:
    from ptm_cli.errors import UnreadableImage
    from ptm_cli.images.decode import load_image

    data = jpeg_bytes(noisy(200, 100), quality=90)
    with pytest.raises(UnreadableImage, match="truncated"):
        load_image(with_height(data, 400), name="tall.jpg")


@pytest.mark.parametrize("subsampling", [0, 2])
def test_genuinely_grey_jpegs_still_load(subsampling: int) -> None:
    from PIL import Image

    from ptm_cli.images.decode import load_image

    half = noisy(200, 160)
    half.paste((128, 128, 128), (0, 80, 200, 160))  # type: ignore[attr-defined]
    for image in (half, Image.new("RGB", (256, 256), (128, 128, 128)), Image.new("L", (90, 300), 128)):
        data = jpeg_bytes(image, quality=95, subsampling=subsampling)
        loaded = load_image(data, name="grey.jpg")
        assert loaded.size == image.size
        assert loaded.getpixel((loaded.width - 1, loaded.height - 1)) == (128, 128, 128)


def test_cut_jpegs_through_classify_are_error_records(tiny: list[str], tmp_path: Path) -> None:
    whole = jpeg_bytes(noisy(320, 240), quality=90)
    (tmp_path / "whole.jpg").write_bytes(whole)
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2] + b"\xff\xd9")
    (tmp_path / "tall.jpg").write_bytes(with_height(whole, 960))
    names = [str(tmp_path / n) for n in ("whole.jpg", "cut.jpg", "tall.jpg")]
    result = run_ptm([*tiny, "-f", "jsonl", *names])
    assert result.code == 1, result.stderr
    records = result.records()
    assert "predictions" in records[0]
    assert [r["error"]["type"] for r in records[1:]] == ["UnreadableImage", "UnreadableImage"]


def test_a_generator_with_nan_weights_writes_no_image(generator_file: Path, tmp_path: Path) -> None:
    from PIL import Image

    state = torch.load(generator_file, weights_only=True)
    last = [k for k in state if k.endswith(".bias")][-1]
    state[last] = torch.full_like(state[last], float("nan"))
    torch.save(state, tmp_path / "nan.pth")
    Image.new("RGB", (24, 20), "white").save(tmp_path / "horse.png")
    out = tmp_path / "zebra.png"
    result = run_ptm(
        ["zebra", "-w", str(tmp_path / "nan.pth"), "--size", "32", str(tmp_path / "horse.png"), "-o", str(out)]
    )
    assert result.code == 1, result.stderr
    (record,) = [strict_json(line) for line in result.stdout.splitlines()]
    assert record["error"]["type"] == "NonFiniteOutput"  # type: ignore[index]
    assert not out.exists()


def test_names_in_messages_cannot_drive_the_terminal_or_forge_lines(tmp_path: Path) -> None:
    name = tmp_path / "evil\x1b]0;pwned\x07\nptm: all good.pth"
    result = run_ptm(["weights", "inspect", str(name)])
    assert result.code == 2
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "\\x1b]0;pwned\\x07\\nptm: all good.pth" in result.stderr


def test_weights_from_a_device_or_pipe_are_named_as_such(tmp_path: Path) -> None:
    fifo = tmp_path / "w.pth"
    os.mkfifo(fifo)  # never opened: opening it would wait for a writer
    for path in ("/dev/zero", str(fifo)):
        result = run_ptm(["classify", "-m", "resnet18", "-w", path, str(tmp_path / "x.png")])
        assert_refused(result, path, "device or pipe")
        assert "does not exist" not in result.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["classify", "--batch-size", "100000000", "x.png"], ("--batch-size", "1024")),
        (["classify", "--workers", "100000", "x.png"], ("--workers", "64")),
        (["zebra", "--tile", "100000", "x.png", "-o", "y.png"], ("--tile", "PTM_MAX_PIXELS")),
    ],
)
def test_batch_size_workers_and_tile_are_bounded(args: list[str], words: tuple[str, ...]) -> None:
    result = run_ptm(args)
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr
