"""NVML sampling for the profiling hook: GPU utilization, memory, power and NVDEC utilization in a background thread."""

from __future__ import annotations

import contextlib
import threading
from typing import Any


class GpuSampler:
    """Background NVML sampler: utilization, memory, power and NVDEC utilization, averaged per interval."""

    FIELDS = ("gpu_util", "mem_util", "mem_used_mb", "power_w", "dec_util")

    def __init__(self, index: int, period_s: float) -> None:
        import pynvml  # nvidia-ml-py

        self._nv = pynvml
        pynvml.nvmlInit()
        self._h = self._handle(index)
        self.name = pynvml.nvmlDeviceGetName(self._h)
        self._lock = threading.Lock()
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._sample()  # fail here, in the constructor, rather than silently in the thread
        self._thread = threading.Thread(target=self._run, args=(period_s,), name="nvml-sampler", daemon=True)
        self._thread.start()

    def _handle(self, index: int) -> Any:
        # NVML numbers GPUs ignoring CUDA_VISIBLE_DEVICES; match torch's device by PCI bus id when possible.
        try:
            import torch

            p = torch.cuda.get_device_properties(index)
            bus = f"{p.pci_domain_id:08x}:{p.pci_bus_id:02x}:{p.pci_device_id:02x}.0"
            return self._nv.nvmlDeviceGetHandleByPciBusId(bus)
        except Exception:
            return self._nv.nvmlDeviceGetHandleByIndex(index)

    def _sample(self) -> None:
        nv, h, vals = self._nv, self._h, {}
        readers = {
            "gpu_util": lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu,
            "mem_util": lambda: nv.nvmlDeviceGetUtilizationRates(h).memory,
            "mem_used_mb": lambda: nv.nvmlDeviceGetMemoryInfo(h).used / 2**20,
            "power_w": lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
            "dec_util": lambda: nv.nvmlDeviceGetDecoderUtilization(h)[0],
        }
        for k, read in readers.items():
            with contextlib.suppress(Exception):  # a metric a board does not support is simply absent
                vals[k] = float(read())
        with self._lock:
            for k, v in vals.items():
                self._sums[k] = self._sums.get(k, 0.0) + v
                self._counts[k] = self._counts.get(k, 0) + 1

    def _run(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            self._sample()

    def take(self) -> dict[str, float]:
        """Averages since the last call (a fresh sample is added so short intervals are never empty)."""
        self._sample()
        with self._lock:
            out = {k: self._sums[k] / self._counts[k] for k in self._sums}
            self._sums, self._counts = {}, {}
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        with contextlib.suppress(Exception):
            self._nv.nvmlShutdown()
