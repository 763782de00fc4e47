"""From options to a ready model: how -m and -w are read, the same way for every caller.

A weights file that would run code, is damaged, is for another model, holds tensors of the wrong
kind or is no regular file is refused with exit 2 before any image is read.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import DATA, TinyClassifier, assert_refused, informative_state_dict, run_ptm, save_weights

from ptm_cli.cache import weights
from ptm_cli.cache.naming import local_weights_file
from ptm_cli.errors import UsageError
from ptm_cli.tasks.base import ModelOptions
from ptm_cli.tasks.classify import TASK as CLASSIFY
from ptm_cli.tasks.classify import load_classifier

PHOTO = str(DATA / "coffee.png")


def test_a_file_named_like_a_variant_never_shadows_the_catalog(
    tiny: TinyClassifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an attacker's afternoon: `-w DEFAULT` loaded ./DEFAULT while the record said "DEFAULT"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DEFAULT").write_bytes(tiny.weights.read_bytes())
    result = run_ptm(["classify", "-m", "tiny", PHOTO])
    assert result.code == 2 and result.stdout == ""
    assert "tiny:DEFAULT has neither a url" in result.stderr  # the catalog's weights were wanted, not ./DEFAULT
    spelled_as_a_path = run_ptm(["classify", "-m", "tiny", "-w", "./DEFAULT", "-f", "jsonl", PHOTO])
    assert spelled_as_a_path.code == 0, spelled_as_a_path.stderr
    assert spelled_as_a_path.records()[0]["weights"] == "./DEFAULT"  # the record names the file as written


def test_a_bare_name_that_is_only_a_file_gets_both_readings(
    tiny: TinyClassifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "finetuned").write_bytes(tiny.weights.read_bytes())
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


def test_upper_case_safetensors_suffix_loads(tiny: TinyClassifier, tmp_path: Path) -> None:
    """Found by an attacker's afternoon: MODEL.SAFETENSORS was read as a torch file and called damaged."""
    from safetensors.torch import save_file

    path = tmp_path / "TINY.SAFETENSORS"
    save_file({k: v.contiguous() for k, v in informative_state_dict().items()}, str(path))
    via_file = load_classifier(ModelOptions("tiny", weights=str(path), device="cpu"), progress=False)
    via_pth = load_classifier(ModelOptions("tiny", weights=str(tiny.weights), device="cpu"), progress=False)
    batch = torch.rand(2, 3, 64, 64)
    assert via_file.predict(batch, 4) == via_pth.predict(batch, 4)


def test_the_library_and_the_command_give_the_same_records(tiny: TinyClassifier) -> None:
    from ptm_cli.images.inputs import ImageInput
    from ptm_cli.tasks.classify import classify_images, to_record

    options = ModelOptions("tiny", weights=str(tiny.weights), device="cpu")
    classifier = load_classifier(options, progress=False)
    library = [to_record(r, classifier) for r in classify_images([ImageInput(PHOTO, path=Path(PHOTO))], classifier)]
    command = run_ptm([*tiny.classify, "--device", "cpu", "-f", "jsonl", PHOTO])
    assert command.records() == library


def test_json_array_is_closed_when_a_command_fails_midway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the redesign: seven commands closed their writer by hand, so an error left `[` without `]`."""
    from ptm_cli.errors import WeightsError

    cache = tmp_path / "cache"
    monkeypatch.setenv("PTM_CACHE_DIR", str(cache))
    cache.mkdir()
    (tmp_path / "two.toml").write_text(
        '[[model]]\nname = "one"\narchitecture = "resnet18"\nfile_name = "one.pth"\nsha256 = "%s"\n'
        '[[model]]\nname = "two"\narchitecture = "resnet18"\nfile_name = "two.pth"\n' % ("0" * 64)
    )
    monkeypatch.setenv("PTM_CATALOG", str(tmp_path / "two.toml"))
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


# --- hostile and damaged weights files given with -w ----------------------------------------------


class CodeExecution:
    """Unpickling this runs Python source through builtins.exec: the classic malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def torchscript_file(path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; this is how such files are made
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))


