"""Device and precision choice, on a machine that may have no GPU."""

from __future__ import annotations

import pytest
import torch

from ptm_cli.errors import DeviceUnavailable, UsageError
from ptm_cli.nets.device import check_device_spec, choose_device, choose_precision


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert choose_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert choose_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("auto") == torch.device("cuda")


def test_absent_devices_are_usage_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable, match="--device cpu"):
        choose_device("cuda")
    with pytest.raises(DeviceUnavailable, match="MPS"):
        choose_device("mps")
    assert DeviceUnavailable("x").exit_code == 2


def test_cuda_index_beyond_the_device_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert choose_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceUnavailable, match="2 CUDA device"):
        choose_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu", ""])
def test_malformed_device_specs(spec: str) -> None:
    with pytest.raises(UsageError, match="unknown device"):
        check_device_spec(spec)


def test_precision_choices() -> None:
    cpu = torch.device("cpu")
    assert choose_precision("fp32", cpu).dtype == torch.float32
    assert choose_precision("bf16", cpu).dtype == torch.bfloat16
    assert choose_precision("auto", cpu).name in ("fp32", "bf16")
    assert choose_precision("auto", torch.device("mps")).name == "fp16"
    with pytest.raises(UsageError, match="fp16 on the CPU"):
        choose_precision("fp16", cpu)
    with pytest.raises(UsageError, match="unknown precision"):
        choose_precision("int4", cpu)
