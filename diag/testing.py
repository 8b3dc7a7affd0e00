"""Fakes shipped with the library so that tests (ours and users') drive diag without sleeping
and without hardware: a clock, a scripted probe, and a ``torch.cuda`` stand-in for machines
without a GPU. The CUDA fake has the real module's shape; ``tests/test_cuda_probe.py`` checks
that shape against the installed torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from diag.model import Sample

#: Python source for a child process that leaks at a rate its own code sets (tests and
#: benchmarks of the growth account): ``paced(step, per_second)`` calls ``step(i)``
#: ``per_second`` times a second while the process runs. It catches up on late wake-ups (a
#: busy machine), but not after a pause (a census holding the GIL), so that the rate over the
#: time it ran stays true.
PACED_CHILD_SOURCE = """
import time

def paced(step, per_second):
    due = time.monotonic()
    i = 0
    while True:
        i += 1
        step(i)
        due += 1 / per_second
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.25:
            due = time.monotonic()
"""


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class FakeProbe:
    """Returns scripted samples, or raises what ``fail_with`` returns for the current call."""

    def __init__(
        self,
        name: str = "fake",
        samples: Sequence[Sample] = (),
        fail_with: Callable[[int], BaseException | None] | None = None,
    ) -> None:
        self.name = name
        self.samples = list(samples)
        self.calls = 0
        self._fail_with = fail_with

    def sample(self) -> list[Sample]:
        self.calls += 1
        if self._fail_with is not None:
            error = self._fail_with(self.calls)
            if error is not None:
                raise error
        return list(self.samples)


def memory_stats_dict(
    allocated: int = 0,
    reserved: int = 0,
    peak: int = 0,
    inactive_split: int = 0,
    retries: int = 0,
    ooms: int = 0,
) -> dict[str, int]:
    """A ``torch.cuda.memory_stats(device)`` result with the allocator's real key names."""
    stats: dict[str, int] = {}
    for pool in ("all", "large_pool", "small_pool"):
        share = 1 if pool == "all" else 0
        for stat, current in (
            ("allocated_bytes", allocated),
            ("reserved_bytes", reserved),
            ("active_bytes", allocated),
            ("inactive_split_bytes", inactive_split),
            ("requested_bytes", allocated),
        ):
            stats[f"{stat}.{pool}.current"] = current * share
            stats[f"{stat}.{pool}.peak"] = (peak if stat == "allocated_bytes" else current) * share
            stats[f"{stat}.{pool}.allocated"] = current * share
            stats[f"{stat}.{pool}.freed"] = 0
    stats.update(
        {
            "num_alloc_retries": retries,
            "num_ooms": ooms,
            "num_sync_all_streams": 0,
            "num_device_alloc": 0,
            "num_device_free": 0,
            "max_split_size": -1,
        }
    )
    return stats


@dataclass
class _DeviceProperties:
    name: str
    total_memory: int


@dataclass
class FakeCudaModule:
    """Stands in for ``torch.cuda`` where no GPU exists: same function names and signatures
    (``is_initialized()``, ``device_count()``, ``memory_stats(device)``,
    ``get_device_properties(device)``). Set ``stats[device]`` to script the allocator."""

    initialized: bool = True
    total_memory: int = 80 * 1024**3
    stats: dict[int, dict[str, int]] = field(default_factory=lambda: {0: memory_stats_dict()})
    init_calls: int = 0

    def is_initialized(self) -> bool:
        return self.initialized

    def device_count(self) -> int:
        return len(self.stats)

    def memory_stats(self, device: Any = None) -> dict[str, int]:
        self._require_init()
        return dict(self.stats[int(device or 0)])

    def get_device_properties(self, device: Any) -> _DeviceProperties:
        return _DeviceProperties("Fake H100", self.total_memory)

    def init(self) -> None:
        self.init_calls += 1
        self.initialized = True

    def _require_init(self) -> None:
        # Real torch would initialise CUDA here; the fake records it so tests can forbid it.
        if not self.initialized:
            self.init()


#: Scripts for real target processes (attach tests and benchmarks): each prints "ready" once
#: running. One allocates in a tight loop with no Python calls (a busy main thread); the other's
#: main thread waits on an Event (pending calls never run there).
BUSY_ALLOCATING_SCRIPT = """
print("ready", flush=True)
hold = []
while True:
    hold.append(bytearray(64 << 10))
    if len(hold) > 200:
        hold.clear()
"""
IDLE_WAITING_SCRIPT = """
import threading
print("ready", flush=True)
threading.Event().wait()
"""
#: Its main thread and another both run Python: the main thread often waits for the GIL (a
#: futex in the runtime's state), where attach must queue its line, not run it.
CONTENDED_SCRIPT = """
import threading
def spin():
    while True:
        sum(range(1000))
threading.Thread(target=spin, daemon=True).start()
print("ready", flush=True)
while True:
    sum(range(1000))
"""
