"""ptm's own ResNet/AlexNet/VGG builders are torchvision's networks, bit for bit, without importing it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from helpers import ROOT, save_weights

from ptm_cli.cache.catalog import Catalog
from ptm_cli.errors import ConfigError
from ptm_cli.nets import classic as nets
from ptm_cli.nets.architectures import factory as architecture_factory
from ptm_cli.nets.modeling import skip_init
from ptm_cli.tasks.classify import build_classifier

NATIVE_ENTRIES = sorted(
    (e.architecture, e.ref)
    for e in Catalog.load().entries()
    if e.task == "classify" and e.architecture in nets.BUILDERS
)


def test_every_native_builder_has_catalog_weights() -> None:
    assert {arch for arch, _ in NATIVE_ENTRIES} == set(nets.BUILDERS)
    assert len(nets.BUILDERS) == 19


@pytest.mark.parametrize(("architecture", "ref"), NATIVE_ENTRIES, ids=[r for _, r in NATIVE_ENTRIES])
def test_structure_and_state_dict_match_torchvision(architecture: str, ref: str) -> None:
    entry = Catalog.load().resolve(*ref.split(":"))
    kwargs = {**entry.builder_kwargs, "num_classes": entry.num_classes or 1000}
    with torch.device("meta"):
        ours = architecture_factory(entry)()
        theirs = tvm.get_model(architecture, weights=None, **kwargs)
    assert type(ours).__module__ == "ptm_cli.nets.classic"
    # The printed module tree names every layer with its hyper-parameters.
    assert repr(ours) == repr(theirs)
    assert {k: (v.shape, v.dtype) for k, v in ours.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in theirs.state_dict().items()
    }


def _random_state(architecture: str, **kwargs: int) -> dict[str, torch.Tensor]:
    """Seeded weights of He scale, and batch-norm statistics that are not the identity."""
    with skip_init():
        state = tvm.get_model(architecture, weights=None, **kwargs).state_dict()
    generator = torch.Generator().manual_seed(3)
    for key, value in state.items():
        if not value.is_floating_point():
            continue
        if key.endswith("running_var"):
            value.uniform_(0.5, 1.5, generator=generator)
        elif value.dim() > 1:
            value.normal_(0, (2 / (value.numel() / value.shape[0])) ** 0.5, generator=generator)
        else:  # biases, batch-norm scales and shifts, running means
            value.normal_(1.0 if key.endswith("bn1.weight") else 0.0, 0.1, generator=generator)
    return state


@pytest.mark.parametrize(
    ("architecture", "kwargs", "size"),
    [
        ("resnet18", {}, 96),
        ("resnet50", {"num_classes": 7}, 64),
        ("resnext50_32x4d", {"groups": 32, "width_per_group": 4}, 64),
        ("alexnet", {}, 96),
        ("vgg11_bn", {"num_classes": 10}, 64),
    ],
)
def test_outputs_are_bit_identical(architecture: str, kwargs: dict[str, int], size: int) -> None:
    state = _random_state(architecture, **kwargs)
    with skip_init():
        theirs = tvm.get_model(architecture, weights=None, **kwargs)
        ours = nets.BUILDERS[architecture](**kwargs)
    theirs.load_state_dict(state)
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = theirs.eval()(x)
        got = ours.eval()(x)
        got_cl = ours.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        expected_cl = theirs.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert expected.std() > 0.01  # a real signal, not a constant
    assert torch.equal(got, expected)
    assert torch.equal(got_cl, expected_cl)


def test_builder_arguments_nets_does_not_know_go_to_torchvision() -> None:
    entry = Catalog.load().resolve("resnet18")
    odd = type(entry)(**{**entry.__dict__, "builder_kwargs": {"zero_init_residual": True}})
    with torch.device("meta"):
        model = architecture_factory(odd)()
    assert type(model).__module__.startswith("torchvision.")


def test_other_architectures_come_from_torchvision() -> None:
    entry = Catalog.load().resolve("mobilenet_v3_small")
    with torch.device("meta"):
        model = architecture_factory(entry)()
    assert type(model).__module__.startswith("torchvision.")


@pytest.mark.parametrize("architecture", ["resnext50_32x4d", "resnet18"])
def test_builder_arguments_that_do_not_fit_are_a_config_error(architecture: str) -> None:
    entry = Catalog.load().resolve(architecture)
    bad = {"groups": 16, "width_per_group": 4} if architecture.startswith("resnext") else {"groups": 2}
    odd = type(entry)(**{**entry.__dict__, "builder_kwargs": bad})
    with pytest.raises(ConfigError, match="builder_kwargs"):
        architecture_factory(odd)()


def test_classifier_loads_resnet_without_importing_torchvision(tmp_path: Path) -> None:
    weights = save_weights(tmp_path / "r18.pth", "resnet18", num_classes=3)
    toml = tmp_path / "catalog.toml"
    (tmp_path / "labels.txt").write_text("cat\ndog\nteapot\n")
    toml.write_text('[[model]]\nname = "r18"\narchitecture = "resnet18"\nnum_classes = 3\nlabels = "labels.txt"\n')
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from ptm_cli.cache.catalog import Catalog
        from ptm_cli.tasks.classify import classify_images
        from ptm_cli.images.inputs import ImageInput
        from ptm_cli.tasks.classify import build_classifier
        entry = Catalog.load().resolve("r18")
        classifier = build_classifier(entry, weights_file=Path({str(weights)!r}), device="cpu")
        [result] = classify_images([ImageInput("cat", path=Path({str(ROOT / "data" / "chelsea.png")!r}))], classifier)
        assert result.ok and len(result.predictions) == 3, result
        heavy = sorted(m for m in sys.modules if m.startswith(("torchvision", "torch._dynamo", "torch._inductor")))
        print(heavy)
        """
    )
    env = {"PTM_CATALOG": str(toml), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_classifier_with_native_resnet_matches_torchvision_predictions(tmp_path: Path) -> None:
    weights = save_weights(tmp_path / "r18.pth", "resnet18")
    entry = Catalog.load().resolve("resnet18")
    classifier = build_classifier(entry, weights_file=weights, device="cpu")
    assert type(classifier.model).__module__ == "ptm_cli.nets.classic"
    reference = tvm.resnet18()
    reference.load_state_dict(torch.load(weights, weights_only=True))
    batch = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = torch.softmax(reference.eval()(batch), dim=1).topk(5, dim=1)
    got = classifier.predict(batch, top_k=5)
    assert [[p.index for p in row] for row in got] == expected.indices.tolist()
    for row, probs in zip(got, expected.values.tolist(), strict=True):
        assert [p.probability for p in row] == pytest.approx(probs, abs=1e-6)
