"""The naive sequential selective scan: the oracle every fast implementation is tested against.

Obvious code on purpose: one Python loop over time, float32 (or float64) state, no tricks. Same
signature and return convention as mamba-ssm's ``selective_scan_fn`` / ``selective_scan_ref``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Sequential reference of Mamba's selective scan.

    Shapes (``r`` = real):
        u: r(B D L); delta: r(B D L); A: r(D N);
        B, C: r(B N L) or grouped r(B G N L), G divides D (channel d uses group d // (D/G));
        D: r(D); z: r(B D L); delta_bias: r(D).

    Returns:
        y r(B D L) in u's dtype, or ``(y, last_state r(B D N))`` when ``return_last_state``.
    """
    dtype_in = u.dtype
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(compute) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, _ = u.shape
    dstate = A.shape[1]
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    groups = B.shape[1]

    def per_channel(m_t: torch.Tensor) -> torch.Tensor:
        """(B G N) -> (B D N): channel d reads group d // (D/G)."""
        return m_t[:, :, None, :].expand(batch, groups, dim // groups, dstate).reshape(batch, dim, dstate)

    x = u.new_zeros(batch, dim, dstate)  # the state h, (B D N)
    ys = []
    steps = zip(u.unbind(2), delta.unbind(2), B.unbind(3), C.unbind(3), strict=True)
    for u_t, delta_t, B_t, C_t in steps:
        decay = torch.exp(delta_t[:, :, None] * A)  # (B D N)
        drive = (delta_t * u_t)[:, :, None] * per_channel(B_t)  # (B D N)
        x = decay * x + drive
        ys.append((x * per_channel(C_t)).sum(-1))  # (B D)
    y = torch.stack(ys, dim=2)  # (B D L)
    if D is not None:
        y = y + u * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(dtype_in)
    return (y, x) if return_last_state else y
