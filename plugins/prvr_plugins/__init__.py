"""Build-time kernels for prvr's deployment plugins (the selective scan's forward pass in Triton).

Nothing in ``prvr_sdk`` imports this package: it is used to *produce* kernels (PTX/cubin, ahead of time, on
any machine) and, through ``prvr_export.ops.selective_scan``, to serve the torch op on CUDA when mamba-ssm is
absent. Importing the package itself loads neither triton nor torch; the modules say what they need:

- ``prvr_plugins.geometry``: launch geometry and the kernel's argument order (plain integers, no triton);
- ``prvr_plugins.scan_triton``: the Triton kernels and ``selective_scan_fwd`` for torch tensors;
- ``prvr_plugins.aot``: ``compile_scan`` -> ``CompiledScan`` (PTX, cubin, launch facts) for TensorRT.
"""

from __future__ import annotations

__all__: list[str] = []
