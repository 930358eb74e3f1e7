"""Reduced-precision encoder graphs for a bundle: int8 (static QDQ quantization calibrated on real data)
and fp16, with an accuracy report and the precision compatibility rule.

Needs ``onnx`` and ``onnxruntime``, never torch (the graphs are already exported). ``prvr_sdk`` never
imports this package: serving reads the files and the manifest entries it writes.

Modules: ``data`` (reading and preparing calibration / held-out samples), ``graphs`` (what stays float),
``quantize`` (int8), ``fp16``, ``report`` (cosines, the compatibility rule, tables), ``pipeline``
(``calibrate_bundle``: staging copy, measurements, R@10 gate, re-seal, swap).
"""

from .pipeline import PRECISIONS, REPORT, calibrate_bundle, graph_name
from .report import COMPATIBLE_COSINE

__all__ = ["COMPATIBLE_COSINE", "PRECISIONS", "REPORT", "calibrate_bundle", "graph_name"]
