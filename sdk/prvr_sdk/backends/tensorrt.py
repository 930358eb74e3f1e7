"""TensorRT sessions over serialized engines (``engines/*.plan`` in a bundle), without torch.

Device memory is handled through the CUDA runtime library by ctypes (``libcudart``), so the only Python
dependency is the ``tensorrt`` wheel. Engines whose selective scan is the ``prvr::SelectiveScan`` plugin
carry its ahead-of-time kernel (``plugins/``), so deserialising needs no plugin code in this process.

Status: written against the TensorRT 10/11 tensor-address API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``); not yet run -- no machine with a GPU and TensorRT was available when it was written.
Tests skip with that reason when ``tensorrt`` is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Mapping, Sequence

import numpy as np

from prvr_sdk.errors import BackendUnavailableError, InvalidInputError

__all__ = ["TensorRTSession", "tensorrt_available"]

_H2D, _D2H = 1, 2  # cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


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


class _Cuda:
    """The five CUDA runtime calls a session needs, with errors turned into exceptions."""

    def __init__(self, device_index: int) -> None:
        self.lib = _cudart()
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

    def copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        self._check(
            self.lib.cudaMemcpy(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes), kind),
            "cudaMemcpy",
        )

    def synchronize(self) -> None:
        self._check(self.lib.cudaDeviceSynchronize(), "cudaDeviceSynchronize")


class TensorRTSession:
    """A deserialized TensorRT engine behind the ``Session`` interface (one execution context, sync runs).

    Raises:
        BackendUnavailableError: ``tensorrt`` or libcudart missing.
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
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        with open(path, "rb") as f:
            self._engine = self._runtime.deserialize_cuda_engine(f.read())
        if self._engine is None:
            raise BackendUnavailableError("tensorrt", "gpu", f"{path}: TensorRT could not deserialize it")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = tuple(n for n in names if is_input[n])
        self.output_names = tuple(n for n in names if not is_input[n])
        self.device = f"cuda:{index}"
        self.provider = f"TensorRT {trt.__version__}"

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        trt, cuda, ctx = self._trt, self._cuda, self._context
        allocations: list[int] = []
        try:
            for name in self.input_names:
                dtype = trt.nptype(self._engine.get_tensor_dtype(name))
                host = np.ascontiguousarray(feeds[name], dtype=dtype)
                ctx.set_input_shape(name, host.shape)
                ptr = cuda.malloc(host.nbytes)
                allocations.append(ptr)
                cuda.copy(ptr, host.ctypes.data, host.nbytes, _H2D)
                ctx.set_tensor_address(name, ptr)
            hosts = {}
            for name in self.output_names:
                shape = tuple(ctx.get_tensor_shape(name))
                hosts[name] = np.empty(shape, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))
                ptr = cuda.malloc(hosts[name].nbytes)
                allocations.append(ptr)
                ctx.set_tensor_address(name, ptr)
            if not ctx.execute_async_v3(0):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            cuda.synchronize()
            for name, ptr in zip(self.output_names, allocations[len(self.input_names):], strict=True):
                cuda.copy(hosts[name].ctypes.data, ptr, hosts[name].nbytes, _D2H)
        finally:
            for ptr in allocations:
                cuda.free(ptr)
        wanted = list(outputs) if outputs is not None else list(self.output_names)
        return {n: hosts[n] for n in wanted}

    def __repr__(self) -> str:
        return f"TensorRTSession(device={self.device!r}, provider={self.provider!r})"
