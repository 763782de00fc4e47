"""The catalog: shipped entries agree with torchvision, user files are validated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_refused, run_ptm

from ptm_cli.cache.catalog import CATALOG_DIR, Catalog, entry_from_mapping, load_labels
from ptm_cli.errors import ConfigError, UnknownModel


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load(extra=[])


def test_resnet101_defaults_to_v2_with_its_own_preprocessing(catalog: Catalog) -> None:
    entry = catalog.resolve("resnet101")
    assert entry.weights == "IMAGENET1K_V2"
    assert entry.file_name == "resnet101-cd907fc2.pth"
    assert entry.sha256 == "cd907fc2"
    assert (entry.resize, entry.crop, entry.interpolation) == (232, 224, "bilinear")
    assert entry.mean == (0.485, 0.456, 0.406)
    assert entry.std == (0.229, 0.224, 0.225)
    assert entry.num_params == 44_549_160
    assert entry.acc1 == pytest.approx(81.886)


def test_book_weights_are_v1_with_resize_256(catalog: Catalog) -> None:
    entry = catalog.resolve("resnet101", "IMAGENET1K_V1")
    assert entry.file_name == "resnet101-63fe2227.pth"
    assert (entry.resize, entry.crop) == (256, 224)
    assert entry.acc1 == pytest.approx(77.374)


def test_alexnet_carries_its_full_published_digest(catalog: Catalog) -> None:
    entry = catalog.resolve("alexnet")
    assert entry.file_name == "alexnet-owt-7be5be79.pth"
    assert entry.full_sha256 == "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02"
    assert entry.num_params == 61_100_840


@pytest.mark.parametrize(
    ("model", "weights", "expected"),
    [
        ("ResNet101", None, "IMAGENET1K_V2"),
        ("resnet101", "default", "IMAGENET1K_V2"),
        ("resnet101", "ResNet101_Weights.IMAGENET1K_V1", "IMAGENET1K_V1"),
        ("resnet101:IMAGENET1K_V1", None, "IMAGENET1K_V1"),
        ("resnet101", "imagenet1k_v1", "IMAGENET1K_V1"),
    ],
)
def test_names_resolve_the_ways_users_write_them(
    catalog: Catalog, model: str, weights: str | None, expected: str
) -> None:
    assert catalog.resolve(model, weights).weights == expected


def test_unknown_names_suggest_what_exists(catalog: Catalog) -> None:
    with pytest.raises(UnknownModel, match=r"resnet101.*ptm models"):
        catalog.resolve("resnet10")
    with pytest.raises(UnknownModel, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        catalog.resolve("resnet101", "IMAGENET1K_V9")


def test_imagenet_labels_are_torchvisions_short_names(catalog: Catalog) -> None:
    labels = load_labels(catalog.resolve("resnet101"))
    assert labels is not None and len(labels) == 1000
    assert labels[207] == "golden retriever"
    assert labels[208] == "Labrador retriever"
    assert labels[852] == "tennis ball"
    assert labels[134] == "crane bird"  # the book's list names 134 and 517 both "crane"
    assert labels.count("crane") == 1


def test_shipped_snapshot_matches_installed_torchvision(catalog: Catalog) -> None:
    """models/torchvision.json must say what the installed torchvision says."""
    import torchvision
    import torchvision.models as tvm

    doc = json.loads((CATALOG_DIR / "torchvision.json").read_text())
    if doc["torchvision"] != torchvision.__version__.split("+")[0]:
        pytest.skip(f"snapshot made with torchvision {doc['torchvision']}; run `make catalog`")
    seen = 0
    for name in tvm.list_models(module=tvm):
        for weights in tvm.get_model_weights(name):
            if weights.meta.get("categories") is None:
                continue
            entry = catalog.resolve(name, weights.name)
            transforms = weights.transforms()
            assert entry.url == weights.url
            assert weights.url.endswith(entry.file_name)
            assert entry.num_params == weights.meta["num_params"]
            assert entry.crop == transforms.crop_size[0]
            assert entry.resize == transforms.resize_size[0]
            assert entry.interpolation == transforms.interpolation.value
            assert list(entry.mean) == list(transforms.mean)
            assert entry.is_default == (weights is tvm.get_model_weights(name).DEFAULT)
            seen += 1
    assert seen == len([e for e in catalog.entries("classify") if not e.is_video]) == 114


def test_builder_kwargs_reproduce_torchvisions_pretrained_models() -> None:
    """Building with the recorded kwargs gives the module torchvision builds for the weights."""
    import torch
    import torchvision.models as tvm

    catalog = Catalog.load(extra=[])
    for model, weights in [
        ("googlenet", "IMAGENET1K_V1"),
        ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1"),
        ("inception_v3", "IMAGENET1K_V1"),
    ]:
        entry = catalog.resolve(model, weights)
        with torch.device("meta"):
            ours = tvm.get_model(model, weights=None, **entry.builder_kwargs)
            theirs = tvm.get_model(model, weights=None, **_torchvision_pretrained_kwargs(model, weights))
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in theirs.state_dict().items()
        }
        for attribute in ("transform_input", "image_size"):
            assert getattr(ours, attribute, None) == getattr(theirs, attribute, None)


def _torchvision_pretrained_kwargs(model: str, weights: str) -> dict[str, object]:
    """What torchvision's source applies for these weights (read by hand, written here as a check)."""
    if model in ("googlenet", "inception_v3"):
        return {"transform_input": True, "aux_logits": True, "init_weights": False}
    if weights == "IMAGENET1K_SWAG_E2E_V1":
        return {"image_size": 384}
    return {}


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_user_catalog_adds_entries_with_relative_labels(tmp_path: Path) -> None:
    (tmp_path / "pets.txt").write_text("cat\ndog\n")
    toml = write_toml(
        tmp_path / "mine.toml",
        """
[[model]]
name = "pets"
architecture = "resnet18"
url = "http://127.0.0.1:8000/files/pets-v1.pth"
sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
labels = "pets.txt"
num_classes = 2
resize = 128
crop = 112
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
licence = "CC0-1.0"
""",
    )
    catalog = Catalog.load(extra=[toml])
    entry = catalog.resolve("pets")
    assert entry.weights == "DEFAULT"
    assert entry.file_name == "pets-v1.pth"
    assert entry.full_sha256 is not None
    assert entry.preprocess().crop == 112
    assert load_labels(entry) == ["cat", "dog"]
    assert entry.source == str(toml)
    assert catalog.resolve("resnet101").weights == "IMAGENET1K_V2"  # shipped entries stay


