"""Metadata filters: a small, JSON-shaped language compiled once and evaluated as boolean masks.

A filter is a dict; every entry must hold (an AND), and it is applied *before* top-k, so ``top_k=10``
with a filter returns the ten best videos that pass it (not the passing ones among the ten best)::

    {"video_id": ["v1", "v7"]}                       # id in a list (a list is always "$in")
    {"video_id": "v1"}                               # id equality
    {"split": "test", "lang": ["en", "de"]}          # equality, membership
    {"duration": {"$gte": 30, "$lt": 600}}           # ranges (numbers, or strings such as ISO dates)
    {"source": {"$ne": "youtube"}, "tag": {"$nin": ["ad"]}}

Operators: ``$eq $ne $in $nin $gt $gte $lt $lte`` (Mongo / Qdrant / Twelve Labs habits). ``video_id`` is
the id given to ``add``, never a metadata key. Equality is JSON-typed: ``true`` does not match ``1``,
``"1"`` does not match ``1``, ``1`` matches ``1.0``. A video without the field fails every clause on it
except ``$ne`` / ``$nin``. Range bounds are all numbers or all strings; numbers compare as float64 (ints
beyond 2**53 lose precision). Filters on list- or dict-valued metadata are not supported (they match
nothing). Anything else -- unknown operator, empty operator dict, a bound of the wrong type -- raises
``InvalidInputError`` when the filter is compiled, before any search work.

Evaluation is vectorised over columns that each index segment builds once per field and caches, so a
repeated filter costs a few numpy passes, not a Python loop over the corpus.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from prvr_sdk.errors import InvalidInputError

__all__ = [
    "ABSENT",
    "ID_FIELD",
    "OPERATORS",
    "Column",
    "Filter",
    "MetadataView",
    "build_column",
    "compile_filter",
]

ID_FIELD = "video_id"
OPERATORS = ("$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte")
_RANGE_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}

# JSON type of each stored value: numbers and bools are kept apart so that true never equals 1.
_MISSING, _NULL, _BOOL, _NUMBER, _STRING, _OTHER = range(6)


class Column:
    """One metadata field over a segment's videos: JSON kind, raw values, and a float64 view of numbers."""

    __slots__ = ("kind", "values", "numbers")

    def __init__(self, kind: np.ndarray, values: np.ndarray, numbers: np.ndarray) -> None:
        self.kind = kind  # int8 [n], one of _MISSING .. _OTHER
        self.values = values  # object [n]
        self.numbers = numbers  # float64 [n], NaN where the value is not a number


ABSENT = object()  # marks "this video has no such field" in build_column's input


def _kind_of(value: Any) -> int:
    if value is ABSENT:
        return _MISSING
    if value is None:
        return _NULL
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, int | float):
        return _NUMBER
    if isinstance(value, str):
        return _STRING
    return _OTHER


def build_column(values: Sequence[Any]) -> Column:
    """Build a ``Column`` from per-video values; pass ``ABSENT`` for a video without the field."""
    n = len(values)
    kind = np.fromiter((_kind_of(v) for v in values), dtype=np.int8, count=n)
    obj = np.empty(n, dtype=object)
    for i, v in enumerate(values):  # element-wise: numpy would turn list values into nested arrays
        obj[i] = v
    numbers = np.full(n, np.nan)
    is_num = kind == _NUMBER
    if is_num.any():
        numbers[is_num] = np.array([float(v) for v in obj[is_num]], dtype=np.float64)
    return Column(kind, obj, numbers)


class MetadataView(Protocol):
    """What a filter needs from one segment of an index (``ExactIndex`` segments implement it)."""

    def __len__(self) -> int: ...

    def column(self, field: str) -> Column:
        """The field's column (cached); ``field == "video_id"`` gives the ids."""
        ...

    def id_mask(self, ids: Sequence[str]) -> np.ndarray:
        """bool ``[n]``: which rows hold one of ``ids`` (an id-map lookup, not a scan)."""
        ...


def _check_scalar(value: Any, where: str) -> None:
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidInputError(f"filter {where}: expected a finite number, got {value!r}")
        return
    raise InvalidInputError(
        f"filter {where}: expected a string, number, bool or null, got {type(value).__name__} {value!r}"
    )


def _equal_mask(col: Column, value: Any) -> np.ndarray:
    if value is None:
        return col.kind == _NULL
    if isinstance(value, bool):
        return (col.kind == _BOOL) & (col.values == value)
    if isinstance(value, int | float):
        return (col.kind == _NUMBER) & (col.numbers == float(value))
    hit = col.kind == _STRING
    out = np.zeros(len(col.kind), dtype=bool)
    out[hit] = col.values[hit] == value
    return out


