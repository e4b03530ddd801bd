"""ProfileHook: planted data-wait shares come back, NVML absent/mocked, the trace window, the JSONL records."""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path

import pytest

from profiling import hooks
from profiling.hooks import ProfileHook, hook_from_config, verdict


class Planted:
    """Sleeps a known time and keeps the time it really slept (a loaded 2-core box oversleeps by a few ms)."""

    def __init__(self) -> None:
        self.slept = 0.0

    def sleep(self, seconds: float) -> None:
        t0 = time.perf_counter()
        time.sleep(seconds)
        self.slept += time.perf_counter() - t0


class SleepyLoader:
    """Fake loader: each batch takes `seconds` to arrive."""

    def __init__(self, seconds: float, n: int) -> None:
        self.seconds, self.n, self.clock = seconds, n, Planted()

    def __iter__(self):
        for i in range(self.n):
            if self.seconds > 0:  # 0 = an instant loader (sleep(0) still yields the CPU to a busy neighbour)
                self.clock.sleep(self.seconds)
            yield {"index": i, "mask_time": 0.002}


def run_loop(hook: ProfileHook, wait_s: float, step_s: float, steps: int, work=None) -> tuple[dict, float]:
    """Runs the engine's loop shape with a fake loader and a fake step; returns (summary, planted wait share)."""
    loader, compute = SleepyLoader(wait_s, steps), Planted()
    it = iter(loader)
    for _ in range(steps):
        with hook.wait():
            batch = next(it)
        with hook.step(clips=4, frames=64, tokens=4 * 1568, mask_seconds=batch["mask_time"]):
            with hook.phase("forward"):
                compute.sleep(step_s * 0.7)
                if work is not None:
                    work()
            with hook.phase("backward"):
                compute.sleep(step_s * 0.3)
    planted = loader.clock.slept / (loader.clock.slept + compute.slept)
    return hook.close(), planted


@pytest.mark.parametrize("wait_s,step_s", [(0.04, 0.06), (0.06, 0.03)])
def test_data_wait_share_matches_planted(wait_s: float, step_s: float) -> None:
    hook = ProfileHook(interval=3, nvml=False, warmup=0, verbose=False)
    s, planted = run_loop(hook, wait_s, step_s, steps=6)
    assert planted == pytest.approx(wait_s / (wait_s + step_s), abs=0.15)  # the fakes did sleep as asked
    assert s["data_wait_share"] == pytest.approx(planted, rel=0.10)
    assert s["compute_share"] == pytest.approx(1 - planted, rel=0.10)
    assert s["other_share"] < 0.10
    assert s["steps"] == 6
    assert s["input_bound"] is True
    assert s["speedup_if_input_free"] == pytest.approx(1 / (1 - planted), rel=0.15)
    assert s["clips_per_s"] == pytest.approx(4 / (wait_s + step_s), rel=0.3)
    assert s["tokens_per_s"] == pytest.approx(s["clips_per_s"] * 1568, rel=1e-6)
    assert s["mask_s"] == pytest.approx(6 * 0.002)
    assert set(s["phases_s"]) == {"forward", "backward"}
    assert "INPUT-BOUND" in s["verdict"]


def test_compute_bound_when_loader_is_instant() -> None:
    hook = ProfileHook(nvml=False, warmup=1, verbose=False)
    s, planted = run_loop(hook, 0.0, 0.03, steps=4)
    assert planted == 0.0
    assert s["steps"] == 3 and s["warmup_steps"] == 1
    assert s["data_wait_share"] < 0.05
    assert s["input_bound"] is False
    assert "COMPUTE-BOUND" in s["verdict"]


def test_verdict_text_and_speedup() -> None:
    text, speedup = verdict(0.5, 0.5, wall_s=10.0, wait_s=5.0)
    assert speedup == pytest.approx(2.0)
    assert "INPUT-BOUND" in text and "2.00x" in text
    text, speedup = verdict(0.02, 0.97, wall_s=10.0, wait_s=0.2)
    assert "COMPUTE-BOUND" in text and speedup == pytest.approx(10 / 9.8)


