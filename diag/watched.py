"""The catalogue of watched series: one row per series that diag judges or reads for a verdict.

Each row says what the series is, which limit it is judged against, whether diag's own dumps
disturb it, and which consumers read it. The agent's detector, ``diag watch``'s agent view,
``diag analyze``, the post-mortem and the cause classification all take their lists from here,
so a new watched series is one new row. Every name is also a metric of ``diag.metrics.CATALOG``
(a test checks it).

Limits: a host-memory series is judged against the headroom under the effective memory limit
(``memory_limit_bytes`` minus ``memory_limit_usage_bytes``) added to its own value, so RSS is
forecast to meet the limit when the cgroup's usage does; a device series against its device's
total, and a resource (fds, threads...) against its own limit: in both, the series named in
``total`` with the same labels (``cuda_total_bytes{device}``, ``resource_limit{resource}``).
A ``resource`` row counts things, not bytes: its verdicts are exported as
``growth_per_second`` and ``seconds_to_exhaustion`` instead of the memory names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from diag.model import Labels

#: Who reads a series: the agent's ``detector`` judges it live, ``report`` draws and judges it
#: after the run, ``analyze`` replays it from a history, ``watch`` shows it from a live agent,
#: ``cause`` weighs it when a dump classifies the growth.
Reader = Literal["detector", "report", "analyze", "watch", "cause"]

HOST_LIMIT = "memory_limit_bytes"
HOST_USAGE = "memory_limit_usage_bytes"

LimitKind = Literal["host", "device", "own"]


@dataclass(frozen=True, slots=True)
class Watched:
    name: str
    title: str
    #: ``"host"``: headroom under the host's memory limit; ``"device"`` (a GPU's total) and
    #: ``"own"`` (a resource's limit): the series in ``total``, same labels; ``None``: no
    #: limit (a count, a cost or a covariate).
    limit: LimitKind | None
    readers: frozenset[Reader]
    #: diag's own dumps move it (a paused host catching up, tracemalloc's tables): held back
    #: from the detectors while one runs, and the step across discounted.
    disturbed_by_dumps: bool = False
    total: str | None = None
    #: Counts things (fds, threads...): verdicts as growth per second and time to exhaustion.
    resource: bool = False


def _row(
    name: str,
    title: str,
    limit: LimitKind | None,
    *readers: Reader,
    disturbed: bool = False,
    total: str | None = None,
    resource: bool = False,
) -> Watched:
    return Watched(name, title, limit, frozenset(readers), disturbed, total, resource)


MEMORY: tuple[Reader, ...] = ("detector", "report", "analyze", "cause")
CUDA_TOTAL, GPU_TOTAL = "cuda_total_bytes", "gpu_total_bytes"
RESOURCE_USAGE, RESOURCE_LIMIT = "resource_usage", "resource_limit"

# fmt: off
CATALOGUE: tuple[Watched, ...] = (
    _row("process_resident_memory_bytes", "RSS",                 "host", *MEMORY, disturbed=True),
    _row("process_unique_memory_bytes", "USS",                   "host", *MEMORY, disturbed=True),
    _row("malloc_in_use_bytes", "malloc in use",                 "host", *MEMORY, "watch",
         disturbed=True),
    _row("malloc_free_retained_bytes", "malloc free, retained",  None, "cause", "watch"),
    _row("python_allocated_blocks", "Python allocated blocks",   None, "cause", "watch"),
    _row("gc_tracked_objects", "GC tracked objects",             None, "watch"),
    _row("tracemalloc_top_bytes", "top allocation site",         "host", "detector", "watch"),
    _row("cuda_allocated_bytes", "CUDA allocated",               "device", *MEMORY, "watch",
         total=CUDA_TOTAL),
    _row("cuda_reserved_bytes", "CUDA reserved",                 "device", *MEMORY, "watch",
         total=CUDA_TOTAL),
    _row("cuda_inactive_split_bytes", "CUDA inactive split",     None, "cause"),
    _row("cuda_alloc_retries_total", "CUDA allocation retries",  None, "cause"),
    _row("gpu_process_used_bytes", "GPU memory (NVML)",          "device", "detector", "report",
         total=GPU_TOTAL),
    _row(RESOURCE_USAGE, "resources",                            "own", "detector", "watch",
         "report", total=RESOURCE_LIMIT, resource=True),
    _row("requests_total", "requests",                           None, "watch"),
    _row("leak_suspected", "leak suspected",                     None, "watch"),
)
# fmt: on

BY_NAME: dict[str, Watched] = {row.name: row for row in CATALOGUE}


def read_by(reader: Reader) -> tuple[Watched, ...]:
    """The rows ``reader`` reads, in catalogue order (the order the report shows them)."""
    return tuple(row for row in CATALOGUE if reader in row.readers)


def names_read_by(reader: Reader) -> tuple[str, ...]:
    return tuple(row.name for row in read_by(reader))


#: The series whose values a limit is looked up from, for indexing a tick's samples.
LIMIT_INPUTS = frozenset({HOST_LIMIT, HOST_USAGE} | {r.total for r in CATALOGUE if r.total})


def headroom(limit: float | None, usage: float | None) -> float | None:
    """What is left under the host's memory limit; None when either reading is missing."""
    if limit is None or usage is None:
        return None
    return max(limit - usage, 0.0)


def limit_for(
    name: str, labels: Labels, value: float, readings: Mapping[tuple[str, Labels], float]
) -> float | None:
    """The limit ``value`` of series ``name`` is judged against, from the same tick's
    ``readings`` keyed by (name, labels): its value plus the host's headroom, or its device's
    total or its own limit. None when the series has no limit or the readings do not give it."""
    row = BY_NAME.get(name)
    if row is None or row.limit is None:
        return None
    if row.limit != "host":  # "device", "own": the series named in ``total``, same labels
        return readings.get((row.total or "", labels))
    room = headroom(readings.get((HOST_LIMIT, ())), readings.get((HOST_USAGE, ())))
    return None if room is None else value + room
