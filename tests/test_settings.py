"""Environment variables: one place reads them, one rule per kind, one error for a value ptm cannot use."""

from __future__ import annotations

import pytest
from helpers import DATA, TinyClassifier, run_ptm

from ptm_cli import settings
from ptm_cli.errors import ConfigError


@pytest.mark.parametrize("value", ["1", "true", "YES", "on", " On "])
@pytest.mark.parametrize("name", ["PTM_OFFLINE", "PTM_DEBUG"])
def test_every_flag_takes_the_same_true_words(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, value)
    assert settings.flag(name) is True


@pytest.mark.parametrize("value", ["", "0", "false", "No", "off"])
@pytest.mark.parametrize("name", ["PTM_OFFLINE", "PTM_DEBUG"])
def test_every_flag_takes_the_same_false_words(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, value)
    assert settings.flag(name) is False


@pytest.mark.parametrize("name", ["PTM_OFFLINE", "PTM_DEBUG"])
def test_a_flag_ptm_cannot_read_is_an_error_not_false(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the redesign: PTM_DEBUG=2 used to be silently false while PTM_OFFLINE=2 was an error."""
    monkeypatch.setenv(name, "2")
    with pytest.raises(ConfigError, match=rf"{name}='2' is not understood; set it to 1 or 0"):
        settings.flag(name)


def test_ptm_debug_on_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the redesign: PTM_DEBUG=on was ignored (only 1/true/yes counted there)."""
    monkeypatch.setenv("PTM_DEBUG", "on")
    monkeypatch.setenv("PTM_OFFLINE", "1")
    result = run_ptm(["classify", "-m", "alexnet", str(DATA / "chelsea.png")])
    assert result.code == 2
    assert "Traceback" in result.stderr and "OfflineError" in result.stderr


def test_an_unreadable_ptm_debug_stops_every_command_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTM_DEBUG", "2")
    result = run_ptm(["models", "-f", "jsonl"])
    assert result.code == 2 and result.stdout == ""
    assert result.stderr == "ptm: error: PTM_DEBUG='2' is not understood; set it to 1 or 0 (or unset it)\n"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PTM_MAX_PIXELS", "lots"),
        ("PTM_MAX_PIXELS", "-5"),
        ("PTM_DOWNLOAD_TIMEOUT", "0"),
        ("PTM_DOWNLOAD_TIMEOUT", "nan"),
        ("PTM_DOWNLOAD_RETRIES", "2.5"),
    ],
)
def test_numbers_must_be_positive(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, value)
    getter = {
        "PTM_MAX_PIXELS": settings.max_pixels,
        "PTM_DOWNLOAD_TIMEOUT": settings.download_timeout,
        "PTM_DOWNLOAD_RETRIES": settings.download_attempts,
    }[name]
    with pytest.raises(ConfigError, match=name):
        getter()


@pytest.mark.parametrize("name", ["PTM_MAX_PIXELS", "PTM_DOWNLOAD_TIMEOUT", "PTM_DOWNLOAD_RETRIES", "PTM_OFFLINE"])
def test_doctor_reports_a_bad_value_and_exits_1(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, "garbage")
    result = run_ptm(["doctor", "-f", "jsonl"])
    assert result.code == 1
    assert f"ptm: problem: {name}='garbage' is not" in result.stderr


def test_doctor_masks_a_token_in_the_mirror_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTM_WEIGHTS_MIRROR", "https://user:pw@mirror.example/weights?token=s3cret")
    result = run_ptm(["doctor", "-f", "json"])
    assert "s3cret" not in result.stdout and "pw@" not in result.stdout
    assert "https://***@mirror.example/weights?***" in result.stdout


def test_tunables_are_attributes_of_one_object() -> None:
    """Tests adjust settings.tuning; a misspelt knob must fail, not patch nothing."""
    with pytest.raises(AttributeError):
        settings.tuning.no_such_knob  # type: ignore[attr-defined]  # noqa: B018
    assert settings.tuning.locking is True and settings.tuning.chunk_size == 1 << 20


OPENMP_PROBE = """
import os, sys
if sys.argv[1] == "torch first":
    import torch
from ptm_cli import cli
cli.run(["--version"])
print(os.environ.get("GOMP_SPINCOUNT", "unset"))
"""


@pytest.mark.parametrize(
    ("chosen", "order", "expected"),
    [
        ({}, "ptm first", "30000"),  # the ptm command's own spin count, for it and its children
        ({"GOMP_SPINCOUNT": "5"}, "ptm first", "5"),  # the user's own choice stays
        ({"OMP_WAIT_POLICY": "passive"}, "ptm first", "unset"),  # so does a wait policy
        ({}, "torch first", "unset"),  # libgomp has read its settings already: nothing to gain
    ],
)
def test_the_command_shortens_openmps_spin_unless_told_otherwise(
    chosen: dict[str, str], order: str, expected: str
) -> None:
    import os
    import subprocess
    import sys

    from ptm_cli.settings import OPENMP_SPIN_COUNT

    assert str(OPENMP_SPIN_COUNT) == "30000"
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")} | chosen
    out = subprocess.run(
        [sys.executable, "-c", OPENMP_PROBE, order], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    assert out.stdout.splitlines()[-1] == expected


@pytest.mark.parametrize(
    ("name", "value", "getter", "bound"),
    [
        ("PTM_DOWNLOAD_TIMEOUT", "1e308", settings.download_timeout, "86,400"),
        ("PTM_DOWNLOAD_TIMEOUT", "inf", settings.download_timeout, "86,400"),
        ("PTM_MAX_PIXELS", "1" + "0" * 30, settings.max_pixels, "2,147,483,648"),
        ("PTM_DOWNLOAD_RETRIES", "1000000", settings.download_attempts, "100"),
        ("PTM_SERVE_IDLE_TIMEOUT", "1e300", settings.serve_idle_timeout, "3.1536e+07"),
        ("PTM_SERVE_KEEP_ALIVE", "-1", settings.serve_keep_alive, "3.1536e+07"),
    ],
)
def test_every_number_has_a_range_and_the_error_gives_it(
    name: str, value: str, getter: object, bound: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in round 3: a timeout of 1e308 or a pixel limit of 1e30 ended in an internal error (exit 70)."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name) as raised:
        getter()  # type: ignore[operator]
    assert bound in str(raised.value)


def test_a_huge_number_in_a_setting_is_exit_2_for_the_command(
    tiny: TinyClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTM_MAX_PIXELS", "1" + "0" * 30)
    result = run_ptm(tiny.args("--crop", "3000000000", str(DATA / "coffee.png")))
    assert result.code == 2 and "PTM_MAX_PIXELS" in result.stderr and "Traceback" not in result.stderr
