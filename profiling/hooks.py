"""The one profiling hook object: the engine, train.py and the bench scripts time through it, never inline.

Loop shape it expects (the engine's)::

    for _ in range(steps):
        with hook.wait():                      # time blocked on the loader = data wait
            batch = next(it)
        with hook.step(clips=B, frames=B * T, tokens=B * N, mask_seconds=float(batch["mask_time"].sum())):
            with hook.phase("forward"): ...    # NVTX range on CUDA; host time on CPU
            with hook.phase("backward"): ...
            with hook.phase("optimizer"): ...
    summary = hook.close()                     # prints the breakdown table and the verdict

Shares are of *wall* time, one iteration's wall being the time from the end of the previous step to the end of
this one (so logging/checkpoint time lands in "other"). Mask time is worker time carried with the batch: it
runs in parallel with the main loop, so its share says how much worker time masks cost per wall second.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiling.gpu_sampler import GpuSampler
from profiling.report_format import format_table, machine_info

_now = time.perf_counter  # one clock for every timing here (tests swap it for a fake one)

# Data wait above this share of wall time makes the run input-bound.
INPUT_BOUND_SHARE = 0.10

_nvml_warned = False  # say "no NVML" once per process, not once per hook (benches build many hooks)


def _note_once(msg: str) -> None:
    global _nvml_warned
    if not _nvml_warned:
        print(f"[profiling] {msg}", file=sys.stderr, flush=True)
        _nvml_warned = True


@dataclass
class _Acc:
    """Running sums over a span of steps."""

    steps: int = 0
    wall_s: float = 0.0
    wait_s: float = 0.0
    step_s: float = 0.0
    mask_s: float = 0.0
    clips: int = 0
    frames: int = 0
    tokens: int = 0
    phases: dict[str, float] = field(default_factory=dict)

    def add(self, o: _Acc) -> None:
        for k in ("steps", "wall_s", "wait_s", "step_s", "mask_s", "clips", "frames", "tokens"):
            setattr(self, k, getattr(self, k) + getattr(o, k))
        for k, v in o.phases.items():
            self.phases[k] = self.phases.get(k, 0.0) + v

    def rates(self) -> dict[str, float]:
        w = max(self.wall_s, 1e-12)
        other = max(self.wall_s - self.wait_s - self.step_s, 0.0)
        return {
            "steps": self.steps,
            "wall_s": self.wall_s,
            "data_wait_s": self.wait_s,
            "step_s": self.step_s,
            "mask_s": self.mask_s,
            "other_s": other,
            "data_wait_share": self.wait_s / w,
            "compute_share": self.step_s / w,
            "mask_share": self.mask_s / w,
            "other_share": other / w,
            "clips_per_s": self.clips / w,
            "frames_per_s": self.frames / w,
            "tokens_per_s": self.tokens / w,
            "step_ms": 1000.0 * self.step_s / max(self.steps, 1),
        }


def verdict(data_wait_share: float, compute_share: float, wall_s: float, wait_s: float) -> tuple[str, float]:
    """(text, speedup) where speedup = how much faster the run would be with an instant loader."""
    speedup = wall_s / max(wall_s - wait_s, 1e-12)
    if data_wait_share > INPUT_BOUND_SHARE:
        text = (
            f"INPUT-BOUND: the step waits for data {100 * data_wait_share:.0f}% of wall time "
            f"(compute {100 * compute_share:.0f}%); an instant loader would make the run {speedup:.2f}x faster"
        )
    else:
        text = (
            f"COMPUTE-BOUND: compute takes {100 * compute_share:.0f}% of wall time, data wait only "
            f"{100 * data_wait_share:.1f}%; a faster loader would gain at most {speedup:.2f}x"
        )
    return text, speedup


class ProfileHook:
    """Times data wait, step compute and worker mask time; NVML, NVTX, a torch.profiler window, JSONL records.

    Args:
        out_dir: where `profile.jsonl` and the Chrome trace go (None = no files, table only).
        interval: steps per JSONL record (and per NVML average).
        device: "cpu" or "cuda[:i]"; on CUDA the step time comes from CUDA events (GPU time), on CPU from the clock.
        nvml / nvtx: turn the GPU sampler / NVTX ranges off. Without a GPU or driver NVML says so once.
        trace_steps: (a, b) traces steps a..b-1 (half-open) with torch.profiler into
            out_dir/trace_steps{a}-{b}.json; b <= a (e.g. (0, 0)) = off.
        warmup: first steps left out of the summary (loader start-up, compilation); still in the JSONL.
        name: label for the table and records.
    """

    def __init__(
        self,
        *,
        out_dir: str | Path | None = None,
        interval: int = 50,
        device: str = "cpu",
        nvml: bool = True,
        nvtx: bool = True,
        trace_steps: tuple[int, int] | list[int] = (0, 0),
        warmup: int = 1,
        name: str = "train",
        nvml_period_s: float = 0.5,
        verbose: bool = True,
    ) -> None:
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.interval = max(int(interval), 1)
        self.device = str(device)
        self.cuda = self.device.startswith("cuda")
        self.warmup = max(int(warmup), 0)
        self.name = name
        self.verbose = verbose
        a, b = (int(x) for x in trace_steps)
        self.trace_window = (a, b) if b > a else None
        if self.trace_window and self.out_dir is None:
            raise ValueError(f"ProfileHook: trace_steps={list(trace_steps)} needs an out_dir to write the trace")
        self.trace_path: Path | None = None
        self.gpu_note = ""
        self._gpu: GpuSampler | None = None
        if nvml:
            idx = int(self.device.split(":")[1]) if ":" in self.device else 0
            try:
                self._gpu = GpuSampler(idx, nvml_period_s)
            except Exception as e:  # no driver / no GPU / no pynvml: GPU metrics off, profiling goes on
                self.gpu_note = f"NVML unavailable ({type(e).__name__}: {e}); GPU util/memory/power/NVDEC not recorded"
                _note_once(self.gpu_note)
        self._nvtx = None
        if nvtx and self.cuda:
            import torch

            self._nvtx = torch.cuda.nvtx
        self._jsonl = None
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.out_dir / "profile.jsonl", "a")  # noqa: SIM115 (lives as long as the hook)
        self.records: list[dict[str, Any]] = []
        self._steps = 0  # finished steps
        self._t_last: float | None = None  # end of the previous step (or first entry)
        self._cur = _Acc()  # current interval, host-side
        self._cur_events: list[tuple[Any, Any]] = []
        self._cur_first = 0
        self._pending_wait = 0.0
        self._total = _Acc()  # steady state (after warmup)
        self._all = _Acc()
        self._gpu_sums: dict[str, list[float]] = {}
        self._prof = None
        self._closed = False
        self._summary: dict[str, Any] | None = None

    # ---- the Hook API -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def wait(self) -> Iterator[None]:
        """Around fetching the next batch: the time spent inside counts as data wait for the next step."""
        self._begin_iteration()
        t0 = _now()
        with self._range("data_wait"):
            yield
        self._pending_wait += _now() - t0

    @contextlib.contextmanager
    def step(self, *, clips: int, frames: int, tokens: int, mask_seconds: float) -> Iterator[None]:
        """Around one optimizer step (forward + backward + optimizer) on a batch of `clips` clips holding
        `frames` frames and `tokens` tokens; `mask_seconds` = worker time spent making that batch's masks."""
        self._begin_iteration()
        ev = None
        if self.cuda:
            import torch

            ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            ev[0].record()
        t0 = _now()
        with self._range("step"):
            yield
        if ev is not None:
            ev[1].record()
        t1 = _now()
        c = self._cur
        c.steps += 1
        c.wall_s += t1 - (self._t_last if self._t_last is not None else t0)
        c.wait_s += self._pending_wait
        c.step_s += t1 - t0  # replaced by the CUDA event time at flush on GPU
        c.mask_s += float(mask_seconds)
        c.clips += int(clips)
        c.frames += int(frames)
        c.tokens += int(tokens)
        if ev is not None:
            self._cur_events.append(ev)
        self._pending_wait = 0.0
        self._t_last = t1
        self._steps += 1
        # Flush at the warmup boundary too, so warmup steps never mix into a steady-state record.
        if c.steps >= self.interval or self._steps == self.warmup:
            self._flush()
        if self.trace_window and self._prof is not None and self._steps >= self.trace_window[1]:
            self._stop_trace()
            self._t_last = _now()  # nor is writing the trace

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """A named part of a step ("forward", "backward", "optimizer", "decode", "mask"): an NVTX range on
        CUDA, a torch.profiler label inside the trace window, and host time on CPU (where it is real time)."""
        t0 = _now()
        with self._range(name):
            yield
        if not self.cuda:  # GPU work is asynchronous: host time of a phase would mislead there
            ph = self._cur.phases
            ph[name] = ph.get(name, 0.0) + _now() - t0

    def close(self) -> dict[str, Any]:
        """Flush, stop the trace and the sampler, print the breakdown + verdict; returns the summary dict."""
        if self._closed:
            return self._summary or {}
        self._closed = True
        if self._cur.steps:
            self._flush()
        if self._prof is not None:
            self._stop_trace()
        if self._gpu is not None:
            self._gpu.close()
        self._summary = self.summary()
        self._write({"type": "summary", **self._summary})
        if self._jsonl is not None:
            self._jsonl.close()
        if self.verbose:
            print(self.format_summary(self._summary), flush=True)
        return self._summary

    # ---- results ------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Steady-state totals (after `warmup` steps; all steps when there were no more than that)."""
        acc = self._total if self._total.steps else self._all
        out: dict[str, Any] = {"name": self.name, **acc.rates()}
        out["warmup_steps"] = self._all.steps - acc.steps
        out["warmup_wall_s"] = self._all.wall_s - acc.wall_s
        out["phases_s"] = dict(acc.phases)
        out["step_time_source"] = "cuda_events" if self.cuda else "wall_clock"
        text, speedup = verdict(out["data_wait_share"], out["compute_share"], out["wall_s"], out["data_wait_s"])
        out["input_bound"] = out["data_wait_share"] > INPUT_BOUND_SHARE
        out["speedup_if_input_free"] = speedup
        out["verdict"] = text
        out["gpu"] = {k: sum(v) / len(v) for k, v in self._gpu_sums.items()} or None
        out["gpu_note"] = self.gpu_note or None
        out["trace"] = str(self.trace_path) if self.trace_path else None
        out["trace_steps"] = list(self.trace_window) if self.trace_path else None
        return out

    @staticmethod
    def format_summary(s: dict[str, Any]) -> str:
        """The breakdown table (seconds, share of wall, ms per step) followed by throughput and verdict."""
        n = max(s["steps"], 1)
        rows = [
            {"part": "data wait", "seconds": s["data_wait_s"], "share_%": 100 * s["data_wait_share"]},
            {"part": "compute (step)", "seconds": s["step_s"], "share_%": 100 * s["compute_share"]},
            {"part": "other (loop)", "seconds": s["other_s"], "share_%": 100 * s["other_share"]},
            {"part": "mask (in workers)", "seconds": s["mask_s"], "share_%": 100 * s["mask_share"]},
            {"part": "wall", "seconds": s["wall_s"], "share_%": 100.0},
        ]
        for k, v in sorted(s.get("phases_s", {}).items()):
            rows.append({"part": f"  phase {k}", "seconds": v, "share_%": 100 * v / max(s["wall_s"], 1e-12)})
        for r in rows:
            r["ms_per_step"] = 1000 * r["seconds"] / n
        title = f"== profile {s['name']}: {s['steps']} steps (+{s['warmup_steps']} warmup left out)"
        lines = [format_table(rows, title=title)]
        lines.append(
            f"throughput: {s['clips_per_s']:.3g} clips/s, {s['frames_per_s']:.3g} frames/s, "
            f"{s['tokens_per_s']:.3g} tokens/s; step {s['step_ms']:.1f} ms ({s['step_time_source']})"
        )
        if s.get("gpu"):
            lines.append("gpu: " + ", ".join(f"{k}={v:.1f}" for k, v in s["gpu"].items()))
        elif s.get("gpu_note"):
            lines.append(f"gpu: {s['gpu_note']}")
        lines.append("mask share = worker seconds spent on masks per wall second (runs beside the loop)")
        if s["step_time_source"] == "wall_clock":
            lines.append("note: on CPU the loader's workers share the cores with the step; step time includes that")
        lines.append(f"verdict: {s['verdict']}")
        return "\n".join(lines)

    # ---- internals ----------------------------------------------------------------------------------------
    def _begin_iteration(self) -> None:
        if self._t_last is None:
            self._t_last = _now()
        tw = self.trace_window
        if tw and self._prof is None and self.trace_path is None and self._steps == tw[0]:
            t0 = _now()
            self._start_trace()
            self._t_last += _now() - t0  # profiler start-up (seconds) is not the run's time

    @contextlib.contextmanager
    def _range(self, name: str) -> Iterator[None]:
        if self._nvtx is not None:
            self._nvtx.range_push(name)
        try:
            if self._prof is not None:
                import torch

                with torch.profiler.record_function(name):
                    yield
            else:
                yield
        finally:
            if self._nvtx is not None:
                self._nvtx.range_pop()

    def _flush(self) -> None:
        c = self._cur
        if self._cur_events:
            # One sync per interval, not per step: the events were recorded without blocking.
            self._cur_events[-1][1].synchronize()
            c.step_s = sum(a.elapsed_time(b) for a, b in self._cur_events) / 1000.0
        rec: dict[str, Any] = {"type": "interval", "name": self.name, "first_step": self._cur_first}
        rec["last_step"] = self._cur_first + c.steps - 1
        rec["warmup"] = self._steps <= self.warmup
        rec.update(c.rates())
        rec["phases_s"] = dict(c.phases)
        if self._gpu is not None:
            g = self._gpu.take()
            rec["gpu"] = g
            if not rec["warmup"]:
                for k, v in g.items():
                    self._gpu_sums.setdefault(k, []).append(v)
        rec["t"] = time.time()
        self.records.append(rec)
        self._write(rec)
        self._all.add(c)
        if not rec["warmup"]:
            self._total.add(c)
        self._cur, self._cur_events, self._cur_first = _Acc(), [], self._steps

    def _write(self, rec: dict[str, Any]) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(rec) + "\n")
            self._jsonl.flush()

    def _start_trace(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self._prof = profile(activities=acts, record_shapes=False, with_stack=False)
        self._prof.start()

    def _stop_trace(self) -> None:
        assert self._prof is not None and self.out_dir is not None and self.trace_window is not None
        self._prof.stop()
        a, b = self.trace_window
        self.trace_path = self.out_dir / f"trace_steps{a}-{b}.json"
        self._prof.export_chrome_trace(str(self.trace_path))
        self._prof = None
        if self.verbose:
            print(f"[profiling] chrome trace of steps {a}..{b - 1}: {self.trace_path}", file=sys.stderr, flush=True)


def hook_from_config(cfg: Any, out_dir: str | Path | None, device: str, name: str = "train") -> ProfileHook | None:
    """Build the hook from a Config's `profiling` section (duck-typed); None when profiling.enabled is False."""
    p = cfg.profiling
    if not p.enabled:
        return None
    return ProfileHook(
        out_dir=out_dir,
        interval=p.interval,
        device=device,
        nvml=p.nvml,
        nvtx=p.nvtx,
        trace_steps=tuple(p.trace_steps),
        name=name,
    )


__all__ = ["ProfileHook", "hook_from_config", "verdict", "INPUT_BOUND_SHARE", "machine_info"]
