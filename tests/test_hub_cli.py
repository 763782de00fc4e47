"""`ptm hub ...`, `ptm classify -m hub:...` and `ptm doctor` from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import DATA, run_ptm

MARKER_HUBCONF = '''
"""Writes a marker file when imported: proves whether repository code ran."""
import os as _os
from pathlib import Path as _Path
_Path(_os.environ["PTM_TEST_MARKER"]).write_text("ran")
from torch import nn

def model():
    """A one-layer model."""
    return nn.Linear(2, 2)
'''


@pytest.fixture
def cached_repo(isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A GitHub repository as torch.hub leaves it in its cache, at an explicit ref."""
    folder = isolated_env / "torch" / "hub" / "someone_models_v1"
    folder.mkdir(parents=True)
    (folder / "hubconf.py").write_text(MARKER_HUBCONF)
    marker = tmp_path / "marker"
    monkeypatch.setenv("PTM_TEST_MARKER", str(marker))
    return marker


def test_list_help_and_load_a_local_repository(hub_repo: Path) -> None:
    listed = run_ptm(["hub", "list", str(hub_repo), "-f", "jsonl"])
    assert listed.code == 0, listed.stderr
    assert {r["entry"] for r in listed.records()} >= {"tiny", "needs_weights"}

    helped = run_ptm(["hub", "help", str(hub_repo), "tiny"])
    assert helped.stdout.startswith("A tiny classifier")

    loaded = run_ptm(["hub", "load", str(hub_repo), "tiny", "--arg", "num_classes=10", "-f", "jsonl"])
    assert loaded.code == 0, loaded.stderr
    (record,) = loaded.records()  # "hubconf says hello" went to stderr, not into the data
    assert record["class"] == "Sequential"
    assert record["params"] == 3 * 8 * 9 + 8 + 8 * 10 + 10
    assert "hubconf says hello" in loaded.stderr


def test_classify_with_a_hub_model(hub_repo: Path) -> None:
    result = run_ptm(["classify", "-m", f"hub:{hub_repo}/tiny", "-k", "3", str(DATA / "coffee.png")])
    assert result.code == 0, result.stderr
    (record,) = result.records()
    assert record["model"] == f"hub:{hub_repo}/tiny"
    assert len(record["predictions"]) == 3
    labels = (DATA.parent / "models" / "imagenet_classes.txt").read_text().splitlines()
    assert all(p["label"] == labels[p["index"]] for p in record["predictions"])


def test_hub_model_with_its_own_labels(hub_repo: Path, tmp_path: Path) -> None:
    (tmp_path / "four.txt").write_text("w\nx\ny\nz\n")
    result = run_ptm(
        [
            "classify",
            "-m",
            f"hub:{hub_repo}/tiny",
            "--arg",
            "num_classes=4",
            "--labels",
            str(tmp_path / "four.txt"),
            str(DATA / "coffee.png"),
        ]
    )
    assert result.code == 0, result.stderr
    assert {p["label"] for p in result.records()[0]["predictions"]} == {"w", "x", "y", "z"}


def test_hub_only_options_are_refused_for_catalog_models() -> None:
    result = run_ptm(["classify", "--trust-repo", str(DATA / "coffee.png")])
    assert result.code == 2 and "hub: models only" in result.stderr


def test_untrusted_repository_is_refused_and_never_runs(cached_repo: Path) -> None:
    result = run_ptm(["hub", "load", "someone/models:v1", "model"])
    assert result.code == 2
    assert "--trust-repo" in result.stderr and "ptm hub trust" in result.stderr
    assert not cached_repo.exists()


def test_trust_flag_and_trust_command(cached_repo: Path) -> None:
    once = run_ptm(["hub", "load", "someone/models:v1", "model", "--trust-repo", "-f", "jsonl"])
    assert once.code == 0, once.stderr
    assert once.records()[0]["class"] == "Linear"
    assert cached_repo.read_text() == "ran"
    assert run_ptm(["hub", "trust", "someone/models"]).code == 0
    again = run_ptm(["hub", "list", "someone/models:v1", "-f", "jsonl"])
    assert again.code == 0 and again.records() == [{"entry": "model"}]


def test_closed_stdin_never_hangs(cached_repo: Path, isolated_env: Path) -> None:
    env = {**os.environ, "HOME": str(isolated_env), "TORCH_HOME": str(isolated_env / "torch")}
    done = subprocess.run(
        [sys.executable, "-m", "ptm_cli", "hub", "load", "someone/models:v1", "model"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2
    assert "--trust-repo" in done.stderr
    assert not cached_repo.exists()


def test_offline_without_a_ref_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTM_OFFLINE", "1")
    result = run_ptm(["hub", "list", "pytorch/vision"])
    assert result.code == 2
    assert "ref" in result.stderr and "Traceback" not in result.stderr


def test_doctor_reports_every_field_as_json() -> None:
    result = run_ptm(["doctor", "-f", "json"])
    report = json.loads(result.stdout)
    assert result.code == (0 if report["ok"] else 1)
    for section in (
        "python",
        "platform",
        "ptm",
        "packages",
        "cpu",
        "torch",
        "cuda",
        "mps",
        "cache",
        "weights",
        "settings",
    ):
        assert section in report, section
    assert report["python"]["version"] == sys.version.split()[0]
    assert set(report["packages"]) >= {"torch", "torchvision", "Pillow", "click", "rich"}
    table = run_ptm(["doctor", "-f", "jsonl"]).records()
    assert table[0] == {"section": "summary", "key": "ok", "value": "yes" if report["ok"] else "no"}


# --- OWNER/NAME always means GitHub ---------------------------------------------------------------


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