def hostile_weights(kind: str, path: Path, marker: Path, good: Path) -> None:
    if kind == "code execution (zip)":
        torch.save({"weight": CodeExecution(marker)}, path)
    elif kind == "code execution (legacy pickle)":
        torch.save({"weight": CodeExecution(marker)}, path, _use_new_zipfile_serialization=False)
    elif kind == "full module pickle":
        import torchvision.models as tvm

        torch.save(tvm.mobilenet_v3_small(weights=None, num_classes=4), path)
    elif kind == "torchscript":
        torchscript_file(path)
    elif kind == "truncated zip":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "html error page":
        path.write_bytes(b"<html><body>403 Forbidden</body></html>\n")
    elif kind == "another architecture":
        save_weights(path, "resnet18", num_classes=4)
    elif kind == "another class count":
        save_weights(path, "mobilenet_v3_small", num_classes=10)
    elif kind == "damaged safetensors header":
        path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    else:  # pragma: no cover
        raise AssertionError(kind)


# (kind, file suffix, a phrase saying what to do)
HOSTILE_WEIGHTS = [
    ("code execution (zip)", ".pth", "save `model.state_dict()` with torch.save"),
    ("code execution (legacy pickle)", ".pth", "save `model.state_dict()` with torch.save"),
    ("full module pickle", ".pth", "save `model.state_dict()` with torch.save"),
    ("torchscript", ".pt", "save `model.state_dict()`"),
    ("truncated zip", ".pth", "is damaged"),
    ("empty", ".pth", "is damaged"),
    ("html error page", ".pth", "is damaged"),
    ("another architecture", ".pth", "check -m/--model"),
    ("another class count", ".pth", "num_classes"),
    ("damaged safetensors header", ".safetensors", "is damaged"),
]


@pytest.mark.parametrize(("kind", "suffix", "advice"), HOSTILE_WEIGHTS, ids=[k for k, _, _ in HOSTILE_WEIGHTS])
def test_hostile_weights_file_is_refused_and_never_runs(
    kind: str, suffix: str, advice: str, tiny: TinyClassifier, tmp_path: Path
) -> None:
    marker, path = tmp_path / "pwned", tmp_path / f"weights{suffix}"
    hostile_weights(kind, path, marker, tiny.weights)
    result = run_ptm(["classify", "-m", "tiny", "-w", str(path), str(DATA / "coffee.png")])
    assert not marker.exists(), "the weights file ran code"
    assert result.code == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("ptm: error: ")
    if not kind.startswith("another"):
        assert str(path) in result.stderr
    assert advice in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_damaged_local_weights_file_gets_advice_that_fits_a_local_file(tiny: TinyClassifier, tmp_path: Path) -> None:
    """`ptm weights rm` takes a catalog NAME and only touches the cache: no advice for a user's own -w file.

    Found by this suite (the message used to say "delete it with `ptm weights rm`").
    """
    path = tmp_path / "my-finetune.pth"
    path.write_bytes(tiny.weights.read_bytes()[:1000])
    result = run_ptm(["classify", "-m", "tiny", "-w", str(path), str(DATA / "coffee.png")])
    assert result.code == 2 and "is damaged" in result.stderr
    assert "ptm weights rm" not in result.stderr


def test_cuda_saved_checkpoint_loads_on_the_cpu(
    tiny: TinyClassifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file saved on a GPU names 'cuda:0' as every storage's location; ptm maps it to the CPU."""
    import torch.serialization

    state = torch.load(tiny.weights, weights_only=True)
    cuda_file = tmp_path / "saved-on-gpu.pth"
    with monkeypatch.context() as patch:
        # torch.save asks location_tag() where each storage lives; answer as a GPU machine would.
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, cuda_file)
    with zipfile.ZipFile(cuda_file) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    assert b"cuda:0" in pickled and b"cpu" not in pickled
    if not torch.cuda.is_available():  # proof that the file really claims CUDA
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(cuda_file, weights_only=True)

    image = str(DATA / "coffee.png")
    from_gpu_file = run_ptm(["classify", "-m", "tiny", "-w", str(cuda_file), "--device", "cpu", image])
    from_cpu_file = run_ptm(["classify", "-m", "tiny", "-w", str(tiny.weights), "--device", "cpu", image])
    assert from_gpu_file.code == 0, from_gpu_file.stderr
    assert from_gpu_file.records()[0]["predictions"] == from_cpu_file.records()[0]["predictions"]


# --- tensors a model cannot take, and -w that is no file ------------------------------------------


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


def test_weights_from_a_device_or_pipe_are_named_as_such(tmp_path: Path) -> None:
    fifo = tmp_path / "w.pth"
    os.mkfifo(fifo)  # never opened: opening it would wait for a writer
    for path in ("/dev/zero", str(fifo)):
        result = run_ptm(["classify", "-m", "resnet18", "-w", path, str(tmp_path / "x.png")])
        assert_refused(result, path, "device or pipe")
        assert "does not exist" not in result.stderr


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