def test_ptm_catalog_env_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = write_toml(tmp_path / "a.toml", '[[model]]\nname = "a"\narchitecture = "resnet18"\n')
    b = write_toml(tmp_path / "b.toml", '[[model]]\nname = "b"\narchitecture = "alexnet"\n')
    monkeypatch.setenv("PTM_CATALOG", f"{a}:{b}")
    catalog = Catalog.load()
    assert catalog.resolve("a").architecture == "resnet18"
    assert catalog.resolve("b").architecture == "alexnet"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[model]]\nname = "x"\n', "architecture is required"),
        ('[[model]]\nname = "x"\narchitecture = "resnet18"\nsha256 = "zz"\n', "sha256 must be"),
        ('[[model]]\nname = "x"\narchitecture = "resnet18"\ntask = "Detect me"\n', "task must be"),
        ('[[model]]\nname = "x"\narchitecture = "resnet18"\nmean = [1, 2]\n', "mean must be"),
        ('[[model]]\nname = "x"\narchitecture = "resnet18"\ncrop = -3\n', "crop must be"),
        ('[[model]]\nname = "x"\narchitecture = "resnet18"\nsurprise = 1\n', "unknown keys surprise"),
        ('[[model]]\narchitecture = "resnet18"\n', "needs a name"),
        ("[[model]\n", "catalog file"),
    ],
)
def test_bad_user_catalogs_are_config_errors(tmp_path: Path, body: str, message: str) -> None:
    path = write_toml(tmp_path / "bad.toml", body)
    with pytest.raises(ConfigError, match=message):
        Catalog.load(extra=[path])


def test_missing_catalog_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Catalog.load(extra=[tmp_path / "nope.toml"])


def test_task_mismatch_is_explained() -> None:
    entry = entry_from_mapping({"name": "z", "task": "translate", "architecture": "cyclegan"}, source="t")
    catalog = Catalog([entry])
    with pytest.raises(UnknownModel, match="ptm translate"):
        catalog.resolve("z", task="classify")


def test_catalog_load_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys; from ptm_cli.cache.catalog import Catalog; Catalog.load(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_users_default_beats_the_shipped_one_and_dotted_names_work(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "mine.toml",
        '[[model]]\nname = "resnet101"\nweights = "ft.v2"\narchitecture = "resnet101"\ndefault = true\n',
    )
    catalog = Catalog.load(extra=[path])
    assert catalog.resolve("resnet101").weights == "ft.v2"
    assert catalog.resolve("resnet101", "ft.v2").weights == "ft.v2"
    assert catalog.resolve("resnet101", "IMAGENET1K_V1").weights == "IMAGENET1K_V1"


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("c.json", "{}", "not a ptm JSON catalog"),
        ("c.toml", 'model = ["a"]\n', "expected \\[\\[model\\]\\] tables"),
        ("c.toml", '[[model]]\nname = "x"\narchitecture = "resnet18"\ndefault = "false"\n', "default has the wrong"),
    ],
)
def test_malformed_catalog_files_are_config_errors(tmp_path: Path, name: str, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Catalog.load(extra=[write_toml(tmp_path / name, body)])


# --- hostile catalog files ------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("make", "says"),
    [("folder", "is a folder, not a file"), ("fifo", "is a named pipe, not a file"), ("device", "is a device")],
)
def test_a_catalog_that_is_no_file_says_what_it_is(
    make: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in round 3: a folder, a device or a FIFO in PTM_CATALOG was a file that "does not exist"."""
    import os

    path = {"folder": tmp_path / "catalogs", "fifo": tmp_path / "pipe.toml", "device": Path("/dev/null")}[make]
    if make == "folder":
        path.mkdir()
    elif make == "fifo":
        os.mkfifo(path)
    monkeypatch.setenv("PTM_CATALOG", str(path))
    assert_refused(run_ptm(["models"]), str(path), says, "PTM_CATALOG names TOML or JSON files")
