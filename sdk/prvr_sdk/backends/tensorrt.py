"""TensorRT sessions over serialized engines (``engines/*.plan`` in a bundle), without torch.

Device memory is handled through the CUDA runtime library by ctypes (``libcudart``), so the only Python
dependency is the ``tensorrt`` wheel. Engines whose selective scan is the ``prvr::SelectiveScan`` plugin
carry its ahead-of-time kernel (``plugins/prvr_plugins/trt_plugin.py``), so deserialising needs no plugin
code in this process.

A session behaves like ``OnnxRuntimeSession`` (same names in, same arrays out) within what an engine can
do: an engine takes batches only up to its optimisation profile's maximum, so larger batches are run in
chunks and concatenated (every graph input and output of ours has the batch on axis 0), and smaller ones
than its minimum are padded with copies of the last row. Device buffers are allocated once, sized for the
profile's maximum shapes, and reused by every call; one CUDA stream per session.

Status: written against the TensorRT 10/11 tensor-address API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``); the batching and buffer rules are plain functions tested without a GPU; the
session itself runs only in ``tests/gpu`` (skipped without a GPU and TensorRT).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from prvr_sdk.errors import BackendUnavailableError, InvalidInputError, ShapeMismatchError

__all__ = [
    "TensorRTSession",
    "buffer_bytes",
    "check_within_profile",
    "device_compute_capability",
    "device_name",
    "pad_rows",
    "plan_batches",
    "tensorrt_available",
]

_H2D, _D2H = 1, 2  # cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost
_CC_MAJOR, _CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor / Minor


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- plain rules (no GPU)
def plan_batches(n: int, max_batch: int, min_batch: int = 1) -> list[tuple[int, int, int]]:
    """Cut ``n`` rows into engine calls: ``[(start, stop, pad)]``, each ``stop - start <= max_batch`` and
    ``stop - start + pad >= min_batch`` (pad rows are added for the call and dropped from its outputs).

    Chunks are as equal as possible (10 rows, max 4 -> 4, 3, 3), so no call is a tiny tail.
    """
    if n < 1 or max_batch < 1 or not 1 <= min_batch <= max_batch:
        raise ValueError(f"need n >= 1 and 1 <= min_batch <= max_batch; got {n}, {min_batch}, {max_batch}")
    calls = math.ceil(n / max_batch)
    base, extra = divmod(n, calls)
    out, start = [], 0
    for i in range(calls):
        size = base + (1 if i < extra else 0)
        out.append((start, start + size, max(0, min_batch - size)))
        start += size
    return out


def pad_rows(array: np.ndarray, start: int, stop: int, pad: int) -> np.ndarray:
    """Rows ``start:stop`` of ``array`` plus ``pad`` copies of the last one (contiguous)."""
    rows = array[start:stop]
    if pad:
        rows = np.concatenate([rows, np.repeat(rows[-1:], pad, axis=0)])
    return np.ascontiguousarray(rows)


def buffer_bytes(shape: Sequence[int], itemsize: int) -> int:
    """Bytes of a tensor of ``shape`` (all dimensions known, e.g. a profile's maximum); at least 1."""
    if any(d < 0 for d in shape):
        raise ValueError(f"buffer size needs a concrete shape, got {list(shape)}")
    return max(1, math.prod(int(d) for d in shape) * int(itemsize))


def check_within_profile(name: str, shape: Sequence[int], lo: Sequence[int], hi: Sequence[int]) -> None:
    """Every non-batch dimension of ``shape`` must lie in the profile's ``[lo, hi]`` (the batch is split).

    Raises:
        ShapeMismatchError: a dimension outside the profile, naming the input, axis and range.
    """
    if len(shape) != len(lo):
        raise ShapeMismatchError(f"{name}: rank {len(shape)}, the engine takes rank {len(lo)} {list(hi)}")
    for axis, (d, a, b) in enumerate(zip(shape, lo, hi, strict=True)):
        if axis and not a <= d <= b:
            raise ShapeMismatchError(
                f"{name}: dimension {axis} is {d}; the engine was built for {a}..{b} (shape {list(shape)}); "
                "build it again with larger --max-shapes (prvr build-engine)"
            )


# --------------------------------------------------------------------------- CUDA runtime by ctypes
@functools.cache
def _cudart() -> ctypes.CDLL:
    for name in ("cudart", "cudart64_12", "cudart64_13"):
        found = ctypes.util.find_library(name)
        if found:
            return ctypes.CDLL(found)
    for candidate in ("libcudart.so", "libcudart.so.13", "libcudart.so.12"):
        try:
            return ctypes.CDLL(candidate)
        except OSError:
            continue
    raise BackendUnavailableError("tensorrt", "gpu", "the CUDA runtime library (libcudart) was not found")


def device_compute_capability(index: int = 0) -> tuple[int, int] | None:
    """``(major, minor)`` of CUDA device ``index``, or None when there is no CUDA runtime or device.

    Engines are specific to a compute capability; this is how a Retriever picks the matching one.
    """
    try:
        lib = _cudart()
    except BackendUnavailableError:
        return None
    major, minor = ctypes.c_int(), ctypes.c_int()
    if lib.cudaDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, ctypes.c_int(index)) != 0:
        return None
    if lib.cudaDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, ctypes.c_int(index)) != 0:
        return None
    return int(major.value), int(minor.value)