def test_nvml_absent_said_once_and_run_goes_on(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    broken = types.ModuleType("pynvml")

    def fail() -> None:
        raise RuntimeError("driver not loaded")

    broken.nvmlInit = fail
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    monkeypatch.setattr(hooks, "_nvml_warned", False)
    h1 = ProfileHook(nvml=True, verbose=False)
    h2 = ProfileHook(nvml=True, verbose=False)
    err = capsys.readouterr().err
    assert err.count("NVML unavailable") == 1 and "driver not loaded" in err
    assert "driver not loaded" in h2.gpu_note
    s, _ = run_loop(h1, 0.0, 0.001, steps=2)
    assert s["gpu"] is None and "NVML unavailable" in s["gpu_note"]
    assert "NVML unavailable" in ProfileHook.format_summary(s)


def test_nvml_absent_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pynvml")
    try:
        import pynvml

        pynvml.nvmlInit()
        pytest.skip("a driver with NVML is present here")
    except pynvml.NVMLError:
        pass
    monkeypatch.setattr(hooks, "_nvml_warned", False)
    s, _ = run_loop(ProfileHook(nvml=True, verbose=False), 0.0, 0.001, steps=2)
    assert s["gpu"] is None and s["gpu_note"]


def fake_pynvml() -> types.ModuleType:
    """An NVML that always reports 50% util, 1 GiB used, 100 W and 30% decoder (NVDEC) load."""
    m = types.ModuleType("pynvml")
    m.nvmlInit = lambda: None
    m.nvmlShutdown = lambda: None
    m.nvmlDeviceGetHandleByIndex = lambda i: ("gpu", i)
    m.nvmlDeviceGetHandleByPciBusId = lambda b: ("gpu", b)
    m.nvmlDeviceGetName = lambda h: "Fake GPU"
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=50, memory=20)
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=2**30, total=2**34)
    m.nvmlDeviceGetPowerUsage = lambda h: 100_000
    m.nvmlDeviceGetDecoderUtilization = lambda h: [30, 167000]
    return m


def test_nvml_metrics_recorded_per_interval(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    hook = ProfileHook(out_dir=tmp_path, interval=2, nvml=True, warmup=0, verbose=False, nvml_period_s=0.01)
    s, _ = run_loop(hook, 0.0, 0.01, steps=4)
    assert s["gpu_note"] is None
    assert s["gpu"] == pytest.approx(
        {"gpu_util": 50.0, "mem_util": 20.0, "mem_used_mb": 1024.0, "power_w": 100.0, "dec_util": 30.0}
    )
    intervals = [r for r in hook.records if r["type"] == "interval"]
    assert len(intervals) == 2 and all(r["gpu"]["dec_util"] == 30.0 for r in intervals)


def test_trace_written_for_window(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    x = torch.randn(64, 64)
    hook = ProfileHook(out_dir=tmp_path, trace_steps=(1, 3), nvml=False, verbose=False)
    s, _ = run_loop(hook, 0.001, 0.002, steps=5, work=lambda: x @ x)
    path = tmp_path / "trace_steps1-3.json"
    assert s["trace"] == str(path) and path.exists() and s["trace_steps"] == [1, 3]
    events = json.loads(path.read_text())["traceEvents"]
    names = [e.get("name") for e in events]
    assert names.count("step") == 2  # steps 1 and 2 only
    assert "forward" in names and "data_wait" in names
    assert any("mm" in (n or "") for n in names)  # the matmul inside the step was recorded


def test_trace_needs_out_dir() -> None:
    with pytest.raises(ValueError, match="out_dir"):
        ProfileHook(trace_steps=(2, 4), nvml=False)


def test_jsonl_parses(tmp_path: Path) -> None:
    hook = ProfileHook(out_dir=tmp_path, interval=2, warmup=1, nvml=False, verbose=False, name="demo")
    run_loop(hook, 0.001, 0.002, steps=5)
    lines = (tmp_path / "profile.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert [r["type"] for r in recs] == ["interval"] * 3 + ["summary"]
    assert [(r["first_step"], r["last_step"], r["warmup"]) for r in recs[:3]] == [
        (0, 0, True),
        (1, 2, False),
        (3, 4, False),
    ]
    assert sum(r["steps"] for r in recs[:3]) == 5
    summary = recs[-1]
    assert summary["steps"] == 4 and summary["warmup_steps"] == 1 and summary["name"] == "demo"
    assert summary["wall_s"] == pytest.approx(recs[1]["wall_s"] + recs[2]["wall_s"])
    assert 0.0 <= summary["data_wait_share"] <= 1.0


def test_close_is_idempotent_and_prints(capsys) -> None:
    hook = ProfileHook(nvml=False)
    run_loop(hook, 0.0, 0.001, steps=2)
    out = capsys.readouterr().out
    assert "data wait" in out and "verdict:" in out
    assert hook.close()["steps"] == 1


def test_hook_from_config() -> None:
    ns = types.SimpleNamespace
    cfg = ns(profiling=ns(enabled=True, nvml=False, nvtx=True, trace_steps=[0, 0], interval=7))
    hook = hook_from_config(cfg, out_dir=None, device="cpu")
    assert isinstance(hook, ProfileHook) and hook.interval == 7 and hook.trace_window is None
    cfg.profiling.enabled = False
    assert hook_from_config(cfg, out_dir=None, device="cpu") is None


@pytest.mark.gpu
def test_cuda_events_nvml_and_nvtx(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    x = torch.randn(2048, 2048, device="cuda")
    hook = ProfileHook(out_dir=tmp_path, device="cuda", interval=2, warmup=1, trace_steps=(2, 3), verbose=False)
    s, _ = run_loop(hook, 0.01, 0.0, steps=5, work=lambda: [x @ x for _ in range(20)])
    assert s["step_time_source"] == "cuda_events" and s["step_s"] > 0
    assert s["gpu"] is not None and "gpu_util" in s["gpu"] and "mem_used_mb" in s["gpu"], s["gpu_note"]
    assert (tmp_path / "trace_steps2-3.json").exists()
