"""Mamba mixer layers: stock ``mamba_ssm.Mamba`` (MamFusion) and Vision Mamba's bidirectional "v2" (MUSE).

Parameter names, shapes, registration order and initialisation follow ``mamba_ssm/modules/mamba_simple.py``
(and, for ``BiMamba``, Vim's ``bimamba_type="v2"`` fork of it), so checkpoints load with ``strict=True``.
The scan itself is ``prvr_export.ops.selective_scan.selective_scan_fn``; these layers never implement it.

Shape comments: B batch, L sequence length, D d_inner, N d_state, R dt_rank (d_model spelled out).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.selective_scan import selective_scan_fn

__all__ = ["Mamba", "BiMamba"]

_DT_INITS = ("random", "constant")


def _fp32_or_wider(t: torch.Tensor) -> torch.Tensor:
    """mamba-ssm's ``.float()`` for A, D and the dt bias, except that float64 stays float64 (parity tests)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _reverse_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """Per-row time index that reverses each sequence's valid prefix and leaves its right padding in place.

    The map is an involution, so one gather flips and the same gather flips back. Built from the lengths with
    tensor ops only (no ``.item()``), so it exports with dynamic batch and length.
    """
    seqlen = mask.shape[1]
    lengths = mask.sum(dim=1, keepdim=True)  # (B 1)
    t = torch.arange(seqlen, device=mask.device)  # (L)
    return torch.where(t < lengths, lengths - 1 - t, t)  # (B L)


class Mamba(nn.Module):
    """Selective state-space mixer, ``mamba_ssm.Mamba`` without the fused kernels or the decoding cache.

    Args:
        d_model: input and output width.
        d_state: SSM state size N per channel.
        d_conv: width of the causal depthwise convolution.
        expand: d_inner = expand * d_model.
        dt_rank: rank of the dt projection; "auto" = ceil(d_model / 16).
        dt_min, dt_max: softplus(dt bias) is drawn log-uniformly in [dt_min, dt_max] ...
        dt_init_floor: ... and clamped from below to this.
        dt_init: "random" (U(-s, s)) or "constant" (s) for dt_proj.weight, s = dt_rank**-0.5 * dt_scale.
        dt_scale: scales s.
        conv_bias: bias on conv1d.
        bias: bias on in_proj and out_proj.
        use_fast_path, layer_idx: accepted and stored for signature compatibility with mamba-ssm. There is no
            fused ``mamba_inner_fn`` path and no inference cache here: forward always runs conv1d and
            ``selective_scan_fn`` (mamba-ssm's ``use_fast_path=False`` path, which MamFusion uses).
        device, dtype: for every submodule. A_log and D stay float32, as in mamba-ssm.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
        layer_idx: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if dt_init not in _DT_INITS:
            raise ValueError(f"dt_init must be one of {_DT_INITS}, got {dt_init!r}")
        if not (dt_rank == "auto" or (isinstance(dt_rank, int) and dt_rank > 0)):
            raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
        factory_kwargs = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(self.expand * self.d_model)
        self.dt_rank = math.ceil(self.d_model / 16) if dt_rank == "auto" else dt_rank
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx

        self.in_proj = nn.Linear(self.d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        self._build_scan_params(
            conv_bias=conv_bias,
            dt_init=dt_init,
            dt_scale=dt_scale,
            dt_min=dt_min,
            dt_max=dt_max,
            dt_init_floor=dt_init_floor,
            factory_kwargs=factory_kwargs,
        )
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias, **factory_kwargs)

    def _build_scan_params(self, **kwargs) -> None:
        """Register the scan direction's parameters between in_proj and out_proj (mamba-ssm's order)."""
        self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D = self._new_scan_params(**kwargs)

    def _new_scan_params(
        self, conv_bias, dt_init, dt_scale, dt_min, dt_max, dt_init_floor, factory_kwargs
    ) -> tuple[nn.Conv1d, nn.Linear, nn.Linear, nn.Parameter, nn.Parameter]:
        """One direction's conv1d, x_proj, dt_proj, A_log, D, initialised as in mamba-ssm."""
        device = factory_kwargs["device"]
        conv1d = nn.Conv1d(
            in_channels=self.d_inner,
            out_channels=self.d_inner,
            kernel_size=self.d_conv,
            groups=self.d_inner,
            padding=self.d_conv - 1,
            bias=conv_bias,
            **factory_kwargs,
        )
        # Input-dependent (dt, B, C) from each token.
        x_proj = nn.Linear(self.d_inner, self.dt_rank + self.d_state * 2, bias=False, **factory_kwargs)
        dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)

        # dt_proj.weight: scaled so that dt's variance does not depend on dt_rank at init.
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(dt_proj.weight, dt_init_std)
        else:
            nn.init.uniform_(dt_proj.weight, -dt_init_std, dt_init_std)
        # dt_proj.bias: inverse softplus of a log-uniform draw, so softplus(bias) starts in [dt_min, dt_max].
        dt = torch.exp(
            torch.rand(self.d_inner, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            dt_proj.bias.copy_(inv_dt)
        dt_proj.bias._no_reinit = True  # a model-level re-init must not overwrite this bias

        # S4D-real A = -[1..N] per channel, stored as log for positivity; float32 whatever the module dtype.
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        A_log = nn.Parameter(torch.log(A))  # (D N)
        A_log._no_weight_decay = True
        # Skip connection y += D * x; float32, as in mamba-ssm.
        D = nn.Parameter(torch.ones(self.d_inner, device=device))  # (D)
        D._no_weight_decay = True
        return conv1d, x_proj, dt_proj, A_log, D

    def _check_inputs(self, hidden_states: torch.Tensor, mask: torch.Tensor | None) -> None:
        """ValueErrors that name the argument. Rank, d_model are static; mask sizes become export guards."""
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(
                f"hidden_states must have shape (batch, seqlen, {self.d_model}) = (B, L, d_model), "
                f"got {tuple(hidden_states.shape)}"
            )
        if mask is not None:
            if mask.dtype != torch.bool or mask.dim() != 2:
                raise ValueError(
                    f"mask must be a bool tensor of shape (batch, seqlen), got {mask.dtype} "
                    f"{tuple(mask.shape)}"
                )
            if mask.shape[0] != hidden_states.shape[0] or mask.shape[1] != hidden_states.shape[1]:
                raise ValueError(
                    f"mask shape {tuple(mask.shape)} must equal hidden_states' (batch, seqlen) "
                    f"{tuple(hidden_states.shape[:2])}"
                )

    def _in_proj(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """in_proj straight into the scan layout (B 2D L) with L contiguous, as mamba-ssm does."""
        xz = self.in_proj.weight @ hidden_states.transpose(1, 2)  # (B 2D L)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(dtype=xz.dtype)[:, None]
        return xz

    def _scan(
        self,
        xz: torch.Tensor,
        conv1d: nn.Conv1d,
        x_proj: nn.Linear,
        dt_proj: nn.Linear,
        A_log: torch.Tensor,
        D: torch.Tensor,
    ) -> torch.Tensor:
        """One left-to-right direction: causal conv, SiLU, scan gated by silu(z). (B 2D L) -> (B D L)."""
        seqlen = xz.shape[-1]
        x, z = xz.chunk(2, dim=1)  # (B D L) each
        # Causal: keep the first L outputs of the left-and-right padded conv, so step t sees steps <= t.
        x = F.silu(conv1d(x)[..., :seqlen])  # (B D L)
        x_dbl = x_proj(x.transpose(1, 2))  # (B L R+2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = dt_proj.weight @ dt.transpose(1, 2)  # (B D L); the bias is added inside the scan, in fp32
        B = B.transpose(1, 2).contiguous()  # (B N L)
        C = C.transpose(1, 2).contiguous()  # (B N L)
        A = -torch.exp(_fp32_or_wider(A_log))  # (D N)
        return selective_scan_fn(
            x,
            dt,
            A,
            B,
            C,
            _fp32_or_wider(D),
            z=z,
            delta_bias=_fp32_or_wider(dt_proj.bias),
            delta_softplus=True,
        )  # (B D L)

    def _mix(self, xz: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The scan part between in_proj and out_proj. Causal, so right padding needs no special care."""
        return self._scan(xz, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model).

        ``mask`` (optional, bool (B, L), True = valid) marks right padding: the True entries of each row must
        form a prefix. Valid outputs never depend on padding; padded outputs are set to zero.
        """
        self._check_inputs(hidden_states, mask)
        xz = self._in_proj(hidden_states)  # (B 2D L)
        y = self._mix(xz, mask)  # (B D L)
        out = self.out_proj(y.transpose(1, 2))  # (B L d_model)
        if mask is not None:
            out = torch.where(mask[..., None], out, 0.0)
        return out


class BiMamba(Mamba):
    """Vision Mamba's bidirectional mixer (``bimamba_type="v2"``), as used by MUSE's ResMamba blocks.

    Shares in_proj and out_proj; a second parameter set (conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b,
    initialised like the first) scans the time-reversed sequence. The two directions' gated outputs are
    summed, not averaged, before out_proj. With ``mask``, only each row's valid prefix is reversed, so a
    right-padded batch gives the same valid outputs as each sequence alone (Vim flips the whole padded
    row). Arguments as for ``Mamba``.
    """

    def _build_scan_params(self, **kwargs) -> None:
        """Forward set, then the backward set, so state_dict keys come in Vim's order."""
        super()._build_scan_params(**kwargs)
        self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b = self._new_scan_params(**kwargs)

    def _mix(self, xz: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Forward scan plus the time-reversed backward scan, flipped back: (B 2D L) -> (B D L)."""
        y = self._scan(xz, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)  # (B D L)
        if mask is None:
            xz_b = xz.flip(-1)  # (B 2D L)
            y_b = self._scan(xz_b, self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b)
            return y + y_b.flip(-1)
        index = _reverse_valid_index(mask)[:, None, :]  # (B 1 L)
        xz_b = xz.gather(2, index.expand(-1, xz.shape[1], -1))  # (B 2D L)
        y_b = self._scan(xz_b, self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b)
        return y + y_b.gather(2, index.expand(-1, y_b.shape[1], -1))  # (B D L)
