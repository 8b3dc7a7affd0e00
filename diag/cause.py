"""Cause, not only culprit: which kind of growth this is, with the evidence for it.

Memory that grows is not always a leak. The same RSS curve can be live objects piling up in a
holder (a leak), glibc keeping freed memory (allocator retention: ``malloc_trim`` gives it back),
PyTorch's caching allocator keeping reserved blocks (a plateau, not a leak), fragmentation of
that cache, copy-on-write of pages a pre-forked worker shares with its master, or native memory
no Python-level tool sees. Each leaves a different mark on the series the agent records; this
module reads those marks. Pure: series and holders' growth in, a ``Cause`` out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from diag.units import format_bytes

Points = Sequence[tuple[float, float]]

#: A series grows when it rises at least this much per hour...
MIN_GROWTH_PER_HOUR = 16 * 1024 * 1024
#: ...and a part explains the whole when it accounts for this share of it.
EXPLAINS = 0.25
#: Holders growing this many times MIN_GROWTH_PER_HOUR are a leak whatever RSS says.
FAST_HOLDER_GROWTH = 10


@dataclass
class Cause:
    kind: str  # leak, allocator_retention, cuda_caching_plateau, fragmentation,
    #            copy_on_write, native_growth, no_growth, unexplained, unknown
    summary: str
    evidence: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def slope(points: Points) -> float | None:
    """Least-squares slope (units per second), None with fewer than 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var <= 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var


def _rate(series: Mapping[str, Points], name: str) -> float:
    return slope(series.get(name, ())) or 0.0


def _last(series: Mapping[str, Points], name: str) -> float | None:
    points = series.get(name, ())
    return points[-1][1] if points else None


def _per_hour(rate: float) -> str:
    return f"{format_bytes(rate * 3600)}/h"


def classify(
    series: Mapping[str, Points],
    owner_growth: Sequence[tuple[str, float]] = (),
    *,
    worker: bool = False,
    trimmed_bytes: int | None = None,
) -> Cause:
    """``series``: name -> recent points (CUDA ones summed over devices); ``owner_growth``:
    (holder path, bytes per second) measured over a traced window, biggest first."""
    grows = MIN_GROWTH_PER_HOUR / 3600
    if slope(series.get("process_resident_memory_bytes", ())) is None:
        return Cause(
            "unknown",
            "too few samples yet to tell how memory moves (the agent needs a few ticks)",
        )
    rss = _rate(series, "process_resident_memory_bytes")
    uss = _rate(series, "process_unique_memory_bytes")
    malloc = _rate(series, "malloc_in_use_bytes")
    blocks = _rate(series, "python_allocated_blocks")
    allocated = _rate(series, "cuda_allocated_bytes")
    reserved = _rate(series, "cuda_reserved_bytes")
    split = _rate(series, "cuda_inactive_split_bytes")
    retries = _rate(series, "cuda_alloc_retries_total")
    held = sum(rate for _, rate in owner_growth if rate > 0)
    evidence = [f"RSS {_per_hour(rss)}"]

    if reserved > grows and abs(allocated) < EXPLAINS * reserved:
        evidence.append(f"CUDA reserved {_per_hour(reserved)}, allocated {_per_hour(allocated)}")
        if split > grows or retries > 0:
            evidence.append(
                f"inactive split blocks {_per_hour(split)}, "
                f"allocation retries {retries * 3600:.0f}/h"
            )
            return Cause(
                "fragmentation",
                "PyTorch's cache is fragmenting: reserved grows, allocated does not, and freed "
                "blocks are split into pieces too small to reuse (try expandable_segments:True "
                "in PYTORCH_CUDA_ALLOC_CONF)",
                evidence,
            )
        return Cause(
            "cuda_caching_plateau",
            "PyTorch's caching allocator keeps what it reserved; allocated memory is flat, so "
            "this is a cache filling up to its plateau, not a leak",
            evidence,
        )
    # Live objects growing is a leak when they explain a fair share of the growth, or grow fast
    # on their own: RSS measured over a short traced window is noisy and includes tracing's
    # own memory, so a holder piling up megabytes a minute is not second-guessed by it.
    explains = held >= EXPLAINS * max(rss, allocated) or rss < grows
    if owner_growth and held >= grows and (explains or held >= FAST_HOLDER_GROWTH * grows):
        path, rate = owner_growth[0]
        share = f", {held / rss:.0%} of RSS growth" if rss > 0 else ""
        evidence.append(f"{path} grew {_per_hour(rate)}; holders in all {_per_hour(held)}{share}")
        return Cause("leak", f"live objects are piling up in {path}", evidence)
    if owner_growth and held < grows and (rss > grows or malloc > grows):
        # A traced window measured every holder and none grew: the window's own growth is
        # tracemalloc's (a trace per live allocation) or lies outside what the census sees.
        evidence.append(f"holders measured in the window grew {_per_hour(held)} in all")
        return Cause(
            "unexplained",
            "memory grew during the traced window but no holder did: the growth may be "
            "tracing's own, or objects outside containers; watch the verdict over a longer span",
            evidence,
        )
    if allocated > grows:
        evidence.append(f"CUDA allocated {_per_hour(allocated)}")
        return Cause(
            "leak",
            "live CUDA tensors are growing; take a traced dump (--window) to name their holder",
            evidence,
        )
    if trimmed_bytes is not None and trimmed_bytes > 0:
        evidence.append(f"malloc_trim(0) returned {format_bytes(trimmed_bytes)} to the system")
    free_retained = _last(series, "malloc_free_retained_bytes") or 0.0
    resident = _last(series, "process_resident_memory_bytes") or 0.0
    retained_much = resident > 0 and free_retained >= EXPLAINS * resident
    if (trimmed_bytes or 0) >= EXPLAINS * max(resident, 1) or (
        retained_much and malloc < grows and trimmed_bytes is None
    ):
        evidence.append(
            f"glibc holds {format_bytes(free_retained)} free of {format_bytes(resident)} resident"
        )
        return Cause(
            "allocator_retention",
            "the allocator keeps memory the program already freed: RSS is far above malloc in "
            "use, and malloc_trim(0) gives it back (diag dump --trim measures it)",
            evidence,
        )
    if rss < grows and uss < grows:
        return Cause("no_growth", "memory is not growing", evidence)
    python_flat = malloc < EXPLAINS * rss and blocks * 64 < EXPLAINS * rss
    if worker and uss > grows and python_flat:
        evidence.append(f"USS {_per_hour(uss)} while the Python heap is flat")
        return Cause(
            "copy_on_write",
            "a pre-forked worker is copying pages it shared with its master (refcounts and gc "
            "touch them): try gc.freeze() in the master before forking",
            evidence,
        )
    if python_flat:
        evidence.append(f"malloc in use {_per_hour(malloc)}, Python blocks flat")
        return Cause(
            "native_growth",
            "memory grows outside Python's heap and outside malloc's view (a C extension, "
            "mmap, or a native library's cache) that gc cannot see",
            evidence,
        )
    evidence.append(f"malloc in use {_per_hour(malloc)}")
    return Cause(
        "leak",
        "the Python heap is growing; take a traced dump (--window) to name the holder",
        evidence,
    )
