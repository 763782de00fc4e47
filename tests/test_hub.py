"""torch.hub through ptm: trust decided up front, no prompt, no network for cached repositories, clean stdout."""

from __future__ import annotations

import fractions
import inspect
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.hub
from torch import nn

from ptm_cli import hub
from ptm_cli.errors import (
    ConfigError,
    DownloadError,
    MissingDependency,
    OfflineError,
    UnsafeWeights,
    UsageError,
)
from ptm_cli.hub.repos import parse_model_spec
from ptm_cli.tasks.base import ModelOptions
from ptm_cli.tasks.classify import Classifier, load_classifier

ROOT = Path(__file__).resolve().parent.parent


def marker_hubconf(marker: Path) -> str:
    """A hubconf whose mere import leaves a file behind."""
    return textwrap.dedent(
        f'''
        import pathlib
        pathlib.Path({str(marker)!r}).write_text("hubconf ran")
        print("marker hubconf imported")

        import torch


        def model():
            """A two by two linear layer."""
            return torch.nn.Linear(2, 2)
        '''
    )


@pytest.fixture
def hub_home() -> Path:
    return Path(os.environ["TORCH_HOME"]) / "hub"


def make_cached(hub_home: Path, owner: str, name: str, ref: str, source: str) -> Path:
    """A repository as torch.hub leaves it in its cache: <hub>/<owner>_<name>_<ref>/hubconf.py."""
    folder = hub_home / f"{owner}_{name}_{ref.replace('/', '_')}"
    folder.mkdir(parents=True)
    (folder / "hubconf.py").write_text(source)
    return folder


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "marker.txt"


@pytest.fixture
def cached_untrusted(hub_home: Path, marker: Path) -> Path:
    return make_cached(hub_home, "alice", "models", "v1", marker_hubconf(marker))


@pytest.fixture
def no_urlopen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything tries urllib (torch.hub binds its own reference to urlopen)."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network call attempted: {args!r}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def tiny_state(num_classes: int = 1000) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
    return model.state_dict()


# --- parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "owner", "name", "ref"),
    [
        ("pytorch/vision", "pytorch", "vision", None),
        ("pytorch/vision:v0.10.0", "pytorch", "vision", "v0.10.0"),
        ("some-org/my_repo.x:feature/branch", "some-org", "my_repo.x", "feature/branch"),
        ("  alice/models:0123abc  ", "alice", "models", "0123abc"),
    ],
)
def test_parse_repo_github(spec: str, owner: str, name: str, ref: str | None) -> None:
    repo = hub.parse_repo(spec)
    assert (repo.source, repo.owner, repo.name, repo.ref) == ("github", owner, name, ref)
    assert repo.trust_key == f"{owner}_{name}"
    if ref:
        assert repo.cache_dir_name() == f"{owner}_{name}_{ref.replace('/', '_')}"


@pytest.mark.parametrize(
    "spec",
    ["", "vision", "a/b/c", "a/b:", ":v1", "a b/c", "a/b:v1:v2", "_x/y", "a/..", "a/b:../x", "a/b:x..y", "a/b:x/"],
)
def test_parse_repo_malformed(spec: str) -> None:
    with pytest.raises(UsageError):
        hub.parse_repo(spec)


