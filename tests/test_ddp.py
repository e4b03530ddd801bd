"""Two-process gloo DDP through the engine: a few steps on different shards keep the replicas identical."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    # torchrun's environment, set by hand.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    from _fakes import FakeLoader, tiny_model

    from mgm.config import OptimConfig, TrainConfig
    from mgm.engine import fit, setup_distributed

    dist = setup_distributed("auto")
    model = tiny_model(seed=rank)  # different inits: DDP must broadcast rank 0's weights
    loader = FakeLoader(8, 2, rank=rank, world_size=world)
    optim = OptimConfig(base_lr=0.1, warmup_epochs=0)
    train = TrainConfig(out_dir=out, epochs=1, ckpt_every=1000, device="cpu", progress=False, tensorboard=False)
    summary = fit(model, loader, optim, train, batch_size=loader.batch_size, dist=dist, log=lambda _m: None)
    torch.save({"state": model.state_dict(), "summary": summary}, Path(out) / f"rank{rank}.pt")
    tdist.destroy_process_group()


def test_two_process_gloo_ddp_keeps_replicas_identical(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["summary"]["steps"] == r1["summary"]["steps"] == 2
    assert r0["summary"]["last_loss"] == r1["summary"]["last_loss"]  # all-reduced
    for name, a in r0["state"].items():
        assert torch.equal(a, r1["state"][name]), name
    from _fakes import tiny_model

    init = tiny_model(seed=0).state_dict()
    assert not torch.equal(init["head.weight"], r0["state"]["head.weight"])  # training did move the weights
