"""From options to a ready model: how -m and -w are read, the same way for every caller."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import DATA, informative_state_dict, run_ptm, write_tiny_model

from ptm_cli.cache import weights
from ptm_cli.cache.naming import local_weights_file
from ptm_cli.errors import UsageError
from ptm_cli.tasks.base import ModelOptions
from ptm_cli.tasks.classify import TASK as CLASSIFY
from ptm_cli.tasks.classify import load_classifier

PHOTO = str(DATA / "coffee.png")


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 4-class catalog model whose catalog weights are not cached (it has no url)."""
    write_tiny_model(tmp_path)
    monkeypatch.setenv("PTM_CATALOG", str(tmp_path / "tiny.toml"))
    return tmp_path


def test_a_file_named_like_a_variant_never_shadows_the_catalog(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by an attacker's afternoon: `-w DEFAULT` loaded ./DEFAULT while the record said "DEFAULT"."""
    monkeypatch.chdir(tiny)
    (tiny / "DEFAULT").write_bytes((tiny / "tiny.pth").read_bytes())
    result = run_ptm(["classify", "-m", "tiny", PHOTO])
    assert result.code == 2 and result.stdout == ""
    assert "tiny:DEFAULT has neither a url" in result.stderr  # the catalog's weights were wanted, not ./DEFAULT
    spelled_as_a_path = run_ptm(["classify", "-m", "tiny", "-w", "./DEFAULT", "-f", "jsonl", PHOTO])
    assert spelled_as_a_path.code == 0, spelled_as_a_path.stderr
    assert spelled_as_a_path.records()[0]["weights"] == "./DEFAULT"  # the record names the file as written


def test_a_bare_name_that_is_only_a_file_gets_both_readings(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tiny)
    (tiny / "finetuned").write_bytes((tiny / "tiny.pth").read_bytes())
    readings = r"-w finetuned is neither a weights variant of tiny nor a path.*-w \./finetuned"
    with pytest.raises(UsageError, match=readings):
        CLASSIFY.plan(ModelOptions("tiny", weights="finetuned"))


@pytest.mark.parametrize("value", ["model.pth", "x/model", "MODEL.SAFETENSORS", "w.H5"])
def test_paths_are_recognised_by_separator_or_suffix(value: str) -> None:
    with pytest.raises(UsageError, match=f"weights file {value} does not exist"):
        local_weights_file(value)


@pytest.mark.parametrize("value", ["DEFAULT", "IMAGENET1K_V1", "ResNet101_Weights.IMAGENET1K_V2"])
def test_variant_names_are_not_paths(value: str) -> None:
    assert local_weights_file(value) is None


def test_upper_case_safetensors_suffix_loads(tiny: Path) -> None:
    """Found by an attacker's afternoon: MODEL.SAFETENSORS was read as a torch file and called damaged."""
    from safetensors.torch import save_file

    path = tiny / "TINY.SAFETENSORS"
    save_file({k: v.contiguous() for k, v in informative_state_dict().items()}, str(path))
    via_file = load_classifier(ModelOptions("tiny", weights=str(path), device="cpu"), progress=False)
    via_pth = load_classifier(ModelOptions("tiny", weights=str(tiny / "tiny.pth"), device="cpu"), progress=False)
    batch = torch.rand(2, 3, 64, 64)
    assert via_file.predict(batch, 4) == via_pth.predict(batch, 4)


def test_the_library_and_the_command_give_the_same_records(tiny: Path) -> None:
    from ptm_cli.images.inputs import ImageInput
    from ptm_cli.tasks.classify import classify_images, to_record

    options = ModelOptions("tiny", weights=str(tiny / "tiny.pth"), device="cpu")
    classifier = load_classifier(options, progress=False)
    library = [to_record(r, classifier) for r in classify_images([ImageInput(PHOTO, path=Path(PHOTO))], classifier)]
    command = run_ptm(["classify", "-m", "tiny", "-w", str(tiny / "tiny.pth"), "--device", "cpu", "-f", "jsonl", PHOTO])
    assert command.records() == library


def test_json_array_is_closed_when_a_command_fails_midway(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the redesign: seven commands closed their writer by hand, so an error left `[` without `]`."""
    from ptm_cli.errors import WeightsError

    cache = tiny / "cache"
    monkeypatch.setenv("PTM_CACHE_DIR", str(cache))
    cache.mkdir()
    (tiny / "two.toml").write_text(
        '[[model]]\nname = "one"\narchitecture = "resnet18"\nfile_name = "one.pth"\nsha256 = "%s"\n'
        '[[model]]\nname = "two"\narchitecture = "resnet18"\nfile_name = "two.pth"\n'
        % ("0" * 64)
    )
    monkeypatch.setenv("PTM_CATALOG", str(tiny / "two.toml"))
    (cache / "one.pth").write_bytes(b"one")
    (cache / "two.pth").write_bytes(b"two")
    real_verify = weights.verify
    calls = []

    def verify_then_fail(entry: object) -> object:
        calls.append(entry)
        if len(calls) == 2:
            raise WeightsError("the disk went away")
        return real_verify(entry)  # type: ignore[arg-type]

    monkeypatch.setattr(weights, "verify", verify_then_fail)
    result = run_ptm(["weights", "verify", "-f", "json"])
    assert result.code == 2 and "the disk went away" in result.stderr
    assert [r["entry"] for r in json.loads(result.stdout)] == ["one:DEFAULT"]
