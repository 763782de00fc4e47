"""`ptm weights inspect` and `ptm weights convert` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import DATA, run_ptm, save_weights


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_weights(tmp_path_factory.mktemp("w") / "r18.pth", "resnet18", seed=5)


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
    assert "transposed,4x3,float32,12,48,\"(1, 4)\",0,no," in text[2]


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
