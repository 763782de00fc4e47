"""`ptm zebra` and `ptm translate` from the command line: files, stdout, records, exit codes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from helpers import DATA, run_ptm
from PIL import Image


@pytest.fixture
def zebra(generator_file: Path) -> list[str]:
    """``ptm zebra`` with the shared generator, before its inputs and outputs.

    --size 32 keeps the generator cheap; the engine's own tests cover 256 and full.
    """
    return ["zebra", "-w", str(generator_file), "--size", "32"]


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def odd_image(path: Path, size: tuple[int, int] = (67, 45)) -> Path:
    Image.effect_noise(size, 50).convert("RGB").save(path)
    return path


def test_one_file_keeps_the_input_size(zebra: list[str], tmp_path: Path) -> None:
    source = odd_image(tmp_path / "horse.png")
    result = run_ptm([*zebra, str(source), "-o", str(tmp_path / "out.png")])
    assert result.code == 0, result.stderr
    (record,) = result.records()
    assert record["output"] == str(tmp_path / "out.png")
    assert record["size"] == [67, 45]
    assert record["model"] == "horse2zebra"
    assert record["seconds"] >= 0
    assert image_size(tmp_path / "out.png") == (67, 45)


def test_without_an_output_the_zebra_goes_next_to_the_horse(zebra: list[str], tmp_path: Path) -> None:
    horses = tmp_path / "horses"
    horses.mkdir()
    first, second = odd_image(horses / "horse.jpg"), odd_image(horses / "pony.png", (40, 30))
    result = run_ptm([*zebra, str(first), str(second)])
    assert result.code == 0, result.stderr
    assert [r["output"] for r in result.records()] == [str(horses / "horse.zebra.png"), str(horses / "pony.zebra.png")]
    assert image_size(horses / "horse.zebra.png") == (67, 45) and image_size(horses / "pony.zebra.png") == (40, 30)
    # Never overwritten without --force: the second run says so and leaves the file alone.
    before = (horses / "horse.zebra.png").read_bytes()
    again = run_ptm([*zebra, str(first)])
    assert again.code == 1 and "already exists; use --force" in again.records()[0]["error"]["message"]
    assert (horses / "horse.zebra.png").read_bytes() == before
    assert run_ptm([*zebra, str(first), "--force"]).code == 0


def test_translate_names_the_output_after_the_model(generator_file: Path, tmp_path: Path) -> None:
    source = odd_image(tmp_path / "summer.png")
    result = run_ptm(
        ["translate", "-m", "style_monet", "-w", str(generator_file), "--size", "32", str(source), "--format", "jpeg"]
    )
    assert result.code == 0, result.stderr
    assert result.records()[0]["output"] == str(tmp_path / "summer.style_monet.jpg")


def test_stdin_to_stdout_is_a_valid_png_and_nothing_else(zebra: list[str], tmp_path: Path) -> None:
    data = (DATA / "rocket.jpg").read_bytes()
    result = run_ptm([*zebra, "-", "-o", "-"], stdin=data)
    assert result.code == 0, result.stderr
    assert result.stdout_bytes.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(result.stdout_bytes)) as image:
        assert image.size == (640, 427)


def test_stdout_bytes_through_a_real_pipe(generator_file: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ptm_cli",
            "zebra",
            "-w",
            str(generator_file),
            "--size",
            "32",
            "-",
            "-o",
            "-",
            "--format",
            "jpeg",
        ],
        input=(DATA / "rocket.jpg").read_bytes(),
        capture_output=True,
        timeout=120,
        check=True,
    )
    with Image.open(io.BytesIO(done.stdout)) as image:
        assert image.format == "JPEG" and image.size == (640, 427)


def test_many_inputs_into_a_directory(zebra: list[str], tmp_path: Path) -> None:
    a, b = odd_image(tmp_path / "a.jpg", (40, 30)), odd_image(tmp_path / "b.png", (31, 50))
    out = tmp_path / "out"
    result = run_ptm([*zebra, str(a), str(b), "--output-dir", str(out), "--suffix", "_zebra"])
    assert result.code == 0, result.stderr
    assert [r["output"] for r in result.records()] == [str(out / "a_zebra.png"), str(out / "b_zebra.png")]
    assert image_size(out / "b_zebra.png") == (31, 50)


def test_existing_outputs_are_kept_unless_forced_and_can_be_skipped(zebra: list[str], tmp_path: Path) -> None:
    source = odd_image(tmp_path / "h.png")
    target = tmp_path / "z.png"
    target.write_bytes(b"precious")
    refused = run_ptm([*zebra, str(source), "-o", str(target)])
    assert refused.code == 1
    assert refused.records()[0]["error"]["type"] == "OutputError"
    assert "--force" in refused.records()[0]["error"]["message"]
    assert target.read_bytes() == b"precious"

    skipped = run_ptm([*zebra, str(source), "-o", str(target), "--skip-existing"])
    assert skipped.code == 0 and skipped.records()[0]["skipped"] is True

    forced = run_ptm([*zebra, str(source), "-o", str(target), "--force"])
    assert forced.code == 0
    assert image_size(target) == (67, 45)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.png", "z.png"]  # no temporary files


def test_bad_inputs_get_records_and_no_files(zebra: list[str], tmp_path: Path) -> None:
    good = odd_image(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    result = run_ptm([*zebra, str(tmp_path / "bad.jpg"), str(good), "--output-dir", str(out)])
    assert result.code == 1
    bad, ok = result.records()
    assert bad["error"]["type"] == "UnreadableImage"
    assert ok["output"] == str(out / "good.png")
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]


def test_full_size_tiles_keep_the_size(zebra: list[str], tmp_path: Path) -> None:
    source = odd_image(tmp_path / "h.png", (150, 90))
    args = ["zebra", *zebra[1:3], str(source), "-o", str(tmp_path / "z.png"), "--size", "full", "--tile", "64"]
    result = run_ptm(args)
    assert result.code == 0, result.stderr
    assert image_size(tmp_path / "z.png") == (150, 90)


def test_translate_runs_any_translation_model(generator_file: Path, tmp_path: Path) -> None:
    source = odd_image(tmp_path / "p.png")
    result = run_ptm(
        [
            "translate",
            "-m",
            "style_monet",
            "-w",
            str(generator_file),
            "--size",
            "32",
            str(source),
            "-o",
            str(tmp_path / "m.webp"),
        ]
    )
    assert result.code == 0, result.stderr
    assert result.records()[0]["model"] == "style_monet"
    with Image.open(tmp_path / "m.webp") as written:
        assert written.format == "WEBP"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["zebra", "-"], "no folder to write beside; give -o FILE or -o -"),
        (["zebra", "a.png", "b.png", "-o", "z.png"], "--output-dir"),
        (["zebra", "x.png", "-o", "z.xyz"], "--format"),
        (["zebra", "x.png", "-o", "z.png", "--format", "gif"], "cannot write"),
        (["zebra", "x.png", "-o", "z.png", "--size", "big"], "neither a number"),
        (["translate", "-m", "resnet101", "x.png", "-o", "z.png"], "ptm classify"),
        (["translate", "-m", "nosuch", "x.png", "-o", "z.png"], "unknown model"),
    ],
)
def test_usage_errors(args: list[str], message: str) -> None:
    result = run_ptm(args)
    assert result.code == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_offline_without_the_books_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PTM_OFFLINE", "1")
    result = run_ptm(["zebra", str(odd_image(tmp_path / "h.png")), "-o", str(tmp_path / "z.png")])
    assert result.code == 2
    assert "horse2zebra_0.4.0.pth" in result.stderr and "ptm weights import" in result.stderr
    assert not (tmp_path / "z.png").exists()


def test_generator_weights_in_every_format(generator_file: Path, tmp_path: Path) -> None:
    source = odd_image(tmp_path / "h.png")
    outputs = {}
    for suffix in (".pth", ".safetensors", ".h5"):
        weights = generator_file if suffix == ".pth" else tmp_path / f"gen{suffix}"
        if suffix != ".pth":
            assert run_ptm(["weights", "convert", str(generator_file), str(weights)]).code == 0
        target = tmp_path / f"out{suffix}.png"
        result = run_ptm(["zebra", "-w", str(weights), "--size", "32", str(source), "-o", str(target)])
        assert result.code == 0, result.stderr
        outputs[suffix] = target.read_bytes()
    assert outputs[".pth"] == outputs[".safetensors"] == outputs[".h5"]


def test_extreme_strips_are_not_enlarged_without_bound(zebra: list[str], tmp_path: Path) -> None:
    strip = tmp_path / "strip.png"
    Image.new("RGB", (1000, 1), (120, 80, 40)).save(strip)
    # The book's rule would run it at 256000x256; ptm caps the enlargement.
    result = run_ptm(["zebra", *zebra[1:3], "--size", "256", str(strip), "-o", str(tmp_path / "z.png")])
    assert result.code == 0, result.stderr
    assert image_size(tmp_path / "z.png") == (1000, 1)


def test_two_inputs_with_one_output_name_never_overwrite_each_other(zebra: list[str], tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = odd_image(tmp_path / "a" / "horse.png"), odd_image(tmp_path / "b" / "horse.png", (30, 20))
    out = tmp_path / "out"
    result = run_ptm([*zebra, str(first), str(second), "--output-dir", str(out), "--force"])
    assert result.code == 1
    ok, clash = result.records()
    assert ok["output"] == str(out / "horse.png")
    assert clash["error"]["type"] == "OutputError" and str(first) in clash["error"]["message"]
    assert image_size(out / "horse.png") == (67, 45)  # the first result survived


def test_disk_full_while_writing_an_output(zebra: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    import ptm_cli.runtime.fsutil

    first, second = odd_image(tmp_path / "a.png"), odd_image(tmp_path / "b.png")
    out = tmp_path / "out"
    real_fdopen = os.fdopen
    opened = []

    def fdopen(fd: int, *args: object, **kwargs: object) -> object:
        handle = real_fdopen(fd, *args, **kwargs)  # type: ignore[arg-type]
        opened.append(handle)
        if len(opened) == 2:  # the second output hits a full disk

            def full(data: bytes) -> int:
                raise OSError(errno.ENOSPC, "No space left on device")

            handle.write = full  # type: ignore[method-assign]
        return handle

    monkeypatch.setattr(ptm_cli.runtime.fsutil.os, "fdopen", fdopen)
    result = run_ptm([*zebra, str(first), str(second), "--output-dir", str(out)])
    assert result.code == 1
    ok, full = result.records()
    assert ok["output"] == str(out / "a.png")
    assert full["error"]["type"] == "OutputError" and "No space left" in full["error"]["message"]
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]  # no partial file, the earlier output intact
    assert image_size(out / "a.png") == (67, 45)


def test_ctrl_c_mid_run_then_resume_with_skip_existing(generator_file: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import time

    from helpers import ptm_process

    inputs = [str(odd_image(tmp_path / f"h{i:02}.png", (40 + i, 30))) for i in range(30)]
    out = tmp_path / "out"
    args = ["zebra", "-w", str(generator_file), "--size", "32", "--output-dir", str(out), *inputs]
    with ptm_process(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        assert first.startswith(b'{"input"')
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        proc.stdout.read()
        proc.stderr.read()
        assert proc.wait(timeout=60) == 130
    written = sorted(p.name for p in out.iterdir())
    assert all(name.endswith(".png") for name in written)  # no temporary files
    assert 1 <= len(written) < len(inputs)
    for name in written:
        assert image_size(out / name)[1] == 30  # every file left behind is a whole image

    resumed = run_ptm([*args, "--skip-existing"])
    assert resumed.code == 0, resumed.stderr
    records = resumed.records()
    assert sum(1 for r in records if r.get("skipped")) == len(written)
    assert len(list(out.iterdir())) == len(inputs)


def test_closed_stdout_with_image_bytes_ends_quietly(generator_file: Path) -> None:
    import subprocess

    from helpers import ptm_process

    args = ["zebra", "-w", str(generator_file), "--size", "32", str(DATA / "rocket.jpg"), "-o", "-"]
    with ptm_process(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # `| true`
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 141
    assert "OutputError" not in stderr and "Traceback" not in stderr


def test_no_images_found_is_exit_1(zebra: list[str], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_ptm([*zebra, str(tmp_path / "empty"), "--output-dir", str(tmp_path / "out")])
    assert result.code == 1 and "no images found" in result.stderr
