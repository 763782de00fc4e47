"""ptm as a real process: start-up imports, pipes closed early, Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ptm_process, save_weights
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
    assert len(out.stdout.splitlines()) == 114


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
def catalog(tmp_path: Path) -> Path:
    """The user catalog that describes the 10-class model `many_images` comes with."""
    (tmp_path / "labels.txt").write_text("".join(f"c{i}\n" for i in range(10)))
    path = tmp_path / "c.toml"
    path.write_text(
        '[[model]]\nname = "tinynet"\narchitecture = "mobilenet_v3_small"\nnum_classes = 10\n'
        'labels = "labels.txt"\nresize = 24\ncrop = 24\n'
    )
    return path


def test_reader_closing_the_pipe_ends_quietly(many_images: tuple[list[str], Path], catalog: Path) -> None:
    with ptm_process(
        classify_args(many_images), env={"PTM_CATALOG": str(catalog)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
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


def test_ctrl_c_exits_130_after_writing_finished_records(many_images: tuple[list[str], Path], catalog: Path) -> None:
    paths, _ = many_images
    args = classify_args(many_images) + paths * 20  # long enough to interrupt
    with ptm_process(args, env={"PTM_CATALOG": str(catalog)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
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
