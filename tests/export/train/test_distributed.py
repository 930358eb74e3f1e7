"""Tests for export/prvr_export/train/distributed.py: two gloo processes under torchrun train a tiny model
for 3 steps; both ranks end with identical weights, equal to one process stepping on the global batches."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from prvr_export.train.distributed import DistInfo, per_rank_batch
from prvr_export.train.optim import build_optimizer, build_scheduler
from prvr_sdk.errors import InvalidInputError

WORKER = Path(__file__).with_name("ddp_worker.py")


def _load_worker():
    name = "prvr_tests_ddp_worker"
    if name not in sys.modules:  # dataclasses look their module up in sys.modules
        spec = importlib.util.spec_from_file_location(name, WORKER)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _single_process_reference(worker, ranks: tuple[int, ...] = (0, 1)) -> dict[str, torch.Tensor]:
    """The same 3 steps in one process: at step s the global batch is the union of the ranks' shards."""
    config = worker.Config()
    data = worker.Regression()
    model = worker.TinyRegressor()
    optimizer = build_optimizer(model, config)
    per_rank = per_rank_batch(config.batch_size, DistInfo(world_size=2))
    shards = []
    for rank in range(2):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=config.seed)
        sampler.set_epoch(0)
        shards.append(list(sampler))
    steps = len(shards[0]) // per_rank
    scheduler = build_scheduler(optimizer, config.schedule, steps, config.lr_warmup_proportion)
    for s in range(steps):
        idx = [i for r in ranks for i in shards[r][s * per_rank : (s + 1) * per_rank]]
        batch = worker.collate([data[i] for i in idx])
        loss, _ = model.loss(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    assert steps == 3
    return model.state_dict()


@pytest.mark.timeout(120)
def test_two_ranks_match_each_other_and_a_single_process(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(WORKER), str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"ranks disagree on {key}"
    reference = _single_process_reference(_load_worker())
    initial = _load_worker().TinyRegressor().state_dict()
    for key in reference:
        torch.testing.assert_close(rank0[key], reference[key], rtol=0, atol=1e-5, msg=key)
    assert any(not torch.equal(rank0[k], initial[k]) for k in initial)  # training moved the weights
    # and the comparison can tell: rank 0's shard alone gives other weights
    shard_only = _single_process_reference(_load_worker(), ranks=(0,))
    assert any((rank0[k] - shard_only[k]).abs().max() > 1e-3 for k in shard_only)
    # rank 0 alone wrote the run directory
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "metrics.jsonl").is_file()


def test_global_batch_must_split_evenly() -> None:
    assert per_rank_batch(8, DistInfo(world_size=2)) == 4
    with pytest.raises(InvalidInputError, match="does not split evenly over 3"):
        per_rank_batch(8, DistInfo(world_size=3))
