"""fp16 encoder graphs: weights and activations in float16, I/O, scan and normalisations in float32.

Why: TensorRT's strongly typed networks run each tensor in the type the ONNX file gives it, so fp16
serving needs an fp16 graph (the builder flag is gone). Graph inputs and outputs stay float32
(``keep_io_types``) so callers, ``prvr_sdk.inputs`` and indexes see the same dtypes; the scan keeps fp32
I/O through Casts (its TensorRT plugin and its function body are fp32), and so do the normalisations
(``graphs.float_nodes``). The converter is ONNX Runtime's ``onnxruntime.transformers.float16`` (ships with
onnxruntime, no extra dependency); ``onnxconverter_common.float16`` is the same code and is used instead
when installed, so prvr build-engine and prvr calibrate convert alike.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import onnx

from prvr_sdk.errors import InvalidInputError

from .graphs import FLOAT_OP_TYPES, float_nodes, function_names, toposort

__all__ = ["convert_fp16"]


def _converter() -> tuple[Any, list[str], str]:
    try:
        from onnxconverter_common import float16  # type: ignore[import-not-found]

        name = "onnxconverter_common.float16"
    except ImportError:
        from onnxruntime.transformers import float16

        name = "onnxruntime.transformers.float16"
    return float16.convert_float_to_float16, list(float16.DEFAULT_OP_BLOCK_LIST), name


def convert_fp16(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Write the fp16 version of the fp32 graph ``src`` to ``dst`` and check it with ``onnx.checker``.

    Returns:
        ``converter``, ``kept_float`` (``{node: reason}``), ``casts`` (Cast nodes added), ``functions``.
    Raises:
        InvalidInputError: the conversion lost the scan's local function or produced an invalid graph.
    """
    convert, default_block, converter = _converter()
    model = onnx.load(str(src))
    keep = float_nodes(model, scan_consumers=False)
    casts_before = sum(n.op_type == "Cast" for n in model.graph.node)
    with warnings.catch_warnings():  # "number will be truncated": tiny weights flush to fp16's smallest
        warnings.simplefilter("ignore", UserWarning)
        half = convert(
            model,
            keep_io_types=True,
            op_block_list=sorted(set(default_block) | set(FLOAT_OP_TYPES)),
            node_block_list=sorted(keep),
        )
    toposort(half.graph)
    del half.graph.value_info[:]  # the converter's intermediate type annotations go stale; ORT re-infers
    lost = sorted(set(function_names(model)) - set(function_names(half)))
    if lost:
        raise InvalidInputError(f"fp16 conversion of {src} dropped local functions {lost}")
    try:
        onnx.checker.check_model(half, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise InvalidInputError(f"fp16 conversion of {src} gave an invalid graph: {exc}") from None
    onnx.save(half, str(dst))
    return {
        "converter": converter,
        "kept_float": keep,
        "casts": sum(n.op_type == "Cast" for n in half.graph.node) - casts_before,
        "functions": function_names(half),
    }
