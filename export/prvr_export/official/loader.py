"""Read a checkpoint written by the authors' official code without ever running code from the file.

A pickle can name any importable callable and have the loader call it, so opening a stranger's ``.pt``
with plain ``torch.load(weights_only=False)`` runs whatever it asks for. The official MamFusion / AMDNet
checkpoints hold, next to the tensors, their configuration as an ``easydict.EasyDict`` (a ``dict``
subclass), which torch's own ``weights_only`` unpickler cannot rebuild: it only lets the exact types
``dict`` / ``OrderedDict`` receive items. So this module hands ``torch.load`` a restricted pickle
module whose ``find_class`` admits an explicit allow-list and nothing else:

* torch's tensor-rebuild functions (``torch._utils._rebuild_*``) and the storage/dtype objects torch
  resolves itself; ``collections.OrderedDict`` (state dicts);
* ``easydict.EasyDict``, mapped to a local ``dict`` subclass (``easydict`` is neither imported nor
  needed) and turned into a plain ``dict`` after loading;
* numpy's scalar and dtype rebuilders (the official ``save_ckpt`` stores validation recalls, which may be
  numpy floats) and ``_codecs.encode`` restricted to latin-1 (how pickle protocol 2 stores their bytes);
  they build values, never run code.

Anything else (``os.system``, ``builtins.eval``, a model class ...) raises ``InvalidInputError`` naming the
refused global, before any of it is called. The file size is checked before the first byte is read.
"""

from __future__ import annotations

import os
import pickle
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from prvr_sdk.errors import InvalidInputError

__all__ = ["DEFAULT_MAX_BYTES", "RESTRICTED_PICKLE", "load_restricted", "plain"]

DEFAULT_MAX_BYTES = 4 * 1024**3  # 4 GiB: a MUSE state dict with CLIP inside is ~0.6 GiB in fp32

_TORCH_REBUILDERS = (
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
    "_rebuild_device_tensor_from_cpu_tensor",
    "_rebuild_meta_tensor_no_storage",
)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it to store bytes; only the latin-1 codec is admitted."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise InvalidInputError(f"refusing _codecs.encode with codec {encoding!r}: only latin1 stores bytes")
    return text.encode("latin1")


class _EasyDictStandIn(dict):
    """Receives a pickled ``easydict.EasyDict``: its items arrive as dict items; the attribute state that
    follows only mirrors them, so it is ignored (setting attributes would let a file shadow dict methods)."""

    def __setstate__(self, state: Any) -> None:
        return None


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy's value rebuilders under both module spellings (numpy 1.x ``core``, 2.x ``_core``)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch's CPU wheels
        return {}
    try:
        from numpy.core.multiarray import scalar
    except ImportError:  # pragma: no cover
        from numpy._core.multiarray import scalar  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "scalar"): scalar,
        ("numpy._core.multiarray", "scalar"): scalar,
        ("numpy", "dtype"): np.dtype,
    }
    dtypes = getattr(np, "dtypes", None)
    for name in dir(dtypes) if dtypes is not None else ():
        cls = getattr(dtypes, name)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            allowed[("numpy.dtypes", name)] = cls
    return allowed


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("torch._utils", name): getattr(torch._utils, name)
        for name in _TORCH_REBUILDERS
        if hasattr(torch._utils, name)
    }
    allowed[("collections", "OrderedDict")] = OrderedDict
    allowed[("easydict", "EasyDict")] = _EasyDictStandIn
    allowed[("_codecs", "encode")] = _latin1_encode  # how protocol 2 spells bytes (numpy scalars)
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch", "device")] = torch.device
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype):
            allowed[("torch", name)] = value
    allowed.update(_numpy_globals())
    return allowed


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` returns only allow-listed objects (see the module doc).

    ``torch.load`` subclasses this and resolves storage types (names containing ``Storage``) itself
    before calling here; those are torch's own typed-storage descriptors.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise InvalidInputError(
                f"refusing to load {module}.{name} from the checkpoint: official checkpoints hold only "
                "tensors, containers, numbers, strings and an EasyDict config; this file asks to import "
                "another object, which could run code. Re-save it as a plain state_dict if you trust it."
            ) from None


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


# A stand-in for the ``pickle`` module, in the shape ``torch.load(pickle_module=...)`` expects.
RESTRICTED_PICKLE = types.ModuleType("prvr_restricted_pickle")
RESTRICTED_PICKLE.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
RESTRICTED_PICKLE.load = _restricted_load  # type: ignore[attr-defined]
RESTRICTED_PICKLE.__version__ = "1"  # type: ignore[attr-defined]


def plain(value: Any) -> Any:
    """The loaded object with every EasyDict stand-in turned into a plain ``dict`` (recursively)."""
    if isinstance(value, OrderedDict):
        return OrderedDict((k, plain(v)) for k, v in value.items())
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    return value


def load_restricted(path: str | os.PathLike, max_bytes: int | None = DEFAULT_MAX_BYTES) -> Any:
    """``torch.load`` of ``path`` onto the CPU through the allow-listed unpickler.

    Args:
        path: a file written by ``torch.save`` (zip or legacy format).
        max_bytes: refuse larger files before reading them (None: no limit).

    Returns:
        The stored object, with EasyDicts as plain dicts.

    Raises:
        InvalidInputError: missing file, too large, not a torch file, or a pickle that names an object
            outside the allow-list (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"--official {path}: file not found")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise InvalidInputError(
            f"--official {path}: {size:,} bytes, above the limit of {max_bytes:,}; "
            "raise the limit (max_bytes) if this checkpoint is genuinely that large"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=RESTRICTED_PICKLE)
    except InvalidInputError as exc:
        raise InvalidInputError(f"--official {path}: {exc}") from None
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise InvalidInputError(
            f"--official {path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    try:
        return plain(obj)
    except RecursionError:
        raise InvalidInputError(f"--official {path}: containers nested too deeply to read") from None