class _Clause:
    """One ``field op value`` test."""

    def __init__(self, field: str, op: str, value: Any) -> None:
        self.field, self.op, self.value = field, op, value

    def mask(self, view: MetadataView) -> np.ndarray:
        if self.field == ID_FIELD and self.op in ("$eq", "$ne", "$in", "$nin"):
            values = self.value if self.op in ("$in", "$nin") else [self.value]
            hit = view.id_mask([v for v in values if isinstance(v, str)])
            return ~hit if self.op in ("$ne", "$nin") else hit
        col = view.column(self.field)
        if self.op in ("$eq", "$ne"):
            hit = _equal_mask(col, self.value)
            return ~hit if self.op == "$ne" else hit
        if self.op in ("$in", "$nin"):
            hit = np.zeros(len(col.kind), dtype=bool)
            for v in self.value:
                hit |= _equal_mask(col, v)
            return ~hit if self.op == "$nin" else hit
        compare = _RANGE_OPS[self.op]
        if isinstance(self.value, str):
            hit = col.kind == _STRING
            out = np.zeros(len(col.kind), dtype=bool)
            out[hit] = [compare(v, self.value) for v in col.values[hit]]
            return out
        with np.errstate(invalid="ignore"):  # NaN (not a number) compares False, as intended
            return compare(col.numbers, float(self.value))

    def __repr__(self) -> str:
        return f"{self.field} {self.op} {self.value!r}"


class Filter:
    """A compiled filter: an AND of clauses. ``mask(view)`` gives bool ``[n]`` over a segment's videos."""

    def __init__(self, clauses: list[_Clause], spec: Mapping[str, Any]) -> None:
        self._clauses = clauses
        self.spec = spec

    def mask(self, view: MetadataView) -> np.ndarray:
        out = np.ones(len(view), dtype=bool)
        for clause in self._clauses:
            out &= clause.mask(view)
            if not out.any():
                break
        return out

    def __repr__(self) -> str:
        return f"Filter({' AND '.join(map(repr, self._clauses)) or 'everything'})"


def _compile_field(field: str, cond: Any) -> list[_Clause]:
    if isinstance(cond, Mapping):
        if not cond:
            raise InvalidInputError(
                f"filter {field!r}: empty operator dict; expected some of {list(OPERATORS)}"
            )
        clauses = []
        range_types = set()
        for op, value in cond.items():
            if op not in OPERATORS:
                raise InvalidInputError(
                    f"filter {field!r}: unknown operator {op!r}; expected one of {list(OPERATORS)}"
                )
            where = f"{field!r} {op}"
            if op in ("$in", "$nin"):
                if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
                    raise InvalidInputError(f"filter {where}: expected a list of values, got {value!r}")
                value = list(value)
                for v in value:
                    _check_scalar(v, where)
            elif op in _RANGE_OPS:
                if isinstance(value, bool) or not isinstance(value, int | float | str):
                    raise InvalidInputError(
                        f"filter {where}: expected a number or a string bound, got {value!r}"
                    )
                _check_scalar(value, where)
                range_types.add(str if isinstance(value, str) else float)
            else:
                _check_scalar(value, where)
            clauses.append(_Clause(field, op, value))
        if len(range_types) > 1:
            raise InvalidInputError(f"filter {field!r}: range bounds mix numbers and strings ({dict(cond)})")
        return clauses
    if isinstance(cond, list | tuple | set | frozenset):
        return _compile_field(field, {"$in": list(cond)})
    return _compile_field(field, {"$eq": cond})


def compile_filter(spec: Mapping[str, Any] | Filter | None) -> Filter | None:
    """Check a filter dict and compile it (``None`` and compiled filters pass through).

    Raises:
        InvalidInputError: not a dict, a non-string field name, an unknown operator, an empty operator dict,
            a list where a scalar belongs (or the reverse), or a range bound that is not a number or string.
    """
    if spec is None or isinstance(spec, Filter):
        return spec
    if not isinstance(spec, Mapping):
        raise InvalidInputError(
            f"filter: expected a dict such as {{'video_id': [...]}}, got {type(spec).__name__}"
        )
    clauses: list[_Clause] = []
    for field, cond in spec.items():
        if not isinstance(field, str) or not field:
            raise InvalidInputError(f"filter: field names must be non-empty strings, got {field!r}")
        if field.startswith("$"):
            raise InvalidInputError(
                f"filter: {field!r} at the top level; operators go inside a field, e.g. {{'duration': "
                f"{{'{field}': ...}}}} (top-level entries are ANDed)"
            )
        clauses.extend(_compile_field(field, cond))
    return Filter(clauses, dict(spec))
