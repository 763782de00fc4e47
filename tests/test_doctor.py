"""ptm doctor: a full report, robust probes, no secrets."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

import ptm_cli
from ptm_cli import doctor


def _types(section: dict[str, Any], expected: dict[str, type | tuple[type, ...]]) -> None:
    for key, kind in expected.items():
        assert key in section, key
        assert isinstance(section[key], kind), (key, section[key])


def test_collect_has_every_field(cache: Path) -> None:
    report = doctor.collect()
    json.dumps(report)  # plain JSON types only, for `ptm doctor --format json`
    assert report["ok"] is True, report["problems"]
    assert report["problems"] == [] and isinstance(report["warnings"], list)
    _types(report["python"], {"version": str, "executable": str})
    assert report["python"]["executable"] == sys.executable
    _types(report["platform"], {"system": str, "machine": str, "description": str})
    assert report["ptm"]["version"] == ptm_cli.__version__
    assert report["ptm"]["fused_resize"] is True  # the C extension is built here (and in CI)
    assert set(report["packages"]) == {"torch", "torchvision", "Pillow", "click", "rich"}
    assert all(isinstance(v, str) for v in report["packages"].values())
    assert report["imports"] == {"torch": True, "torchvision": True, "PIL": True}
    cpu = report["cpu"]
    _types(cpu, {"cores": int, "bf16": bool})
    assert cpu["model"] is None or isinstance(cpu["model"], str)
    for flag in ("avx2", "avx512f", "avx512_bf16", "amx"):
        assert cpu[flag] is None or isinstance(cpu[flag], bool)
    _types(report["torch"], {"version": str, "threads": int})
    assert report["torch"]["threads"] >= 1
    cuda = report["cuda"]
    _types(cuda, {"available": bool, "devices": list})
    assert cuda["version"] is None or isinstance(cuda["version"], str)
    for device in cuda["devices"]:
        _types(device, {"index": int, "name": str, "total_memory": int})
    _types(report["mps"], {"available": bool})
    _types(
        report["cache"],
        {"path": str, "exists": bool, "writable": bool, "files": int, "size": int, "free": int},
    )
    assert report["cache"]["path"] == str(cache)
    assert report["cache"]["exists"] is False and report["cache"]["writable"] is True  # creatable
    assert not cache.exists()  # the doctor looks, it does not create
    assert report["weights"] == []
    _types(report["hub"], {"dir": str, "trusted": list, "cached_repos": list})
    settings = report["settings"]
    for name in ("PTM_OFFLINE", "PTM_WEIGHTS_MIRROR", "PTM_CATALOG", "PTM_CACHE_DIR", "TORCH_HOME", "GITHUB_TOKEN"):
        assert name in settings
    assert settings["PTM_CACHE_DIR"] == str(cache)
    assert settings["offline"] is False


def test_cpu_flags_from_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n\n"
        "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n"
    )
    monkeypatch.setattr(doctor, "CPUINFO", cpuinfo)
    cpu = doctor.cpu_report()
    assert cpu["model"] == "Test CPU 9000"
    assert (cpu["avx2"], cpu["avx512f"], cpu["avx512_bf16"], cpu["amx"]) == (True, True, True, True)
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Plain\nflags\t\t: fpu sse2\n")
    cpu = doctor.cpu_report()
    assert (cpu["avx2"], cpu["avx512f"], cpu["avx512_bf16"], cpu["amx"]) == (False, False, False, False)


def test_broken_probes_record_errors(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    import importlib.metadata

    import torch

    from ptm_cli.cache import weights

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(torch.cuda, "is_available", boom)
    monkeypatch.setattr(torch, "get_num_threads", boom)
    monkeypatch.setattr(importlib.metadata, "version", boom)
    monkeypatch.setattr(weights, "list_cached", boom)
    monkeypatch.setattr(doctor, "_read_cpuinfo", boom)
    report = doctor.collect()
    json.dumps(report)
    assert report["cuda"]["available"] == "error: RuntimeError: probe exploded"
    assert report["cuda"]["devices"] == []
    assert doctor.is_error(report["torch"]["threads"])
    assert all(doctor.is_error(v) for v in report["packages"].values())
    assert doctor.is_error(report["weights"])
    # The rest of the report is still there.
    assert isinstance(report["python"]["version"], str)
    assert isinstance(report["cache"]["writable"], bool)
    assert any(row["value"].startswith("error: ") for row in doctor.rows(report))


def test_import_failure_is_a_problem(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    real_import = doctor._import

    def fake_import(name: str) -> bool:
        if name == "torchvision":
            raise ImportError("operator torchvision::nms does not exist")
        return real_import(name)

    monkeypatch.setattr(doctor, "_import", fake_import)
    report = doctor.collect()
    assert report["ok"] is False
    assert report["imports"]["torchvision"].startswith("error: ImportError")
    assert any("torchvision does not import" in p for p in report["problems"])


def test_no_token_in_output(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    token = "ghp_SuperSecretTokenValue123"
    monkeypatch.setenv("GITHUB_TOKEN", token)
    monkeypatch.setenv("PTM_WEIGHTS_MIRROR", "https://user:hunter2pass@mirror.example/weights")
    report = doctor.collect()
    assert report["settings"]["GITHUB_TOKEN"] == "set"
    assert report["settings"]["PTM_WEIGHTS_MIRROR"] == "https://***@mirror.example/weights"
    text = json.dumps(report) + json.dumps(doctor.rows(report))
    assert token not in text and "hunter2pass" not in text
    monkeypatch.delenv("GITHUB_TOKEN")
    assert doctor.collect()["settings"]["GITHUB_TOKEN"] == "not set"


def test_cache_size_counts_files(cache: Path) -> None:
    cache.mkdir()
    (cache / "a.pth").write_bytes(b"x" * 1000)
    (cache / "b.pth").write_bytes(b"y" * 234)
    report = doctor.collect()
    assert report["cache"]["exists"] is True and report["cache"]["writable"] is True
    assert (report["cache"]["files"], report["cache"]["size"]) == (2, 1234)
    assert report["cache"]["free"] > 0
    assert sorted(w["name"] for w in report["weights"]) == ["a.pth", "b.pth"]
    assert {w["size"] for w in report["weights"]} == {1000, 234}
    assert all(w["verified"] is False for w in report["weights"])
    assert list(cache.iterdir()) and all(not p.name.startswith(".ptm-doctor") for p in cache.iterdir())


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_cache_is_a_problem_unless_offline_with_files(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.mkdir()
    (cache / "a.pth").write_bytes(b"x")
    cache.chmod(0o555)
    try:
        report = doctor.collect()
        assert report["cache"]["writable"] is False and report["ok"] is False
        monkeypatch.setenv("PTM_OFFLINE", "1")
        report = doctor.collect()
        assert report["ok"] is True and any("not writable" in w for w in report["warnings"])
    finally:
        cache.chmod(0o755)


def test_unwritable_cache_diagnosis() -> None:
    # The same rule on a hand-made report, so it is tested even where the tests run as root.
    report: dict[str, Any] = {
        "imports": {"torch": True, "torchvision": True, "PIL": True},
        "packages": {"click": "8", "rich": "13"},
        "catalog": {"entries": 3},
        "settings": {"offline": False},
        "cache": {"path": "/ro/cache", "exists": True, "writable": False, "files": 2, "free": 10**12},
    }
    problems, _ = doctor.diagnose(report)
    assert problems == ["the weights cache /ro/cache is not writable; set PTM_CACHE_DIR to a folder you can write to"]
    report["settings"]["offline"] = True
    problems, warnings = doctor.diagnose(report)
    assert problems == [] and any("/ro/cache" in w for w in warnings)
    report["cache"]["files"] = 0
    problems, _ = doctor.diagnose(report)
    assert problems


def test_bad_settings_are_problems(monkeypatch: pytest.MonkeyPatch, cache: Path, tmp_path: Path) -> None:
    monkeypatch.setenv("PTM_OFFLINE", "maybe")
    monkeypatch.setenv("PTM_CATALOG", str(tmp_path / "missing.toml"))
    report = doctor.collect()
    assert report["ok"] is False
    assert doctor.is_error(report["settings"]["offline"])
    assert any("PTM_OFFLINE" in p for p in report["problems"])
    assert any("PTM_CATALOG" in p for p in report["problems"])


def test_rows(cache: Path) -> None:
    cache.mkdir()
    (cache / "w.pth").write_bytes(b"z" * 2048)
    report = doctor.collect()
    table = doctor.rows(report)
    assert table[0] == {"section": "summary", "key": "ok", "value": "yes"}
    assert all(set(row) == {"section", "key", "value"} and isinstance(row["value"], str) for row in table)
    by_key = {(row["section"], row["key"]): row["value"] for row in table}
    assert by_key[("python", "version")] == report["python"]["version"]
    assert by_key[("cache", "size")] == "2.0 kB"
    assert by_key[("weights", "w.pth")].startswith("2.0 kB, not verified")
    assert by_key[("cpu", "bf16")] in ("yes", "no")
    assert by_key[("settings", "GITHUB_TOKEN")] in ("set", "not set")
    bad = {"ok": False, "problems": ["torch does not import"], "warnings": [], "cuda": "error: X: y"}
    assert doctor.rows(bad)[1] == {"section": "problems", "key": "1", "value": "torch does not import"}
    assert {"section": "cuda", "key": "-", "value": "error: X: y"} in doctor.rows(bad)


def test_the_compiler_for_compile_is_found_or_warned_about(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "my-c++"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    report = doctor.collect()
    assert report["torch"]["compiler"] == str(fake)
    assert not any("C++ compiler" in w for w in report["warnings"])
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    report = doctor.collect()
    assert report["torch"]["compiler"] is None
    warning = "no C++ compiler found (install g++ or set CXX): classify --compile cannot run on the CPU"
    assert warning in report["warnings"]
    assert report["ok"] is True  # --compile is optional


def test_a_missing_c_extension_is_a_warning_not_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    from ptm_cli.images import transforms

    transforms._pillow_pass_order.cache_clear()
    monkeypatch.setitem(sys.modules, "ptm_cli.images._resample", None)  # as when ptm was installed without a C compiler
    try:
        report = doctor.collect()
    finally:
        transforms._pillow_pass_order.cache_clear()
    assert report["ptm"]["fused_resize"] is False
    assert report["ok"] is True
    assert any("C extension" in w and "C compiler" in w for w in report["warnings"])
