"""model.compile under DDP (mgm.engine.wrap_model): the DDP wrapper is compiled, not the module inside it, so that
dynamo's DDPOptimizer cuts the graph at DDP's gradient buckets (each all-reduce overlaps the rest of the backward);
compiled and eager training agree. A one-process gloo group on the CPU: DDP's wrapping and buckets are real, the
all-reduce is trivial. The compiler backend is dynamo's "eager" (the captured graphs run as they are: seconds, not
the minutes inductor needs on two cores): what is checked here, the capture and DDP's cuts, happens before any
backend; inductor's numerics on a GPU are tests/test_model.py's and profiling/bench_step.py's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
from _fakes import RATIO, smooth_clip, tiny_model, tube_mask
from torch import nn

from mgm.engine import wrap_model

CPU = torch.device("cpu")


@pytest.fixture
def group(tmp_path: Path) -> Iterator[None]:
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    torch._dynamo.reset()
    try:
        yield
    finally:
        tdist.destroy_process_group()
        torch._dynamo.reset()


class Graphs:
    """A compiler backend that counts the graphs it is handed and runs them as captured."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.count += 1
        return gm.forward


@pytest.fixture
def graphs(monkeypatch: pytest.MonkeyPatch) -> Graphs:
    """Graphs compiled by the DDP wrapper's compile (wrap_model calls `net.compile()`)."""
    counter = Graphs()
    monkeypatch.setattr(
        nn.parallel.DistributedDataParallel, "compile", lambda self: nn.Module.compile(self, backend=counter)
    )
    return counter


def batch(model: nn.Module, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    video = torch.stack([smooth_clip(g), smooth_clip(g)])  # (2, 3, T, S, S)
    mask = torch.stack([tube_mask(model.grid, RATIO, g) for _ in range(2)])  # (2, N) True = masked
    return video, mask


def train(net: nn.Module, raw: nn.Module, steps: int = 3) -> list[float]:
    opt = torch.optim.AdamW(raw.parameters(), lr=1e-3)
    losses = []
    for step in range(steps):
        loss = net(*batch(raw, step))[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_single_process_keeps_the_model_compiled_in_place() -> None:
    raw = tiny_model(compile=True)
    assert wrap_model(raw, ddp=False, device=CPU) is raw and raw._compiled_call_impl is not None


def test_ddp_compiles_the_wrapper_cuts_at_buckets_and_trains_like_eager(group: None, graphs: Graphs) -> None:
    from torch._dynamo.utils import counters

    eager_raw, compiled_raw = tiny_model(), tiny_model(compile=True)  # the second compiles itself in place, lazily
    eager_net = wrap_model(eager_raw, ddp=True, device=CPU)
    net = wrap_model(compiled_raw, ddp=True, device=CPU)
    assert isinstance(net, nn.parallel.DistributedDataParallel) and net.module is compiled_raw
    assert compiled_raw._compiled_call_impl is None and net._compiled_call_impl is not None  # moved onto DDP
    assert eager_net._compiled_call_impl is None

    eager, compiled = train(eager_net, eager_raw), train(net, compiled_raw)
    traced = counters["stats"]["unique_graphs"]  # graphs dynamo captured (one per graph break)
    assert graphs.count > traced >= 1, (graphs.count, traced)  # DDPOptimizer cut them at DDP's buckets
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled_raw.head.weight, eager_raw.head.weight, rtol=1e-4, atol=1e-5)
    assert list(compiled_raw.state_dict()) == list(eager_raw.state_dict())  # checkpoints keep unprefixed keys