def device_name(index: int = 0) -> str | None:
    """The CUDA device's name (``cudaDeviceProp.name``, its first field), or None without one."""
    try:
        lib = _cudart()
    except BackendUnavailableError:
        return None
    props = ctypes.create_string_buffer(16384)  # larger than cudaDeviceProp in any CUDA version
    if lib.cudaGetDeviceProperties(props, ctypes.c_int(index)) != 0:
        return None
    return props.raw[:256].split(b"\0", 1)[0].decode("utf-8", "replace")


class _Cuda:
    """The CUDA runtime calls a session needs, with errors turned into exceptions."""

    def __init__(self, device_index: int) -> None:
        self.lib = _cudart()
        self.device_index = device_index
        self._check(self.lib.cudaSetDevice(ctypes.c_int(device_index)), "cudaSetDevice")

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with CUDA error {status}")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
        return int(ptr.value)

    def free(self, ptr: int) -> None:
        self.lib.cudaFree(ctypes.c_void_p(ptr))

    def stream(self) -> int:
        handle = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(handle)), "cudaStreamCreate")
        return int(handle.value or 0)

    def destroy_stream(self, stream: int) -> None:
        self.lib.cudaStreamDestroy(ctypes.c_void_p(stream))

    def copy_async(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        status = self.lib.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                                          kind, ctypes.c_void_p(stream))
        self._check(status, "cudaMemcpyAsync")

    def synchronize(self, stream: int) -> None:
        self._check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")