def test_parse_repo_local(hub_repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for spec in ("./tinyrepo", str(hub_repo), "tinyrepo"):
        repo = hub.parse_repo(spec)
        assert repo.source == "local"
        assert repo.path == hub_repo.resolve()
    (tmp_path / "plain").mkdir()
    with pytest.raises(UsageError, match=r"hubconf\.py"):
        hub.parse_repo("./plain")
    with pytest.raises(UsageError, match="does not exist"):
        hub.parse_repo("./missing")


def test_parse_kwargs() -> None:
    parsed = hub.parse_kwargs(
        ["pretrained=true", "num_classes=10", "name=foo", "scale=0.5", "x=none", "flag=False", "neg=-3", "e=1e-3"]
    )
    assert parsed == {
        "pretrained": True,
        "num_classes": 10,
        "name": "foo",
        "scale": 0.5,
        "x": None,
        "flag": False,
        "neg": -3,
        "e": 0.001,
    }
    assert type(parsed["num_classes"]) is int and type(parsed["pretrained"]) is bool
    assert hub.parse_kwargs(['word="true"', "path=a=b", "empty=", "nan=nan"]) == {
        "word": "true",
        "path": "a=b",
        "empty": "",
        "nan": "nan",
    }
    assert hub.parse_kwargs([]) == {}


@pytest.mark.parametrize("items", [["novalue"], ["=1"], ["1x=2"], ["class=1"], ["a=1", "a=2"], ["a-b=1"]])
def test_parse_kwargs_malformed(items: list[str]) -> None:
    with pytest.raises(UsageError):
        hub.parse_kwargs(items)


def test_parse_model_spec(hub_repo: Path) -> None:
    repo, entry = hub.parse_model_spec("hub:alice/models:feature/x/resnet")
    assert (repo.owner, repo.name, repo.ref, entry) == ("alice", "models", "feature/x", "resnet")
    repo, entry = hub.parse_model_spec(f"hub:{hub_repo}/tiny")
    assert (repo.source, repo.path, entry) == ("local", hub_repo.resolve(), "tiny")
    for bad in ("alice/models/x", "hub:alice", "hub:alice/models/", "hub:alice/models/1x"):
        with pytest.raises(UsageError):
            hub.parse_model_spec(bad)


# --- local directories --------------------------------------------------------------------------------


def test_local_list_help_and_load(hub_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hub.list_entrypoints(str(hub_repo)) == ["broken", "needs_weights", "not_a_model", "sequence_model", "tiny"]
    doc = hub.entry_help(str(hub_repo), "tiny")
    assert doc.startswith("A tiny classifier") and "num_classes: how many logits" in doc
    assert hub.entry_help(str(hub_repo), "broken") == ""

    model, info = hub.load_model(str(hub_repo), "tiny", kwargs={"num_classes": 10, "scale": 0.5})
    assert not model.training
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    assert info.class_name == "Sequential"
    assert info.num_params == sum(p.numel() for p in model.parameters()) == 3 * 8 * 9 + 8 + 8 * 10 + 10
    assert info.source == f"local dir {hub_repo.resolve()}"
    assert info.entry == "tiny" and info.directory == hub_repo.resolve()
    captured = capsys.readouterr()
    assert captured.out == ""  # hubconf printed, but stdout belongs to results
    assert "hubconf says hello" in captured.err
    # A local directory is the user's own code: trusted without a flag, and nothing is recorded.
    assert not (Path(os.environ["TORCH_HOME"]) / "hub" / "trusted_list").exists()


def test_local_errors(hub_repo: Path) -> None:
    spec = str(hub_repo)
    with pytest.raises(UsageError, match="tiny"):  # the message lists the entry points there are
        hub.load_model(spec, "missing")
    with pytest.raises(UsageError, match="does not accept"):
        hub.load_model(spec, "tiny", kwargs={"colour": "red"})
    with pytest.raises(UsageError, match="not a torch model"):
        hub.load_model(spec, "not_a_model")
    with pytest.raises(UsageError, match="KeyError") as raised:
        hub.load_model(spec, "broken")
    assert isinstance(raised.value.__cause__, KeyError)  # kept for PTM_DEBUG tracebacks
    with pytest.raises(UsageError):
        hub.load_model(spec, "_build")
    with pytest.raises(UsageError, match="always trusted"):
        hub.trust(spec)


def test_missing_dependencies(tmp_path: Path) -> None:
    repo = tmp_path / "deps"
    repo.mkdir()
    (repo / "hubconf.py").write_text("dependencies = ['torch', 'surely_not_installed_pkg']\ndef m():\n    pass\n")
    with pytest.raises(MissingDependency, match="surely_not_installed_pkg"):
        hub.load_model(str(repo), "m")
    (repo / "hubconf.py").write_text("import surely_not_installed_pkg\n")
    with pytest.raises(MissingDependency, match="surely_not_installed_pkg"):
        hub.list_entrypoints(str(repo))


# --- trust ---------------------------------------------------------------------------------------------


def test_untrusted_cached_repo_runs_no_code(cached_untrusted: Path, marker: Path, hub_home: Path) -> None:
    for call in (
        lambda: hub.load_model("alice/models:v1", "model"),
        lambda: hub.list_entrypoints("alice/models:v1"),
        lambda: hub.entry_help("alice/models:v1", "model"),
    ):
        with pytest.raises(UsageError) as raised:
            call()
        message = str(raised.value)
        assert "--trust-repo" in message and "ptm hub trust alice/models" in message
        assert raised.value.exit_code == 2
    assert not marker.exists()
    assert not (hub_home / "trusted_list").exists()
    assert hub.trusted_by("alice/models:v1") is None


def test_untrusted_never_prompts_with_closed_stdin(cached_untrusted: Path, marker: Path) -> None:
    code = textwrap.dedent(
        """
        import socket, sys

        def no_network(*args, **kwargs):
            raise OSError("network used")

        socket.socket.connect = no_network
        from ptm_cli import hub
        from ptm_cli.errors import PtmError

        try:
            hub.load_model("alice/models:v1", "model")
        except PtmError as exc:
            print(type(exc).__name__, exc, file=sys.stderr)
            print("torch imported:", "torch" in sys.modules, file=sys.stderr)
            sys.exit(exc.exit_code)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ),
    )
    assert done.returncode == 2, done.stderr
    assert "UsageError" in done.stderr and "--trust-repo" in done.stderr
    assert "torch imported: False" in done.stderr  # refused before even importing torch
    assert done.stdout == ""
    assert not marker.exists()


def test_trust_flag_loads_cached_repo_without_network(
    cached_untrusted: Path, marker: Path, hub_home: Path, no_urlopen: None, capsys: pytest.CaptureFixture[str]
) -> None:
    model, info = hub.load_model("alice/models:v1", "model", kwargs={}, trust_repo=True)
    assert isinstance(model, nn.Linear) and not model.training
    assert marker.read_text() == "hubconf ran"
    assert info.source == f"hub cache {cached_untrusted}"
    assert info.trusted_by == "--trust-repo"
    assert info.num_params == 6
    captured = capsys.readouterr()
    assert captured.out == "" and "marker hubconf imported" in captured.err
    # --trust-repo is recorded, as torch.hub records trust_repo=True, so the next run needs no flag.
    assert (hub_home / "trusted_list").read_text() == "alice_models\n"
    assert hub.list_entrypoints("alice/models:v1") == ["model"]
    assert hub.entry_help("alice/models:v1", "model") == "A two by two linear layer."


def test_cached_repo_loads_offline(cached_untrusted: Path, monkeypatch: pytest.MonkeyPatch, no_urlopen: None) -> None:
    monkeypatch.setenv("PTM_OFFLINE", "1")
    _, info = hub.load_model("alice/models:v1", "model", trust_repo=True)
    assert info.source.startswith("hub cache ")


def test_trust_writes_the_list_torch_hub_reads(hub_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub.trust("bob/nets:v2") is True
    assert hub.trust("bob/nets") is False  # one line per repository, whatever the ref
    assert (hub_home / "trusted_list").read_text() == "bob_nets\n"

    def no_prompt(prompt: str = "") -> str:
        raise AssertionError(f"torch.hub prompted: {prompt}")

    monkeypatch.setattr("builtins.input", no_prompt)
    # torch.hub's own check, with trust_repo="check", accepts it without asking.
    torch.hub._check_repo_is_trusted("bob", "nets", "bob_nets_notcached", trust_repo="check")
    assert (hub_home / "trusted_list").read_text() == "bob_nets\n"


def test_trust_recorded_by_torch_hub_counts(hub_home: Path) -> None:
    hub_home.mkdir(parents=True)
    torch.hub._check_repo_is_trusted("carol", "zoo", "carol_zoo_main", trust_repo=True)
    reason = hub.trusted_by("carol/zoo:main")
    assert reason is not None and "trusted_list" in reason


def test_trust_keeps_an_unterminated_last_line(hub_home: Path) -> None:
    hub_home.mkdir(parents=True)
    (hub_home / "trusted_list").write_text("first_repo")
    assert hub.trust("dave/repo")
    assert (hub_home / "trusted_list").read_text() == "first_repo\ndave_repo\n"
    assert hub.trusted_names() == {"first_repo", "dave_repo"}


def test_default_owners_match_torch(hub_home: Path, marker: Path, no_urlopen: None) -> None:
    assert set(hub.repos.TRUSTED_OWNERS) == set(torch.hub._TRUSTED_REPO_OWNERS)
    folder = make_cached(hub_home, "pytorch", "fakevision", "v1", marker_hubconf(marker))
    _, info = hub.load_model("pytorch/fakevision:v1", "model")
    assert "trusted by torch.hub by default" in info.trusted_by
    assert info.directory == folder
    assert not (hub_home / "trusted_list").exists()  # nothing to record
    # torch compares owners case-sensitively, and so does ptm.
    assert hub.trusted_by("PyTorch/fakevision:v1") is None


# --- offline and downloads -----------------------------------------------------------------------------


def test_offline_without_ref(monkeypatch: pytest.MonkeyPatch, hub_home: Path, no_urlopen: None) -> None:
    monkeypatch.setenv("PTM_OFFLINE", "1")
    make_cached(hub_home, "alice", "models", "main", "def model():\n    pass\n")
    with pytest.raises(OfflineError, match=r"alice/models:main"):
        hub.load_model("alice/models", "model", trust_repo=True)
    assert not (hub_home / "trusted_list").exists()  # nothing recorded for a run that could not start


def test_offline_not_cached(monkeypatch: pytest.MonkeyPatch, hub_home: Path, no_urlopen: None) -> None:
    monkeypatch.setenv("PTM_OFFLINE", "1")
    with pytest.raises(OfflineError) as raised:
        hub.list_entrypoints("alice/other:v3", trust_repo=True)
    assert str(hub_home) in str(raised.value)


def test_cached_folder_without_hubconf(hub_home: Path) -> None:
    (hub_home / "alice_models_v1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="delete that folder"):
        hub.load_model("alice/models:v1", "model", trust_repo=True)


def test_download_failure_is_a_ptm_error(hub_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Not cached and online: torch.hub downloads, which the test sandbox's blocked network turns into a failure.
    with pytest.raises(DownloadError):
        hub.load_model("alice/notcached:v1", "model", trust_repo=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Downloading" in captured.err  # torch.hub's own line, moved off stdout


@pytest.mark.parametrize(
    ("spec", "token", "skip"),
    [
        ("alice/models:v1.2", None, True),
        ("alice/models", None, True),
        ("alice/models:0123abcd", None, False),  # a commit id could come from a fork: validate it
        ("alice/models:v1.2", "secret-token", False),  # with a token the rate limit is no problem
    ],
)
def test_validation_policy(
    spec: str, token: str | None, skip: bool, monkeypatch: pytest.MonkeyPatch, hub_home: Path
) -> None:
    seen: dict[str, Any] = {}

    def fake_list(github: str, **kwargs: Any) -> list[str]:
        seen.update(kwargs, github=github)
        return ["model"]

    monkeypatch.setattr(torch.hub, "list", fake_list)
    if token:
        monkeypatch.setenv("GITHUB_TOKEN", token)
    else:
        monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    assert hub.list_entrypoints(spec, trust_repo=True) == ["model"]
    assert seen == {"github": spec, "trust_repo": True, "skip_validation": skip}


def test_reserved_torch_hub_keywords(hub_home: Path) -> None:
    with pytest.raises(UsageError, match="source"):
        hub.load_model("alice/notcached:v1", "model", kwargs={"source": "x"}, trust_repo=True)


# --- weights inside hub calls ----------------------------------------------------------------------------


def test_hub_weights_load_with_weights_only(hub_repo: Path, hub_home: Path, no_urlopen: None) -> None:
    checkpoints = hub_home / "checkpoints"
    checkpoints.mkdir(parents=True)
    target = checkpoints / "tiny-0123abcd.pth"
    state = tiny_state()
    torch.save(state, target)
    model, _ = hub.load_model(str(hub_repo), "needs_weights")
    assert torch.equal(model.state_dict()["3.weight"], state["3.weight"])

    torch.save({**state, "extra": fractions.Fraction(1, 3)}, target)
    with pytest.raises(UnsafeWeights, match="weights_only"):
        hub.load_model(str(hub_repo), "needs_weights")
    # The default is torch's again outside the call.
    default = inspect.signature(torch.hub.load_state_dict_from_url).parameters["weights_only"].default
    assert default is False
    with hub.sandbox.safe_hub_weights() as patched:
        assert patched
        assert inspect.signature(torch.hub.load_state_dict_from_url).parameters["weights_only"].default is True


def test_hub_weights_offline(hub_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTM_OFFLINE", "1")
    original = torch.hub.download_url_to_file
    with pytest.raises(OfflineError, match=r"example\.invalid"):
        hub.load_model(str(hub_repo), "needs_weights")
    assert torch.hub.download_url_to_file is original


def test_hub_weights_download_failure(hub_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DownloadError):
        hub.load_model(str(hub_repo), "needs_weights")
    assert capsys.readouterr().out == ""


# --- classification ----------------------------------------------------------------------------------------


def hub_classifier(
    spec: str, *, labels_file: Path | None = None, kwargs: dict[str, Any] | None = None, device: str = "cpu"
) -> Classifier:
    """A classifier for ``-m hub:...`` as ``ptm classify`` loads it, with ``--arg KEY=VALUE`` for ``kwargs``."""
    arguments = tuple(f"{key}={value}" for key, value in (kwargs or {}).items())
    labels = None if labels_file is None else str(labels_file)
    return load_classifier(ModelOptions(spec, device=device, labels_file=labels, hub_args=arguments))


def test_hub_classifier_local(hub_repo: Path) -> None:
    spec = f"hub:{hub_repo}/tiny"
    classifier = hub_classifier(spec, device="cpu")
    assert isinstance(classifier, Classifier)
    assert not classifier.model.training
    assert classifier.entry.model == spec and classifier.entry.task == "classify"
    assert (classifier.preprocess.resize, classifier.preprocess.crop) == (256, 224)
    assert classifier.labels is not None and len(classifier.labels) == 1000
    results = classifier.predict(torch.rand(2, 3, 224, 224), 5)
    assert len(results) == 2
    for predictions in results:
        assert [p.rank for p in predictions] == [1, 2, 3, 4, 5]
        assert all(p.label == classifier.labels[p.index] and p.label for p in predictions)
        probabilities = [p.probability for p in predictions]
        assert probabilities == sorted(probabilities, reverse=True)


def test_hub_classifier_labels(hub_repo: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(10)) + "\n")
    spec = f"hub:{hub_repo}/tiny"
    classifier = hub_classifier(spec, labels_file=labels, device="cpu", kwargs={"num_classes": 10})
    predictions = classifier.predict(torch.rand(1, 3, 224, 224), 5)[0]
    assert all(p.label == f"class {p.index}" for p in predictions)
    with pytest.raises(ConfigError, match="1000 class scores"):
        hub_classifier(spec, labels_file=labels, device="cpu")


def test_hub_classifier_refuses_non_classifiers(hub_repo: Path) -> None:
    with pytest.raises(UsageError, match="class scores"):
        hub_classifier(f"hub:{hub_repo}/sequence_model", device="cpu")
    with pytest.raises(UsageError, match="hub:"):
        parse_model_spec("resnet101")


def test_hub_classifier_needs_trust(cached_untrusted: Path, marker: Path) -> None:
    with pytest.raises(UsageError, match="--trust-repo"):
        hub_classifier("hub:alice/models:v1/model", device="cpu")
    assert not marker.exists()


def test_importing_hub_does_not_import_torch() -> None:
    code = "import sys, ptm_cli.hub, ptm_cli.doctor; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.stdout.strip() == "False", done.stderr
