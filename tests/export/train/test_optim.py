"""Tests for export/prvr_export/train/optim.py: BertAdam against a hand-computed update, groups, schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prvr_export.train.optim import (
    BertAdam,
    build_optimizer,
    build_scheduler,
    param_groups,
    warmup_cosine,
    warmup_linear,
)
from prvr_sdk.errors import InvalidInputError


def _bert_adam_by_hand(theta, grads, lr, b1, b2, eps, wd, clip=1.0):
    """docs/models.md §1.8 written out in plain Python floats, one element at a time."""
    theta = list(theta)
    m = [0.0] * len(theta)
    v = [0.0] * len(theta)
    for g in grads:
        norm = math.sqrt(sum(x * x for x in g))
        coef = min(1.0, clip / (norm + 1e-6))
        g = [x * coef for x in g]
        for i in range(len(theta)):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
            u = m[i] / (math.sqrt(v[i]) + eps) + wd * theta[i]
            theta[i] -= lr * u
    return theta


def test_two_steps_match_the_hand_computed_update() -> None:
    # step 1: grad [3, 4] has norm 5 -> clipped to ~[0.6, 0.8]; m = 0.1 g, v = 0.001 g^2, so
    #   m / (sqrt(v) + eps) = 0.06 / (0.0189737 + 1e-6) = 3.1621110 and 0.08 / (0.0252982 + 1e-6) = 3.1621527
    #   (eps is not negligible here); u = [3.1621110 + 0.01 * 1, 3.1621527 + 0.01 * -2];
    #   theta1 = theta0 - 0.1 u = [0.6827889, -2.3142153]
    # step 2: grad [0.5, -0.25] (norm 0.559, not clipped)
    param = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = BertAdam([param], lr=0.1, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
    grads = [[3.0, 4.0], [0.5, -0.25]]
    after_one = _bert_adam_by_hand([1.0, -2.0], grads[:1], 0.1, 0.9, 0.999, 1e-6, 0.01)
    assert after_one == pytest.approx([0.6827889, -2.3142153], abs=1e-7)
    for k, g in enumerate(grads):
        param.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        expected = _bert_adam_by_hand([1.0, -2.0], grads[: k + 1], 0.1, 0.9, 0.999, 1e-6, 0.01)
        torch.testing.assert_close(
            param.detach(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12
        )


def test_step_two_value_by_hand() -> None:
    # m2 = 0.9 m1 + 0.1 g2 ; v2 = 0.999 v1 + 0.001 g2^2 with g1 = [0.6, 0.8] (clipped), g2 = [0.5, -0.25]
    g1 = [3.0 / (5.0 + 1e-6), 4.0 / (5.0 + 1e-6)]
    m = [0.09 * g1[0] + 0.1 * 0.5, 0.09 * g1[1] + 0.1 * -0.25]
    v = [0.999 * 0.001 * g1[0] ** 2 + 0.001 * 0.25, 0.999 * 0.001 * g1[1] ** 2 + 0.001 * 0.0625]
    theta1 = _bert_adam_by_hand([1.0, -2.0], [[3.0, 4.0]], 0.1, 0.9, 0.999, 1e-6, 0.01)
    theta2 = [theta1[i] - 0.1 * (m[i] / (math.sqrt(v[i]) + 1e-6) + 0.01 * theta1[i]) for i in range(2)]
    param = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = BertAdam([param], lr=0.1, weight_decay=0.01)
    for g in ([3.0, 4.0], [0.5, -0.25]):
        param.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    torch.testing.assert_close(param.detach(), torch.tensor(theta2, dtype=torch.float64), rtol=0, atol=1e-12)


def test_clipping_is_per_tensor() -> None:
    a = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    b = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = BertAdam([a, b], lr=1.0, weight_decay=0.0)
    a.grad = torch.tensor([30.0, 40.0], dtype=torch.float64)  # clipped to norm 1
    b.grad = torch.tensor([0.5], dtype=torch.float64)  # left alone
    opt.step()
    torch.testing.assert_close(a.grad.norm(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-6)
    assert b.grad.item() == 0.5


def test_global_clip_runs_before_the_per_tensor_clip() -> None:
    a = nn.Parameter(torch.zeros(2))
    b = nn.Parameter(torch.zeros(2))
    opt = BertAdam([a, b], lr=1.0, weight_decay=0.0, global_grad_norm=1.0)
    a.grad = torch.tensor([0.3, 0.4])  # norm 0.5
    b.grad = torch.tensor([0.0, 0.0])
    opt.step()
    torch.testing.assert_close(a.grad, torch.tensor([0.3, 0.4]))  # total norm 0.5 <= 1: untouched
    a.grad = torch.tensor([3.0, 4.0])
    b.grad = torch.tensor([0.0, 5.0])  # total norm sqrt(50)
    opt.step()
    scale = 1.0 / (math.sqrt(50.0) + 1e-6)
    torch.testing.assert_close(a.grad, torch.tensor([3.0, 4.0]) * scale)
    torch.testing.assert_close(b.grad, torch.tensor([0.0, 5.0]) * scale)


@pytest.mark.parametrize(
    ("x", "expected"),
    [(0.0, 0.0), (0.005, 0.5), (0.01, 1.0), (0.5, 0.5 / 0.99), (0.99, 0.01 / 0.99), (1.0, 0.0), (1.3, 0.0)],
)
def test_warmup_linear(x: float, expected: float) -> None:
    assert warmup_linear(x, 0.01) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("x", "expected"),
    [(0.0, 0.0), (0.05, 0.5), (0.1, 0.5 * (1 + math.cos(0.1 * math.pi))), (0.5, 0.5), (1.0, 0.0)],
)
def test_warmup_cosine(x: float, expected: float) -> None:
    assert warmup_cosine(x, 0.1) == pytest.approx(expected, abs=1e-12)


def test_warmup_cosine_peak_is_not_renormalised() -> None:
    assert warmup_cosine(0.1, 0.1) == pytest.approx(0.9755, abs=1e-4)  # docs/models.md §1.8: peak ~0.976


def test_scheduler_scales_each_group_and_the_first_update_uses_f0() -> None:
    w = nn.Parameter(torch.ones(2))
    b = nn.Parameter(torch.ones(2))
    opt = BertAdam([{"params": [w], "lr": 1.0}, {"params": [b], "lr": 10.0}], lr=1.0, weight_decay=0.0)
    sched = build_scheduler(opt, "warmup_linear", total_steps=10, warmup=0.2)
    seen = []
    for _ in range(10):
        seen.append([g["lr"] for g in opt.param_groups])
        w.grad = torch.ones(2)
        b.grad = torch.ones(2)
        opt.step()
        sched.step()
    expected = [warmup_linear(k / 10, 0.2) for k in range(10)]
    assert [s[0] for s in seen] == pytest.approx(expected)
    assert [s[1] for s in seen] == pytest.approx([10 * e for e in expected])
    assert seen[0] == [0.0, 0.0]  # upstream's first step has x = 0 -> lr 0


def test_schedule_errors() -> None:
    opt = BertAdam([nn.Parameter(torch.ones(1))], lr=1.0)
    with pytest.raises(InvalidInputError, match="unknown schedule"):
        build_scheduler(opt, "cosine", 10, 0.1)
    with pytest.raises(InvalidInputError, match="total_steps"):
        build_scheduler(opt, "warmup_linear", 0, 0.1)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 3)
        self.norm = nn.LayerNorm(3)  # not named LayerNorm: caught by type
        self.LayerNorm = nn.LayerNorm(3)  # BERT naming: caught by name
        self.mamba_block = nn.Linear(3, 3)
        self.A_log = nn.Parameter(torch.zeros(3))
        self.A_log._no_weight_decay = True
        self.frozen = nn.Parameter(torch.zeros(3), requires_grad=False)


def test_param_groups_split_decay_and_lr_multipliers() -> None:
    groups = param_groups(_Net(), lr=1e-4, weight_decay=0.2, lr_groups=[["mamba", 10.0]])
    by_names = {tuple(g["names"]): (g["lr"], g["weight_decay"]) for g in groups}
    assert by_names == {
        ("mamba_block.weight",): (pytest.approx(1e-3), 0.2),
        ("proj.weight",): (1e-4, 0.2),
        ("mamba_block.bias",): (pytest.approx(1e-3), 0.0),
        ("A_log", "proj.bias", "norm.weight", "norm.bias", "LayerNorm.weight", "LayerNorm.bias"): (1e-4, 0.0),
    }
    # order: decaying first, multiplier groups before the base group
    assert [g["weight_decay"] for g in groups] == [0.2, 0.2, 0.0, 0.0]


def test_build_optimizer_reads_the_config() -> None:
    class Cfg:
        lr = 2e-4
        weight_decay = 0.01
        betas = (0.9, 0.98)
        eps = 1e-6
        lr_groups = [["mamba", 10.0]]
        global_grad_clip = 1.0

    opt = build_optimizer(_Net(), Cfg())
    assert opt.global_grad_norm == 1.0
    assert {g["betas"] for g in opt.param_groups} == {(0.9, 0.98)}
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([2e-4, 2e-3])


def test_bad_hyperparameters_raise() -> None:
    p = [nn.Parameter(torch.ones(1))]
    with pytest.raises(InvalidInputError, match="betas"):
        BertAdam(p, lr=1.0, betas=(0.9, 1.0))
    with pytest.raises(InvalidInputError, match="lr"):
        BertAdam(p, lr=-1.0)
    with pytest.raises(InvalidInputError, match="lr_groups"):
        param_groups(_Net(), 1.0, 0.0, lr_groups=[["mamba"]])
