"""Selective scan op (work in progress: the fast op lands here; this placeholder calls the reference)."""
from __future__ import annotations

from .reference import selective_scan_ref

__all__ = ["selective_scan_fn", "selective_scan_ref"]


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
