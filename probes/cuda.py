"""GPU memory: the torch caching allocator's view, and NVML's per-process view.

The agent never imports torch and never initialises CUDA: ``CudaProbe`` looks for a torch the
host already imported (``sys.modules``) and reads ``torch.cuda.memory_stats`` only once
``torch.cuda.is_initialized()`` is true. Until then it says why it waits. ``NvmlProbe`` uses
nvidia-ml-py when it is installed; NVML reads driver state and creates no CUDA context.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from diag.model import Sample, labels_of
from probes.base import ProbeUnavailable

if TYPE_CHECKING:
    from probes.agent import ProbeHooks

#: torch.cuda.memory_stats keys → metric names. The keys are the allocator's documented ones.
MEMORY_STATS_KEYS = {
    "allocated_bytes.all.current": "cuda_allocated_bytes",
    "reserved_bytes.all.current": "cuda_reserved_bytes",
    "allocated_bytes.all.peak": "cuda_allocated_peak_bytes",
    "inactive_split_bytes.all.current": "cuda_inactive_split_bytes",
    "num_alloc_retries": "cuda_alloc_retries_total",
    "num_ooms": "cuda_ooms_total",
}


def _host_torch_cuda() -> Any:
    torch = sys.modules.get("torch")
    return getattr(torch, "cuda", None) if torch is not None else None


def _torch_oom_attach() -> Callable[[Callable[..., None]], None] | None:
    """torch's CUDA out-of-memory observer hook, where this torch offers one."""
    torch = sys.modules.get("torch")
    return getattr(getattr(torch, "_C", None), "_cuda_attach_out_of_memory_observer", None)


OomListener = Callable[[dict[str, Any]], None]


class CudaProbe:
    name = "cuda"

    def __init__(
        self,
        cuda: Callable[[], Any] = _host_torch_cuda,
        *,
        on_oom: OomListener | None = None,
        oom_attach: Callable[[], Callable[[Callable[..., None]], None] | None] = _torch_oom_attach,
    ) -> None:
        # ``cuda`` returns the host's ``torch.cuda`` module (or a fake shaped like it), or None.
        self._cuda = cuda
        self._totals: dict[int, int] = {}
        self.on_oom = on_oom
        self._oom_attach = oom_attach
        self._observing = False

    def use_hooks(self, hooks: ProbeHooks) -> None:
        """Built by the user and given to an agent: unless told where OOMs go, record them
        in the agent's history (when it keeps one)."""
        if self.on_oom is None:
            self.on_oom = hooks.cuda_oom

    def sample(self) -> list[Sample]:
        cuda = self._cuda()
        if cuda is None:
            raise ProbeUnavailable("torch is not imported by the host")
        if not cuda.is_initialized():
            raise ProbeUnavailable("CUDA is not initialised by the host (diag never does it)")
        if self.on_oom is not None and not self._observing:
            self._observe_ooms(cuda)
        out: list[Sample] = []
        for device in range(cuda.device_count()):
            labels = labels_of(device=str(device))
            stats = cuda.memory_stats(device)
            for key, name in MEMORY_STATS_KEYS.items():
                if key in stats:
                    out.append(Sample(name, float(stats[key]), labels))
            if device not in self._totals:
                self._totals[device] = int(cuda.get_device_properties(device).total_memory)
            out.append(Sample("cuda_total_bytes", float(self._totals[device]), labels))
        return out

    def _observe_ooms(self, cuda: Any) -> None:
        """Ask torch to call us when an allocation fails, before OutOfMemoryError propagates:
        the allocator's state is recorded while it still shows what filled the device."""
        attach = self._oom_attach()
        self._observing = True
        if attach is None:
            return
        listener = self.on_oom

        def observer(device: int, alloc: int, device_allocated: int, device_free: int) -> None:
            try:
                stats = cuda.memory_stats(device)
                record = {
                    "device": device,
                    "requested_bytes": alloc,
                    "device_allocated_bytes": device_allocated,
                    "device_free_bytes": device_free,
                    "allocator": {k: stats[k] for k in MEMORY_STATS_KEYS if k in stats},
                }
                if listener is not None:
                    listener(record)
            except Exception:  # the host is already failing; never add our own error to it
                pass

        attach(observer)


def _import_pynvml() -> Any:
    import pynvml

    return pynvml


class NvmlProbe:
    """Per-process and device-wide GPU memory through NVML (nvidia-ml-py), also for another pid."""

    name = "nvml"

    def __init__(self, pid: int | None = None, nvml: Callable[[], Any] = _import_pynvml) -> None:
        self.pid = pid
        self._load = nvml
        self._nvml: Any = None
        self._handles: list[Any] = []

    def _init(self) -> Any:
        try:
            nvml = self._load()
        except ImportError as exc:
            raise ProbeUnavailable(
                "nvidia-ml-py is not installed (pip install 'diag[nvml]')", permanent=True
            ) from exc
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except nvml.NVMLError as exc:
            raise ProbeUnavailable(f"NVML unavailable: {exc}", permanent=True) from exc
        self._nvml = nvml
        return nvml

    def sample(self) -> list[Sample]:
        nvml = self._nvml or self._init()
        pid = self.pid or os.getpid()
        out: list[Sample] = []
        for index, handle in enumerate(self._handles):
            labels = labels_of(device=str(index))
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            out.append(Sample("gpu_total_bytes", float(memory.total), labels))
            out.append(Sample("gpu_used_bytes", float(memory.used), labels))
            used = 0
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                # usedGpuMemory is None where the driver hides it (some containers).
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    used += int(proc.usedGpuMemory)
            out.append(Sample("gpu_process_used_bytes", float(used), labels))
        return out

    def reset_after_fork(self) -> None:
        # NVML state does not survive fork safely; initialise again in the child.
        self._nvml = None
        self._handles = []
