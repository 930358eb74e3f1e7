"""Worker for test_distributed.py, launched by torchrun: train a tiny model data-parallel with
``prvr_export.train.loop.fit`` and dump this rank's final weights.

Also imported by the test (for the model, data and config of the single-process reference).
Usage: python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_worker.py OUT_DIR
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

ITEMS = 12  # 2 ranks x 3 steps x 2 items per rank per step
DIM = 5


@dataclasses.dataclass(frozen=True)
class Config:
    lr: float = 0.1
    batch_size: int = 4  # global: 2 per rank
    n_epoch: int = 1
    max_es_cnt: int = -1
    lr_warmup_proportion: float = 0.0  # no warm-up: the first step already moves the weights
    weight_decay: float = 0.01
    seed: int = 3
    schedule: str = "warmup_linear"
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-6
    global_grad_clip: float | None = None
    lr_groups: tuple = ()
    metric: str = "sumr"


class Regression(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(ITEMS, DIM, generator=g)
        self.y = torch.randn(ITEMS, 2, generator=g)

    def __len__(self) -> int:
        return ITEMS

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


def collate(items: list[dict]) -> dict:
    return {"x": torch.stack([i["x"] for i in items]), "y": torch.stack([i["y"] for i in items])}


class TinyRegressor(nn.Module):
    """Loss = mean over the batch of a per-item loss, so the mean of equal-size shard means is the global
    mean, and DDP's averaged gradient equals the single-process gradient on the global batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.hidden = nn.Linear(DIM, 4)
        self.norm = nn.LayerNorm(4)
        self.out = nn.Linear(4, 2)

    def forward_items(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.norm(self.hidden(x))))

    def loss(self, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        per_item = (self.forward_items(batch["x"]) - batch["y"]).pow(2).sum(dim=1)  # [B]
        return per_item.mean(), {}


def main(out_dir: str) -> None:
    from prvr_export.train import distributed
    from prvr_export.train.loop import fit

    info = distributed.init_distributed()
    assert info.world_size == 2, info
    model = TinyRegressor()
    fit(
        model,
        Config(),
        Regression(),
        collate,
        lambda m: {"SumR": 0.0},
        Path(out_dir) / "run",
        progress=False,
        device="cpu",
    )
    torch.save(model.state_dict(), Path(out_dir) / f"rank{info.rank}.pt")
    distributed.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
