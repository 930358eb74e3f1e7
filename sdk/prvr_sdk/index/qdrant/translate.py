"""What both Qdrant flavours share: point ids, payloads and filters in Qdrant's own terms.

Everything here is plain Python (no qdrant import), producing the REST/JSON shapes of Qdrant's API; the
embedded flavour turns those shapes into ``qdrant_edge`` objects, the remote one validates them into
``qdrant_client.models``. One point per video:

* id: ``uuid5(VIDEO_NAMESPACE, video_id)`` (Qdrant ids are integers or UUIDs); the id itself is in the
  payload, so hits never depend on inverting the hash;
* vectors: ``"clips"`` (the clip multivector, compared with ``MaxSim``) and/or ``"video"`` (one vector),
  by the scoring rule, as float16-rounded values (what ``ExactIndex`` stores);
* payload: ``video_id``, ``seq`` (insertion order: breaks score ties like the exact index),
  ``metadata`` (the JSON text given to ``add``, returned verbatim with hits), ``spans`` (per clip
  ``[start, end]`` seconds, or null when unknown), and one *filter key* per scalar metadata field.

Filter keys make the exact index's semantics hold in Qdrant, whose own matching differs: an integer match
also hits ``true`` and misses ``1.0``, dots in keys are paths, and payload floats may come back one unit
in the last place off (qdrant_edge 0.9 parses them inexactly), so a float equality could miss. A field
``f`` (``h`` a hash of its name) becomes either ``fk_<h>``, a keyword (``"s:<text>"``, ``"b:true"``,
``"b:false"``, ``"null"``) matched exactly, or -- for numbers -- ``fh_<h>`` and ``fl_<h>``, the high and
low 32 bits of the float64 mapped to an unsigned integer of the same order (``number_key``): integers
below 2**32 survive every JSON parser and compare exactly as floats, and ``(hi, lo)`` order is float
order, so equality and ranges are exact. List- and dict-valued fields get no key, so, as in the exact
index, they match nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from prvr_sdk.errors import InvalidInputError
from prvr_sdk.index.filters import ID_FIELD, Filter, compile_filter

__all__ = [
    "CLIPS",
    "VIDEO",
    "VIDEO_NAMESPACE",
    "field_keys",
    "filter_keys",
    "number_key",
    "point_id",
    "point_payload",
    "qdrant_filter",
    "with_ids",
]

CLIPS, VIDEO = "clips", "video"  # the two named vectors
VIDEO_NAMESPACE = uuid.UUID("5d0c6a4e-8f0b-5c51-9a55-70d1f2d3b0a1")  # fixed forever: ids depend on it
_NEVER = "prvr_never"  # a payload key no point has: conditions on it match nothing


def point_id(video_id: str) -> str:
    """The Qdrant point id of a video id (a UUID string, stable across processes and machines)."""
    return str(uuid.uuid5(VIDEO_NAMESPACE, video_id))


def field_keys(field: str) -> tuple[str, str, str]:
    """``(keyword_key, high_key, low_key)`` of a metadata field: flat, path-safe payload keys."""
    digest = hashlib.sha256(field.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"fk_{digest}", f"fh_{digest}", f"fl_{digest}"


def number_key(value: float) -> tuple[int, int]:
    """A finite float64 as ``(hi, lo)`` 32-bit halves of an unsigned integer in the same order."""
    bits = struct.unpack("<Q", struct.pack("<d", float(value) + 0.0))[0]  # + 0.0: -0.0 equals 0.0
    ordered = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | (1 << 63)
    return ordered >> 32, ordered & 0xFFFFFFFF


def _keyword(value: Any) -> str | None:
    """The keyword a scalar is stored and matched as; None for numbers and non-scalars."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "b:true" if value else "b:false"
    if isinstance(value, str):
        return "s:" + value
    return None


