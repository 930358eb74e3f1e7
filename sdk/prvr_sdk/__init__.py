"""prvr-sdk runtime: partially relevant video retrieval (PRVR) without torch.

This package is what a deployment imports: it loads an exported bundle, encodes videos and sentences
with ONNX Runtime (or TensorRT when present), and searches an index of clip embeddings to find the
videos -- and the moments inside them -- that match a sentence. It depends on numpy and the runtime
backends only and never imports torch, so it installs and starts quickly on serving machines;
training and export live in ``prvr_export``. Entry points: ``Retriever`` (encode, score, search),
``VideoEmbeddings``, ``ExactIndex`` and ``Hit``; ``prvr_sdk.evaluation`` runs the PRVR protocol on a
bundle; every error it raises on purpose is a ``prvr_sdk.errors.PrvrError``.
"""

from __future__ import annotations

from prvr_sdk._version import __version__
from prvr_sdk.embeddings import VideoEmbeddings
from prvr_sdk.hits import Hit
from prvr_sdk.index import ExactIndex
from prvr_sdk.retriever import Retriever

__all__ = ["ExactIndex", "Hit", "Retriever", "VideoEmbeddings", "__version__"]
