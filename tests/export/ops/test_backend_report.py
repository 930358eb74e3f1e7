"""Tests for the selective scan's backend report: which implementation serves a device, and that a slow
fallback is said out loud exactly once.

Oracles: ``importlib.util.find_spec`` itself (is mamba-ssm installed here?) and ``cpu_kernel``'s own
``unavailable_reason()``; the probe count comes from wrapping the real ``find_spec``. The op's CUDA
dispatch is asked through ``backend_for(torch.device("cuda"))``, which needs no GPU.
"""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch

from prvr_export.ops import cpu_kernel
from prvr_export.ops import selective_scan as ss

LOGGER = "prvr_export.ops.selective_scan"
MAMBA_INSTALLED = importlib.util.find_spec("mamba_ssm") is not None
NO_TRITON = "triton is not installed (pip install 'prvr-sdk[plugins]')"
NO_MAMBA = "mamba-ssm is not installed (pip install 'prvr-sdk[mamba]')"


@pytest.fixture
def fresh(monkeypatch):
    """A process that has not probed or warned yet: cleared caches and an empty warned-set."""
    ss._mamba_ssm.cache_clear()
    ss._triton_scan.cache_clear()
    ss._resolve.cache_clear()
    monkeypatch.setattr(ss, "_warned", set())
    yield
    ss._mamba_ssm.cache_clear()
    getattr(ss._triton_scan, "cache_clear", lambda: None)()  # a test may have replaced it
    ss._resolve.cache_clear()


def _slow_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_mamba_ssm_is_probed_once_per_process(fresh, monkeypatch):
    real = importlib.util.find_spec
    probes = []

    def counting(name, *args, **kwargs):
        if name == "mamba_ssm":
            probes.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", counting)
    first = ss.available_backends()
    for _ in range(3):
        assert ss.available_backends() == first
        ss.backend_for(torch.device("cuda"))
        ss.fallback_reasons()
    assert probes == ["mamba_ssm"]


@pytest.mark.skipif(MAMBA_INSTALLED, reason="mamba-ssm is installed here: CUDA has its fast backend")
def test_cuda_without_mamba_ssm_or_triton_is_reported_and_warned_once(fresh, caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    monkeypatch.setattr(ss, "_triton_scan", lambda: (None, NO_TRITON))  # a machine without triton
    assert ss.available_backends()["cuda"] == f"reference ({NO_MAMBA}; {NO_TRITON})"
    assert ss.fallback_reasons()["cuda"] == f"{NO_MAMBA}; {NO_TRITON}"
    assert _slow_warnings(caplog) == []  # reporting is not using: no warning yet
    for device in ("cuda", "cuda:1", torch.device("cuda:0")):
        assert ss.backend_for(device) == "reference"
    expected = f"selective scan: CUDA tensors use the slow Python reference: {NO_MAMBA}; {NO_TRITON}"
    assert _slow_warnings(caplog) == [expected]


def test_each_slow_device_is_warned_once_and_a_fast_one_never(fresh, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    meta = torch.empty(2, device="meta")
    assert [ss.backend_for(meta) for _ in range(3)] == ["reference"] * 3
    assert _slow_warnings(caplog) == [
        "selective scan: meta tensors use the slow Python reference: no fast kernel exists for meta tensors"
    ]
    cpu_backend = ss.backend_for(torch.zeros(1))
    ss.backend_for("cpu")
    reason = cpu_kernel.unavailable_reason()
    if reason is None:
        assert cpu_backend == "cpu_kernel"
        assert len(_slow_warnings(caplog)) == 1  # the fast CPU path logs nothing
    else:
        assert cpu_backend == "reference"
        assert _slow_warnings(caplog)[1:] == [f"selective scan: CPU tensors use the slow Python reference: "
                                              f"{reason}"]


def test_available_backends_agrees_with_the_kernel_loader(fresh):
    reason = cpu_kernel.unavailable_reason()
    report, fallbacks = ss.available_backends(), ss.fallback_reasons()
    assert set(report) == {"cpu", "cuda"}
    if reason is None:
        assert report["cpu"] == "cpu_kernel (C, ctypes)" and "cpu" not in fallbacks
    else:
        assert report["cpu"] == f"reference ({reason})" and fallbacks["cpu"] == reason
    assert ("cuda" in fallbacks) == report["cuda"].startswith("reference")
