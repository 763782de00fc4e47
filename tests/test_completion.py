"""Shell completion through click's own protocol: subcommands, options, catalog names, files; no torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = (
    "import atexit, sys\n"
    "from ptm_cli.cli import main\n"
    "atexit.register(lambda: print('HEAVY=' + ','.join(m for m in ('torch', 'PIL', 'numpy') if m in sys.modules),"
    " file=sys.stderr))\n"
    "main()\n"
)


def complete(words: str, shell: str = "bash", cwd: Path | None = None) -> tuple[list[str], str]:
    """Ask for completions of the last word of ``words`` as the shell would; (items, stderr)."""
    parts = words.split(" ")
    env = {**os.environ, "_PTM_COMPLETE": f"{shell}_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(parts) - 1)}
    if shell == "fish":  # fish passes the word being completed, not its index
        env["COMP_CWORD"] = parts[-1]
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, cwd=cwd, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines(), out.stderr


def values(items: list[str]) -> list[str]:
    return [line.split(",", 1)[1] for line in items if line.startswith("plain,")]


def test_subcommands_and_options() -> None:
    items, _ = complete("ptm ")
    assert {"classify", "zebra", "translate", "models", "weights", "hub", "doctor"} <= set(values(items))
    items, _ = complete("ptm classify --pre")
    assert values(items) == ["--precision"]


def test_model_names_come_from_the_catalog_without_torch() -> None:
    items, err = complete("ptm classify -m resnet1")
    assert values(items) == ["resnet101", "resnet152", "resnet18"]
    assert "HEAVY=\n" in err
    items, _ = complete("ptm translate -m horse")
    assert values(items) == ["horse2zebra"]  # translation models only


def test_weights_variants_follow_the_chosen_model() -> None:
    items, _ = complete("ptm classify -m alexnet -w ")
    assert values(items) == ["DEFAULT", "IMAGENET1K_V1"]
    items, _ = complete("ptm classify -m resnet101 -w imagenet1k_v")
    assert values(items) == ["IMAGENET1K_V1", "IMAGENET1K_V2"]
    items, _ = complete("ptm weights rm resnet50 -w IMAGENET1K_V2")
    assert values(items) == ["IMAGENET1K_V2"]


def test_weights_follow_the_commands_default_model_or_its_alias() -> None:
    """Without -m, the variants are those of the model the command would run, not a classifier's."""
    assert values(complete("ptm detect -w ")[0]) == ["DEFAULT", "COCO_V1"]
    assert values(complete("ptm detect -m keypointrcnn_resnet50_fpn -w COCO")[0]) == ["COCO_LEGACY", "COCO_V1"]
    assert values(complete("ptm zebra -w ")[0])[0] == "DEFAULT" and "IMAGENET1K_V1" not in values(
        complete("ptm zebra -w ")[0]
    )


def test_classes_complete_from_the_chosen_models_labels_without_torch() -> None:
    items, err = complete("ptm detect --classes do")
    assert values(items) == ["dog", "donut"]
    assert "HEAVY=\n" in err
    items, _ = complete("ptm detect --classes person,dog,to")
    assert values(items) == ["person,dog,toaster", "person,dog,toilet", "person,dog,toothbrush"]
    assert values(complete("ptm detect -m keypointrcnn_resnet50_fpn --classes ")[0]) == ["person"]
    assert values(complete("ptm detect --classes N/")[0]) == []  # COCO's unused ids are not classes
    assert values(complete("ptm detect -m nosuchmodel --classes p")[0]) == []


def test_images_and_weights_files_complete_as_paths(tmp_path: Path) -> None:
    items, _ = complete("ptm classify ph", cwd=tmp_path)
    assert items == ["file,ph"]  # bash then lists the files itself
    items, _ = complete("ptm classify -w ./my", cwd=tmp_path)
    assert items == ["file,./my"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_each_shell_gets_a_script(shell: str) -> None:
    env = {**os.environ, "_PTM_COMPLETE": f"{shell}_source"}
    out = subprocess.run([sys.executable, "-m", "ptm_cli"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "_PTM_COMPLETE" in out.stdout


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_get_the_same_names(shell: str) -> None:
    items, _ = complete("ptm classify -m alex", shell=shell)
    assert any("alexnet" in line for line in items)


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("ptm batch classify -m alex", "alexnet"),
        ("ptm batch translate -m horse", "horse2zebra"),
        ("ptm batch classify -m resnet18 -w IMAGENET", "IMAGENET1K_V1"),
    ],
)
def test_batch_completes_models_and_weights_as_the_task_commands_do(words: str, expected: str) -> None:
    """Found in round 3: ``ptm batch classify -m <TAB>`` offered nothing."""
    items, _ = complete(words)
    assert expected in values(items)
    task_words = words.replace("batch ", "")
    assert values(items) == values(complete(task_words)[0])


def test_cutout_completes_the_segmentation_models_classes() -> None:
    assert values(complete("ptm segment --cutout pe")[0]) == ["person"]
    assert values(complete("ptm segment --cutout person,ca")[0]) == ["person,car", "person,cat"]
    assert values(complete("ptm segment --cutout __")[0]) == []  # the background is not a class to cut out
    assert "giraffe" in values(complete("ptm segment -m maskrcnn_resnet50_fpn --cutout gi")[0])
