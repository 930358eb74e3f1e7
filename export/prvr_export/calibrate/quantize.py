"""int8 encoder graphs: ONNX Runtime static quantization, explicit Q/DQ, calibrated on real inputs.

Why this recipe:

* QDQ format (QuantizeLinear/DequantizeLinear pairs around float ops), not operator-style QLinear ops: it
  is the explicit-quantization form TensorRT 10/11's strongly typed networks accept (implicit INT8
  calibration is gone there), and ONNX Runtime CPU fuses the same pairs into integer kernels.
* Only linear layers (MatMul, Gemm) are quantized: weights symmetric int8 per output channel,
  activations per tensor. Their outputs stay float (``OpTypesToExcludeOutputQuantization``): the next op
  gets float values, so no int8 range has to cover residual sums, and ORT can run each quantized MatMul as
  ``MatMulIntegerToFloat``. Every consumer gets its own Q/DQ pair (``DedicatedQDQPair``), which ORT's
  fusions need when one activation feeds several MatMuls (attention's Q, K, V).
* Activations ``int8`` (default): symmetric int8, zero point 0 -- what TensorRT's explicit quantization
  takes. ``uint8``: asymmetric uint8 -- ONNX Runtime CPU's fused integer path (U8S8); with int8
  activations ORT 1.32 CPU leaves most DQ -> MatMul pairs unfused, so int8 graphs gain little speed
  there (bench/calibrate.py: AMDNet demo 1.04x with int8 activations, 1.4x with uint8).
* The scan, the normalisations and the scan's output projection stay float (``graphs.float_nodes``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx

from prvr_sdk.errors import InvalidInputError

from .data import FeedReader, Feeds
from .graphs import float_nodes, function_names

__all__ = ["ACTIVATIONS", "METHODS", "QUANTIZED_OP_TYPES", "quantize_int8"]

METHODS = ("minmax", "entropy", "percentile")
ACTIVATIONS = ("int8", "uint8")
QUANTIZED_OP_TYPES = ("MatMul", "Gemm")


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ORT's quantizer logs "consider pre-processing" warnings through the root logger on every call
    (advice about CNN pre-processing, not about these graphs), and its histogram calibrators print to
    stdout, where `prvr calibrate --json` writes its report. Drop the former and send the latter to
    stderr, for the call only."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        logging.disable(previous)


def quantize_int8(
    src: str | Path,
    dst: str | Path,
    feeds: Sequence[Feeds],
    method: str = "minmax",
    advance: Callable[[int], None] = lambda n=1: None,
    activations: str = "int8",
) -> dict[str, Any]:
    """Write the int8 (QDQ) version of the fp32 graph ``src`` to ``dst``, calibrated on ``feeds``.

    Args:
        src: an fp32 encoder graph (``video_encoder.onnx`` / ``text_encoder.onnx``).
        dst: the file to write.
        feeds: padded encoder inputs (``data.batches``); every batch is run once through ``src``.
        method: ``minmax``, ``entropy`` or ``percentile`` (ORT's ``CalibrationMethod``).
        advance: called once per calibration batch (progress bar).
        activations: ``int8`` (symmetric; TensorRT) or ``uint8`` (asymmetric; ONNX Runtime CPU's fast path).

    Returns:
        what was done: ``method``, ``activations``, ``batches``, ``quantized`` (node names), ``kept_float``
        (``{node: reason}``), ``qdq`` (Q and DQ node counts), ``functions`` (local functions kept).

    Raises:
        InvalidInputError: unknown ``method`` or no calibration batches.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in METHODS:
        raise InvalidInputError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    if activations not in ACTIVATIONS:
        raise InvalidInputError(f"--activations {activations!r}: expected one of {', '.join(ACTIVATIONS)}")
    if not feeds:
        raise InvalidInputError(f"no calibration batches for {src}: calibration needs real input data")
    model = onnx.load(str(src))
    keep = float_nodes(model)
    targets = [n.name for n in model.graph.node if n.op_type in QUANTIZED_OP_TYPES and n.name not in keep]
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    with _quiet_quantizer():
        quantize_static(
            str(src),  # a path: quantize_static rewrites a ModelProto it is given (external data)
            str(dst),
            FeedReader(feeds, advance),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            nodes_to_exclude=sorted(keep),
            per_channel=True,
            activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate,
            extra_options={
                "ActivationSymmetric": activations == "int8",
                "WeightSymmetric": True,
                "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES),
                "DedicatedQDQPair": True,
            },
        )
    out = onnx.load(str(dst))
    lost = sorted(set(function_names(model)) - set(function_names(out)))
    if lost:  # the scan's portable body must travel with the graph, or plain ORT cannot run it
        raise InvalidInputError(f"quantizing {src} dropped local functions {lost}")
    ops = [n.op_type for n in out.graph.node]
    return {
        "method": method,
        "activations": activations,
        "batches": len(feeds),
        "quantized": targets,
        "kept_float": keep,
        "qdq": {op: ops.count(op) for op in ("QuantizeLinear", "DequantizeLinear")},
        "functions": function_names(out),
    }
