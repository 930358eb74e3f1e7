"""BertAdam, its parameter groups and its learning-rate schedules (docs/models.md §1.8, §5.3).

BertAdam is Adam as the BERT / CLIP4Clip code bases ship it, which every model here trains with:

* each parameter tensor's gradient is clipped to L2 norm ``max_grad_norm`` (1.0) on its own, with
  ``clip_grad_norm_``'s rule ``g <- g * min(1, max_norm / (||g|| + 1e-6))``;
* ``m <- b1 m + (1 - b1) g``,  ``v <- b2 v + (1 - b2) g^2``;
* ``u = m / (sqrt(v) + eps) + wd * theta``: **no bias correction**, weight decay added to the update
  (decoupled, and scaled by the learning rate like the rest of the update);
* ``theta <- theta - lr_t * u``.

``lr_t`` comes from a ``torch.optim.lr_scheduler.LambdaLR`` over one of the schedules below, evaluated at
``x = step / T`` with ``step`` counted from 0 *before* the update, so the very first update uses
``f(0) = 0`` exactly as upstream (whose optimiser reads its own per-tensor step counter; ours is one
counter for the whole model, which differs only for tensors that receive no gradient in some steps).

MUSE (CLIP4Clip) also clips the global gradient norm before the step: ``global_grad_norm``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from prvr_sdk.errors import InvalidInputError

__all__ = [
    "NO_DECAY_NAMES",
    "SCHEDULES",
    "BertAdam",
    "build_optimizer",
    "build_scheduler",
    "param_groups",
    "warmup_cosine",
    "warmup_linear",
]

# Upstream's rule (docs/models.md §1.8): no decay for parameters whose name contains one of these.
NO_DECAY_NAMES = ("bias", "LayerNorm.bias", "LayerNorm.weight")
_CLIP_EPS = 1e-6  # the eps torch.nn.utils.clip_grad_norm_ adds to the norm


def warmup_linear(x: float, warmup: float = 0.002) -> float:
    """``x / w`` during warm-up, then a straight line from 1 at ``x = w`` to 0 at ``x = 1`` (0 after).

    Args:
        x: progress ``step / total_steps``.
        warmup: the warm-up fraction ``w`` (``lr_warmup_proportion``).
    """
    if x < warmup:
        return x / warmup
    if warmup >= 1.0:
        return 1.0
    return max((x - 1.0) / (warmup - 1.0), 0.0)


def warmup_cosine(x: float, warmup: float = 0.002) -> float:
    """``x / w`` during warm-up, then ``0.5 (1 + cos(pi x))`` (CLIP4Clip; not re-normalised after warm-up,
    so the value right after warm-up is ``0.5 (1 + cos(pi w))``, e.g. 0.976 for w = 0.1)."""
    if x < warmup:
        return x / warmup
    return 0.5 * (1.0 + math.cos(math.pi * x))


SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "warmup_linear": warmup_linear,
    "warmup_cosine": warmup_cosine,
}


class BertAdam(torch.optim.Optimizer):
    """Adam without bias correction, with per-tensor gradient clipping and decoupled weight decay.

    Args:
        params: parameters or parameter groups (each group may set ``lr``, ``weight_decay``).
        lr: base learning rate (a scheduler scales it per step).
        betas: ``(b1, b2)``; upstream 0.9 / 0.999 (MamFusion, AMDNet), 0.9 / 0.98 (MUSE).
        eps: added to ``sqrt(v)``.
        weight_decay: decay rate added to the update (``u += wd * theta``).
        max_grad_norm: per-tensor gradient clip; ``<= 0`` turns it off.
        global_grad_norm: if set, first clip the norm of all gradients together (MUSE: 1.0).
    Raises:
        InvalidInputError: a negative rate, betas outside [0, 1), a non-positive eps.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        max_grad_norm: float = 1.0,
        global_grad_norm: float | None = None,
    ) -> None:
        b1, b2 = (float(b) for b in betas)
        if lr < 0.0:
            raise InvalidInputError(f"BertAdam: lr = {lr}; expected >= 0")
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise InvalidInputError(f"BertAdam: betas = {tuple(betas)}; expected two values in [0, 1)")
        if eps <= 0.0:
            raise InvalidInputError(f"BertAdam: eps = {eps}; expected > 0")
        if weight_decay < 0.0:
            raise InvalidInputError(f"BertAdam: weight_decay = {weight_decay}; expected >= 0")
        if global_grad_norm is not None and global_grad_norm <= 0.0:
            raise InvalidInputError(f"BertAdam: global_grad_norm = {global_grad_norm}; expected > 0 or None")
        defaults = dict(
            lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm
        )
        super().__init__(params, defaults)
        self.global_grad_norm = global_grad_norm

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.global_grad_norm is not None:
            grads = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                torch.nn.utils.clip_grad_norm_(grads, self.global_grad_norm)
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise InvalidInputError("BertAdam does not support sparse gradients")
                if group["max_grad_norm"] > 0:
                    norm = torch.linalg.vector_norm(grad)
                    grad.mul_(torch.clamp(group["max_grad_norm"] / (norm + _CLIP_EPS), max=1.0))
                state = self.state[p]
                if not state:
                    state["next_m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["next_v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, v = state["next_m"], state["next_v"]
                m.mul_(b1).add_(grad, alpha=1.0 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"] > 0.0:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        return loss


def _no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters that must not decay.

    Upstream's substring rule (``NO_DECAY_NAMES``) assumes BERT's ``LayerNorm`` attribute name; our layers
    name their norms freely, so the weight of every ``nn.LayerNorm`` counts too. Parameters tagged
    ``_no_weight_decay = True`` (mamba-ssm's convention for ``A_log`` and ``D``) are also exempt; upstream
    MamFusion ignores that tag and decays them (a negligible difference at wd = 0.01).
    """
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            for param_name, _ in module.named_parameters(recurse=False):
                names.add(f"{module_name}.{param_name}" if module_name else param_name)
    for name, param in model.named_parameters():
        if any(nd in name for nd in NO_DECAY_NAMES) or getattr(param, "_no_weight_decay", False):
            names.add(name)
    return names


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    lr_groups: Sequence[Sequence[Any]] = (),
) -> list[dict[str, Any]]:
    """Split the trainable parameters into groups by (weight decay, learning-rate multiplier).

    Args:
        model: the module whose ``named_parameters`` are grouped (parameters with ``requires_grad=False``
            are left out).
        lr: base learning rate.
        weight_decay: the decay of the decaying group (the other group has 0; see ``_no_decay_names``).
        lr_groups: ``[[name_substring, multiplier], ...]``; a parameter whose name contains a substring
            trains at ``lr * multiplier`` (the first match wins). MUSE: ``[["mamba", 10.0]]``.
    Returns:
        Non-empty groups, each ``{"params", "lr", "weight_decay", "names"}`` (``names`` for logging), in a
        fixed order: decaying before non-decaying, multiplier groups in ``lr_groups`` order, base last.
    """
    rules = []
    for rule in lr_groups:
        if len(rule) != 2:
            raise InvalidInputError(f"lr_groups entry {rule!r}; expected [name_substring, lr_multiplier]")
        rules.append((str(rule[0]), float(rule[1])))
    no_decay = _no_decay_names(model)
    buckets: dict[tuple[bool, int], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        rule_index = next((i for i, (sub, _) in enumerate(rules) if sub in name), len(rules))
        multiplier = rules[rule_index][1] if rule_index < len(rules) else 1.0
        decays = name not in no_decay
        key = (not decays, rule_index)
        bucket = buckets.setdefault(
            key,
            {
                "params": [],
                "names": [],
                "lr": lr * multiplier,
                "weight_decay": weight_decay if decays else 0.0,
            },
        )
        bucket["params"].append(param)
        bucket["names"].append(name)
    return [buckets[key] for key in sorted(buckets)]


def build_optimizer(model: nn.Module, config: Any) -> BertAdam:
    """BertAdam over ``param_groups(model, ...)`` with the config's ``lr``, ``weight_decay``, ``betas``,
    ``eps``, ``lr_groups`` and ``global_grad_clip`` (per-tensor clip fixed at 1.0, as upstream)."""
    groups = param_groups(model, config.lr, config.weight_decay, getattr(config, "lr_groups", None) or ())
    if not groups:
        raise InvalidInputError(f"{type(model).__name__} has no trainable parameters")
    return BertAdam(
        groups,
        lr=config.lr,
        betas=tuple(getattr(config, "betas", (0.9, 0.999))),
        eps=getattr(config, "eps", 1e-6),
        weight_decay=config.weight_decay,
        max_grad_norm=1.0,
        global_grad_norm=getattr(config, "global_grad_clip", None),
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, warmup: float
) -> LambdaLR:
    """``LambdaLR`` multiplying each group's lr by ``SCHEDULES[schedule](step / total_steps, warmup)``.

    Raises:
        InvalidInputError: an unknown schedule name or ``total_steps < 1``.
    """
    if schedule not in SCHEDULES:
        raise InvalidInputError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if total_steps < 1:
        raise InvalidInputError(f"total_steps = {total_steps}; expected >= 1 (is the training set empty?)")
    fn = SCHEDULES[schedule]
    return LambdaLR(optimizer, lambda step: fn(step / total_steps, warmup))
