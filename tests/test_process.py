"""ptm as a real process: start-up imports, pipes closed early, Ctrl-C, a stdout that is full or fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TinyClassifier, ptm_process, save_weights
from PIL import Image


def _command_paths() -> list[list[str]]:
    import click

    from ptm_cli.cli import cli

    def walk(group: click.Group, prefix: list[str]) -> list[list[str]]:
        found = []
        context = click.Context(group)
        for name in group.list_commands(context):
            command = group.get_command(context, name)
            assert command is not None, name
            found.append([*prefix, name])
            if isinstance(command, click.Group):
                found.extend(walk(command, [*prefix, name]))
        return found

    return walk(cli, [])


def test_help_of_every_command_imports_no_torch() -> None:
    paths = _command_paths()
    assert len(paths) >= 20  # 7 top-level commands, 9 weights and 4 hub subcommands
    code = (
        "import sys\n"
        "from ptm_cli.cli import run\n"
        f"for argv in [['--help'], *({[[*p, '--help'] for p in paths]!r})]:\n"
        "    assert run(argv) == 0, argv\n"
        "heavy = [m for m in ('torch', 'torchvision', 'PIL', 'numpy', 'rich') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY=\n" in out.stderr
    for path in paths:
        assert f"Usage: ptm {' '.join(path)} " in out.stdout


def test_version() -> None:
    out = subprocess.run([sys.executable, "-m", "ptm_cli", "--version"], capture_output=True, text=True, check=True)
    from ptm_cli import __version__

    assert out.stdout.strip() == f"ptm, version {__version__}"


def test_models_listing_imports_no_torch() -> None:
    code = (
        "import sys\nfrom ptm_cli.cli import run\nassert run(['models', '-t', 'classify', '-f', 'jsonl']) == 0\n"
        "print('torch' in sys.modules, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip() == "False"
    assert len(out.stdout.splitlines()) == 124  # 114 image classifiers and 10 Kinetics video classifiers


@pytest.fixture(scope="module")
def many_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    folder = tmp_path_factory.mktemp("many")
    weights = save_weights(folder / "m.pth", "mobilenet_v3_small", seed=3, num_classes=10)
    paths = []
    for i in range(60):
        path = folder / f"{i:03}.png"
        Image.new("RGB", (24, 24), (i * 4, 100, 200 - i)).save(path)
        paths.append(str(path))
    return paths, weights


def classify_args(many: tuple[list[str], Path]) -> list[str]:
    paths, weights = many
    return ["classify", "-m", "tinynet", "-w", str(weights), "--batch-size", "1", "-f", "jsonl", *paths]


@pytest.fixture
def tinynet_catalog(tmp_path: Path) -> Path:
    """The user catalog that describes the 10-class model `many_images` comes with."""
    (tmp_path / "labels.txt").write_text("".join(f"c{i}\n" for i in range(10)))
    path = tmp_path / "c.toml"
    path.write_text(
        '[[model]]\nname = "tinynet"\narchitecture = "mobilenet_v3_small"\nnum_classes = 10\n'
        'labels = "labels.txt"\nresize = 24\ncrop = 24\n'
    )
    return path


def test_reader_closing_the_pipe_ends_quietly(many_images: tuple[list[str], Path], tinynet_catalog: Path) -> None:
    with ptm_process(
        classify_args(many_images),
        env={"PTM_CATALOG": str(tinynet_catalog)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        assert first.startswith(b'{"input"')
        proc.stdout.close()  # what `| head -1` does
        stderr = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert code == 141
    assert "Traceback" not in stderr
    assert "Exception ignored" not in stderr
    assert "BrokenPipe" not in stderr


def test_ctrl_c_exits_130_after_writing_finished_records(
    many_images: tuple[list[str], Path], tinynet_catalog: Path
) -> None:
    paths, _ = many_images
    args = classify_args(many_images) + paths * 20  # long enough to interrupt
    with ptm_process(
        args, env={"PTM_CATALOG": str(tinynet_catalog)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        assert first.startswith(b'{"input"')
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 130
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    lines = [first, *rest.splitlines()]
    assert all(line.strip().endswith(b"}") for line in lines)  # no half-written record
    assert len(lines) < len(args)


def test_a_command_imports_only_its_own_module() -> None:
    """Commands load lazily: a one-file `ptm classify` does not pay for `ptm batch`'s or `ptm serve`'s imports."""
    code = (
        "import sys\n"
        "from ptm_cli.cli import run\n"
        "assert run(['models', '-f', 'jsonl']) == 0\n"
        "print(sorted(m for m in sys.modules if m.startswith('ptm_cli.commands.')), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = out.stderr.strip().splitlines()[-1]
    assert "ptm_cli.commands.cmd_models" in loaded
    for other in ("batch", "classify", "serve", "weights", "hub", "translate"):
        assert f"ptm_cli.commands.{other}'" not in loaded


# --- a stdout that fails --------------------------------------------------------------------------


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
def test_classify_into_a_full_stdout(tiny: TinyClassifier, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    with open("/dev/full", "w") as full:
        code, stderr = run_to(full, [*tiny.classify, str(tmp_path / "x.png")], env=os.environ)
    assert code == 2, stderr
    assert stderr.strip().splitlines()[-1].startswith("ptm: error: cannot write to stdout (No space left on device)")
    assert "Traceback" not in stderr and "Exception ignored" not in stderr


def test_records_lost_midway_are_exit_1(tiny: TinyClassifier, tmp_path: Path) -> None:
    import resource

    from PIL import Image

    names = []
    for index in range(40):
        Image.new("RGB", (40, 40), (index * 6, 0, 0)).save(tmp_path / f"{index:02d}.png")
        names.append(str(tmp_path / f"{index:02d}.png"))

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))  # writes past 3000 bytes fail with EFBIG

    with open(tmp_path / "out.jsonl", "w") as out:
        code, stderr = run_to(out, [*tiny.classify, "-f", "jsonl", *names], env=os.environ, preexec_fn=small_files)
    assert code == 1, stderr
    assert stderr.strip().splitlines()[-1].startswith("ptm: error: cannot write to stdout (File too large)")
    assert "the rest of the output was lost" in stderr
    delivered = (tmp_path / "out.jsonl").read_text().splitlines()
    assert 0 < len(delivered) < 40
    assert all(json.loads(line)["input"] == names[i] for i, line in enumerate(delivered[:-1]))
