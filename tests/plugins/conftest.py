"""Shared pieces of the Triton kernel tests: the interpreter switch and random scan problems."""

from __future__ import annotations

import pytest


@pytest.fixture
def interpret(monkeypatch):
    """Triton's CPU interpreter for this test: ``scan_triton`` reads TRITON_INTERPRET at every call."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def problem():
    """``make(batch, dim, n, length, groups, dtype, *, has_d, has_bias, softplus)`` -> the scan's arguments.

    A is negative (decaying, as in Mamba); without softplus delta is made positive, as a step size is.
    """
    import torch

    def make(batch, dim, n, length, groups, dtype=torch.float32, *, has_d=True, has_bias=True,
             softplus=True, seed=0):
        gen = torch.Generator().manual_seed(seed)

        def rand(*shape):
            return torch.randn(*shape, generator=gen)

        delta = 0.5 * rand(batch, dim, length)
        if not softplus:
            delta = delta.abs() + 0.05
        return dict(
            u=rand(batch, dim, length).to(dtype), delta=delta.to(dtype),
            A=-(torch.rand(dim, n, generator=gen) + 0.1),
            B=rand(batch, groups, n, length).to(dtype), C=rand(batch, groups, n, length).to(dtype),
            D=rand(dim) if has_d else None, delta_bias=0.1 * rand(dim) if has_bias else None,
            delta_softplus=softplus,
        )

    return make