def filter_keys(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The filter keys of one video's metadata (see the module docstring)."""
    out: dict[str, Any] = {}
    for field, value in metadata.items():
        keyword_key, high_key, low_key = field_keys(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int beyond float range: no number comparison can hold
                continue
            if math.isfinite(number):
                out[high_key], out[low_key] = number_key(number)
        else:
            word = _keyword(value)
            if word is not None:
                out[keyword_key] = word
    return out


def point_payload(video_id: str, seq: int, metadata_line: bytes, spans: np.ndarray | None) -> dict[str, Any]:
    """The payload of one video (``spans``: ``[Nc, 2]`` seconds, NaN rows meaning unknown, or None).

    ``metadata`` and ``spans`` are JSON text, returned verbatim (payload floats are not exact everywhere).
    """
    text = metadata_line.decode("utf-8")
    span_text = None  # JSON text, like the metadata: floats survive it exactly
    if spans is not None and len(spans) and np.isfinite(spans).all():
        span_text = json.dumps(spans.tolist(), separators=(",", ":"))
    payload = {"video_id": video_id, "seq": int(seq), "metadata": text, "spans": span_text}
    payload.update(filter_keys(json.loads(text)))
    return payload


# ---------------------------------------------------------------------------------------------- filters


def _equal(field: str, value: Any) -> dict[str, Any]:
    """One equality condition (JSON-typed, like ``prvr_sdk.index.filters``)."""
    keyword_key, high_key, low_key = field_keys(field)
    if isinstance(value, int | float) and not isinstance(value, bool):
        hi, lo = number_key(value)
        return {"must": [{"key": high_key, "match": {"value": hi}}, {"key": low_key, "match": {"value": lo}}]}
    return {"key": keyword_key, "match": {"value": _keyword(value)}}


def _range(field: str, op: str, value: float) -> dict[str, Any]:
    """``field op value`` on the ``(hi, lo)`` pair: hi beyond the bound, or hi equal and lo beyond."""
    _, high_key, low_key = field_keys(field)
    hi, lo = number_key(value)
    strict = {"$gt": "gt", "$gte": "gt", "$lt": "lt", "$lte": "lt"}[op]
    return {
        "should": [
            {"key": high_key, "range": {strict: hi}},
            {"must": [{"key": high_key, "match": {"value": hi}}, {"key": low_key, "range": {op[1:]: lo}}]},
        ]
    }


def _nothing() -> dict[str, Any]:
    return {"key": _NEVER, "match": {"value": "x"}}


def _clauses(spec: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """``(field, op, value)`` triples of a checked filter dict (lists are ``$in``, scalars ``$eq``)."""
    out = []
    for field, cond in spec.items():
        if isinstance(cond, Mapping):
            out.extend((field, op, value) for op, value in cond.items())
        elif isinstance(cond, list | tuple | set | frozenset):
            out.append((field, "$in", list(cond)))
        else:
            out.append((field, "$eq", cond))
    return out


def qdrant_filter(spec: Mapping[str, Any] | Filter | None) -> dict[str, Any] | None:
    """A filter dict (``prvr_sdk.index.filters``) as a Qdrant filter in JSON form, or None for none.

    Same meaning as in the exact index, applied by the engine before top-k.

    Raises:
        InvalidInputError: whatever ``compile_filter`` refuses; and range bounds that are strings
            (Qdrant compares only numbers and datetimes: store such values as numbers, e.g. Unix time).
    """
    compiled = compile_filter(spec)
    if compiled is None:
        return None
    must: list[dict[str, Any]] = []
    must_not: list[dict[str, Any]] = []
    for field, op, value in _clauses(compiled.spec):
        if field == ID_FIELD and op in ("$eq", "$ne", "$in", "$nin"):
            values = value if op in ("$in", "$nin") else [value]
            ids = sorted({point_id(v) for v in values if isinstance(v, str)})
            cond = {"has_id": ids} if ids else _nothing()
            if op in ("$ne", "$nin"):
                if ids:
                    must_not.append(cond)
            else:
                must.append(cond)
        elif op in ("$eq", "$ne"):
            (must if op == "$eq" else must_not).append(_equal(field, value))
        elif op in ("$in", "$nin"):
            conds = [_equal(field, v) for v in value]
            if op == "$in":
                must.append({"should": conds} if conds else _nothing())
            elif conds:
                must_not.extend(conds)
        else:  # a range
            if isinstance(value, str):
                raise InvalidInputError(
                    f"filter {field!r} {op}: string range bounds are not supported by the Qdrant index "
                    "(it compares numbers only); store the value as a number (e.g. a Unix time) or use "
                    "the exact index"
                )
            # ids are strings: a number bound matches none of them
            must.append(_nothing() if field == ID_FIELD else _range(field, op, float(value)))
    out: dict[str, Any] = {}
    if must:
        out["must"] = must
    if must_not:
        out["must_not"] = must_not
    return out or None


def with_ids(flt: dict[str, Any] | None, point_ids: list[str]) -> dict[str, Any]:
    """``flt`` restricted to the given points."""
    cond = {"has_id": list(point_ids)}
    if flt is None:
        return {"must": [cond]}
    return {"must": [cond, flt]}
