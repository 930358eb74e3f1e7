"""Which files an ``.onnx`` model reads besides itself: its external-data ``location`` strings.

An ONNX model may keep tensors in other files, named inside the model (``TensorProto.external_data``). The
name comes from the (untrusted) bundle, and ONNX Runtime before 1.24 opens it as given -- ``../../etc/x``
included. So before any session opens a bundle graph, ``prvr_sdk.bundle.load`` lists these names with this
small protobuf walker (no ``onnx`` package at run time) and accepts only files of the same bundle folder that
its manifest lists. The walker follows every place a tensor can live: graph initializers, sparse
initializers, node attributes (tensors, sparse tensors, sub-graphs such as a ``Scan`` body) and functions;
bulk tensor bytes are skipped, never read.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

from prvr_sdk.errors import ChecksumError

__all__ = ["external_data_locations"]

MAX_DEPTH = 64  # nested sub-graphs; real models use a handful

# Field numbers of onnx.proto (stable since ONNX 1.0; sparse tensors since 1.6, functions since 1.10).
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_FUNCTION_NODE = 7
_NODE_ATTRIBUTE = 5
_ATTR_TENSOR, _ATTR_GRAPH, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL_DATA = 13
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


class _Malformed(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _messages(buf, start: int, end: int, wanted: set[int]) -> Iterator[tuple[int, int, int]]:
    """``(field, start, end)`` of every length-delimited field of the message in ``buf[start:end]`` whose
    number is in ``wanted``; everything else (varints, fixed-width numbers, bulk bytes) is skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise _Malformed(f"field {field} runs past its message")
            if field in wanted:
                yield field, pos, pos + size
            pos += size
        else:
            raise _Malformed(f"wire type {wire} (groups are not used by ONNX)")
        if pos > end:
            raise _Malformed("field runs past its message")


def _string(buf, start: int, end: int) -> str:
    try:
        return bytes(buf[start:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("external-data entry is not UTF-8") from None


def _tensor(buf, start: int, end: int, found: set[str]) -> None:
    for _, s, e in _messages(buf, start, end, {_TENSOR_EXTERNAL_DATA}):
        key = value = None
        for field, fs, fe in _messages(buf, s, e, {_ENTRY_KEY, _ENTRY_VALUE}):
            if field == _ENTRY_KEY:
                key = _string(buf, fs, fe)
            else:
                value = _string(buf, fs, fe)
        if key == "location":
            found.add(value or "")


def _sparse(buf, start: int, end: int, found: set[str]) -> None:
    for _, s, e in _messages(buf, start, end, {_SPARSE_VALUES, _SPARSE_INDICES}):
        _tensor(buf, s, e, found)


def _nodes(buf, start: int, end: int, field: int, found: set[str], depth: int) -> Iterator[tuple[int, int]]:
    for _, s, e in _messages(buf, start, end, {field}):
        for _, a, b in _messages(buf, s, e, {_NODE_ATTRIBUTE}):
            for kind, x, y in _messages(buf, a, b, {_ATTR_TENSOR, _ATTR_GRAPH, _ATTR_TENSORS, _ATTR_GRAPHS,
                                                    _ATTR_SPARSE, _ATTR_SPARSES}):
                if kind in (_ATTR_TENSOR, _ATTR_TENSORS):
                    _tensor(buf, x, y, found)
                elif kind in (_ATTR_SPARSE, _ATTR_SPARSES):
                    _sparse(buf, x, y, found)
                else:
                    yield x, y


def _graph(buf, start: int, end: int, found: set[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _Malformed(f"sub-graphs nested deeper than {MAX_DEPTH}")
    for field, s, e in _messages(buf, start, end, {_GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER}):
        (_tensor if field == _GRAPH_INITIALIZER else _sparse)(buf, s, e, found)
    for s, e in list(_nodes(buf, start, end, _GRAPH_NODE, found, depth)):
        _graph(buf, s, e, found, depth + 1)


def external_data_locations(path: str | os.PathLike) -> set[str]:
    """Every external-data ``location`` named anywhere in the ONNX model at ``path`` (empty: self-contained).

    Raises:
        ChecksumError: the file is not a well-formed protobuf message where tensors are looked for.
    """
    found: set[str] = set()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ChecksumError(f"{path}: empty file, not an ONNX model")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                for field, s, e in _messages(buf, 0, size, {_MODEL_GRAPH, _MODEL_FUNCTIONS}):
                    if field == _MODEL_GRAPH:
                        _graph(buf, s, e, found, 0)
                    else:
                        for gs, ge in list(_nodes(buf, s, e, _FUNCTION_NODE, found, 0)):
                            _graph(buf, gs, ge, found, 1)
            except _Malformed as exc:
                raise ChecksumError(f"{path}: not a well-formed ONNX model ({exc})") from None
    return found