class TensorRTSession:
    """A deserialized TensorRT engine behind the ``Session`` interface (one execution context, sync runs).

    Attributes:
        min_batch / max_batch: the batch range of the engine's first optimisation profile; ``run`` takes
            any batch (split or padded to fit).

    Raises:
        BackendUnavailableError: ``tensorrt`` or libcudart missing, or the engine does not deserialize here
            (built for another GPU or TensorRT version).
        InvalidInputError: the device is not ``cuda:N``.
    """

    backend = "tensorrt"

    def __init__(self, path: str | os.PathLike, device: str = "cuda:0") -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailableError("tensorrt", "gpu", str(exc)) from None
        if not device.startswith("cuda"):
            raise InvalidInputError(f"backend 'tensorrt' runs on a GPU; got device {device!r}")
        index = 0 if device == "cuda" else int(device.split(":", 1)[1])
        self._trt = trt
        self._cuda = _Cuda(index)
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._stream = 0
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        with open(path, "rb") as f:
            self._engine = self._runtime.deserialize_cuda_engine(f.read())
        if self._engine is None:
            raise BackendUnavailableError(
                "tensorrt", "gpu", f"{path}: TensorRT {trt.__version__} could not deserialize it (built for "
                "another GPU or TensorRT version? run `prvr build-engine` on this machine)")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = tuple(n for n in names if is_input[n])
        self.output_names = tuple(n for n in names if not is_input[n])
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._profile = {n: tuple(tuple(s) for s in self._engine.get_tensor_profile_shape(n, 0))
                         for n in self.input_names}
        self.min_batch = max(lo[0] for lo, _, _ in self._profile.values())
        self.max_batch = min(hi[0] for _, _, hi in self._profile.values())
        self.device = f"cuda:{index}"
        self.provider = f"TensorRT {trt.__version__}"
        self._stream = self._cuda.stream()
        self._allocate_for_max()

    # ------------------------------------------------------------------ buffers
    def _allocate_for_max(self) -> None:
        """Allocate every I/O buffer once, at the profile's maximum shapes (outputs as the engine infers)."""
        for name in self.input_names:
            hi = self._profile[name][2]
            self._context.set_input_shape(name, hi)
            self._ensure(name, buffer_bytes(hi, self._dtypes[name].itemsize))
        for name in self.output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            if all(d >= 0 for d in shape):
                self._ensure(name, buffer_bytes(shape, self._dtypes[name].itemsize))

    def _ensure(self, name: str, nbytes: int) -> int:
        """The device buffer of ``name``, grown (never shrunk) to ``nbytes``."""
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self._cuda.free(ptr)
            ptr = self._cuda.malloc(nbytes)
            self._buffers[name] = (ptr, nbytes)
            self._context.set_tensor_address(name, ptr)
        return ptr

    def close(self) -> None:
        """Free device buffers and the stream (also done when the session is garbage-collected)."""
        cuda = getattr(self, "_cuda", None)
        if cuda is None:
            return
        for ptr, _ in getattr(self, "_buffers", {}).values():
            cuda.free(ptr)
        self._buffers = {}
        if getattr(self, "_stream", 0):
            cuda.destroy_stream(self._stream)
            self._stream = 0

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the CUDA library may already be gone
            pass

    # ------------------------------------------------------------------ running
    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InvalidInputError(f"missing engine inputs {missing} (it takes {list(self.input_names)})")
        wanted = list(outputs) if outputs is not None else list(self.output_names)
        unknown = [n for n in wanted if n not in self.output_names]
        if unknown:
            raise InvalidInputError(f"unknown outputs {unknown} (the engine gives {list(self.output_names)})")
        arrays = {n: np.asarray(feeds[n]) for n in self.input_names}
        sizes = {len(a) for a in arrays.values()}
        if len(sizes) != 1 or 0 in sizes:
            raise ShapeMismatchError(f"engine inputs must share a non-empty batch axis 0; got "
                                     f"{ {n: a.shape for n, a in arrays.items()} }")
        for name, array in arrays.items():
            lo, _, hi = self._profile[name]
            check_within_profile(name, array.shape, lo, hi)
        parts: dict[str, list[np.ndarray]] = {n: [] for n in wanted}
        for start, stop, pad in plan_batches(sizes.pop(), self.max_batch, self.min_batch):
            chunk = {n: pad_rows(a.astype(self._dtypes[n], copy=False), start, stop, pad)
                     for n, a in arrays.items()}
            out = self._run_chunk(chunk, wanted)
            for n in wanted:
                parts[n].append(out[n][: stop - start])
        return {n: p[0] if len(p) == 1 else np.concatenate(p) for n, p in parts.items()}

    def _run_chunk(self, chunk: Mapping[str, np.ndarray], wanted: Sequence[str]) -> dict[str, np.ndarray]:
        cuda, ctx, stream = self._cuda, self._context, self._stream
        for name, host in chunk.items():
            if not ctx.set_input_shape(name, host.shape):
                raise ShapeMismatchError(f"{name}: TensorRT refused shape {list(host.shape)}")
            ptr = self._ensure(name, host.nbytes)
            cuda.copy_async(ptr, host.ctypes.data, host.nbytes, _H2D, stream)
        hosts = {}
        for name in self.output_names:
            host = np.empty(tuple(ctx.get_tensor_shape(name)), dtype=self._dtypes[name])
            ptr = self._ensure(name, host.nbytes)  # set_tensor_address for every output, wanted or not
            if name in wanted:
                hosts[name] = (host, ptr)
        if not ctx.execute_async_v3(stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        for host, ptr in hosts.values():
            cuda.copy_async(host.ctypes.data, ptr, host.nbytes, _D2H, stream)
        cuda.synchronize(stream)
        return {n: host for n, (host, _) in hosts.items()}

    def __repr__(self) -> str:
        return (f"TensorRTSession(device={self.device!r}, provider={self.provider!r}, "
                f"batch={self.min_batch}..{self.max_batch})")
