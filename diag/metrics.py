"""The catalog of every metric diag exports: name, type, labels and help, in one place.

The exposition, the README's metric table and the tests read it; a probe may only emit names
listed here (a test enforces it). Names are given without the namespace (``diag_`` by default),
in base units, and counters end in ``_total``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    kind: Literal["gauge", "counter", "histogram"]
    labels: tuple[str, ...]
    help: str
    probe: str
    #: Verdict metrics also carry the labels of the series they judge (device, site...).
    series_labels: bool = False


def _g(name: str, probe: str, help: str, *labels: str) -> MetricSpec:
    return MetricSpec(name, "gauge", labels, help, probe)


def _verdict(name: str, help: str) -> MetricSpec:
    return MetricSpec(name, "gauge", ("series",), help, "detector", series_labels=True)


def _c(name: str, probe: str, help: str, *labels: str) -> MetricSpec:
    return MetricSpec(name, "counter", labels, help, probe)


CATALOG: tuple[MetricSpec, ...] = (
    # process
    _g("process_resident_memory_bytes", "process", "Resident set size (VmRSS)."),
    _g("process_resident_memory_peak_bytes", "process", "Peak resident set size (VmHWM)."),
    _g("process_resident_anonymous_bytes", "process", "Anonymous resident memory (RssAnon)."),
    _g("process_swap_bytes", "process", "Swapped-out memory (VmSwap)."),
    _g(
        "process_unique_memory_bytes",
        "process",
        "Unique set size: private pages (smaps_rollup), refreshed on the detail cadence.",
    ),
    _g(
        "process_proportional_memory_bytes",
        "process",
        "Proportional set size (smaps_rollup), refreshed on the detail cadence.",
    ),
    # heap
    _g(
        "gc_tracked_objects",
        "heap",
        "Objects tracked by the cyclic GC per generation, refreshed on the detail cadence.",
        "generation",
    ),
    _c("gc_collections_total", "heap", "GC collections per generation.", "generation"),
    _c(
        "gc_collected_objects_total",
        "heap",
        "Objects freed by the GC per generation.",
        "generation",
    ),
    _c(
        "gc_uncollectable_objects_total",
        "heap",
        "Uncollectable objects found by the GC per generation.",
        "generation",
    ),
    _g("python_allocated_blocks", "heap", "Memory blocks held by Python's allocator."),
    _g("malloc_in_use_bytes", "heap", "glibc malloc bytes in use (arena and mmapped)."),
    _g(
        "malloc_free_retained_bytes",
        "heap",
        "glibc malloc bytes free but retained by the process (malloc_trim could return them).",
    ),
    _g("malloc_mmapped_bytes", "heap", "glibc malloc bytes in mmapped chunks."),
    # cuda (torch caching allocator)
    _g("cuda_allocated_bytes", "cuda", "Bytes in live tensors (torch allocator).", "device"),
    _g("cuda_reserved_bytes", "cuda", "Bytes reserved by the torch caching allocator.", "device"),
    _g("cuda_allocated_peak_bytes", "cuda", "Peak bytes in live tensors.", "device"),
    _g(
        "cuda_inactive_split_bytes",
        "cuda",
        "Bytes in inactive, non-releasable split blocks (fragmentation).",
        "device",
    ),
    _c("cuda_alloc_retries_total", "cuda", "cudaMalloc retries after a cache flush.", "device"),
    _c("cuda_ooms_total", "cuda", "Out-of-memory errors raised by the torch allocator.", "device"),
    _g("cuda_total_bytes", "cuda", "Total memory of the device.", "device"),
    # nvml
    _g("gpu_process_used_bytes", "nvml", "GPU memory used by this process (NVML).", "device"),
    _g("gpu_used_bytes", "nvml", "GPU memory used on the device by all processes.", "device"),
    _g("gpu_total_bytes", "nvml", "Total GPU memory of the device (NVML).", "device"),
    # limits
    _g(
        "memory_limit_bytes",
        "limits",
        "The memory limit that will kill the process: the tighter of the cgroup limit and RAM.",
    ),
    _g(
        "memory_limit_usage_bytes",
        "limits",
        "The usage measured against diag_memory_limit_bytes (cgroup usage, or RAM in use).",
    ),
    _g(
        "memory_limit_info",
        "limits",
        "Where the effective memory limit comes from (always 1).",
        "source",
    ),
    _g(
        "cgroup_memory_limit_bytes",
        "limits",
        "Memory limit of the process's cgroup (tightest ancestor).",
    ),
    _g("cgroup_memory_usage_bytes", "limits", "Memory usage of the limiting cgroup."),
    _c("cgroup_oom_kills_total", "limits", "Processes killed by the OOM killer in the cgroup."),
    _g("system_memory_total_bytes", "limits", "Physical memory of the machine (MemTotal)."),
    _g("system_memory_available_bytes", "limits", "Memory available for new work (MemAvailable)."),
    # resources: the judged totals and their breakdowns
    _g(
        "open_fds",
        "resources",
        "Open file descriptors by kind (file, socket, pipe, anon, device, other), refreshed on "
        "a budget.",
        "kind",
    ),
    _g(
        "sockets",
        "resources",
        "Open sockets by type (tcp, tcp6, udp, udp6, unix) and kernel state, refreshed on a "
        "budget.",
        "state",
        "type",
    ),
    _g(
        "threads",
        "resources",
        'Threads of the process: kind="os" (the kernel\'s), "python".',
        "kind",
    ),
    _g(
        "asyncio_tasks",
        "resources",
        'Unfinished asyncio tasks per coroutine, top N; the rest summed as coroutine="other".',
        "coroutine",
    ),
    _g(
        "child_processes",
        "resources",
        "Child processes by state (running, sleeping, zombie...).",
        "state",
    ),
    _g("memory_maps", "resources", "Memory mappings of the process (lines of /proc/PID/maps)."),
    _g("shm_bytes", "resources", "Bytes used in /dev/shm (system-wide, not this process's)."),
    _g(
        "resource_usage",
        "resources",
        "Usage of each judged resource (fds, threads, memory_maps, shm, children, asyncio_tasks).",
        "resource",
    ),
    _g(
        "resource_limit",
        "resources",
        "The limit each resource is judged against (RLIMIT_NOFILE, min of pids.max and "
        "threads-max, vm.max_map_count, /dev/shm size).",
        "resource",
    ),
    # tracemalloc
    _g("tracemalloc_traced_bytes", "tracemalloc", "Bytes currently traced by tracemalloc."),
    _g("tracemalloc_peak_bytes", "tracemalloc", "Peak bytes traced by tracemalloc."),
    _g(
        "tracemalloc_top_bytes",
        "tracemalloc",
        'Bytes held per allocation site, top N sites; the rest summed as site="other".',
        "site",
    ),
    # requests (service metrics)
    _c("requests_total", "requests", "Requests handled per endpoint.", "endpoint"),
    _c("request_errors_total", "requests", "Requests that raised or answered 5xx.", "endpoint"),
    MetricSpec(
        "request_duration_seconds",
        "histogram",
        ("endpoint",),
        "Request latency per endpoint.",
        "requests",
    ),
    # the growth detector's verdicts
    _verdict("leak_suspected", "1 while the detector's verdict on the series is leak, else 0."),
    _verdict("growth_bytes_per_second", "Growth rate of the series' lower envelope."),
    _verdict("seconds_to_oom", "Forecast time until the series reaches its limit."),
    _verdict("seconds_to_oom_low", "Low bound of the forecast time to OOM."),
    _verdict("seconds_to_oom_high", "High bound of the forecast time to OOM."),
    _verdict("growth_per_second", "Growth rate of a resource series' lower envelope (per second)."),
    _verdict("seconds_to_exhaustion", "Forecast time until the resource series reaches its limit."),
    _verdict("seconds_to_exhaustion_low", "Low bound of the forecast time to exhaustion."),
    _verdict("seconds_to_exhaustion_high", "High bound of the forecast time to exhaustion."),
    MetricSpec(
        "retained_bytes_per_request",
        "gauge",
        ("endpoint",),
        "Memory retained per request of the endpoint (growth that follows load).",
        "detector",
    ),
    # the history
    _c("history_written_bytes_total", "history", "Bytes of history handed to the kernel."),
    _c("history_write_errors_total", "history", "History writes that failed (disk full...)."),
    _g("history_disk_full", "history", "1 while history writes fail; sampling goes on."),
    # the agent itself
    _g("probe_duration_seconds", "agent", "Duration of the probe's last pass.", "probe"),
    _c(
        "probe_errors_total",
        "agent",
        "Exceptions raised by the probe (never reach the host).",
        "probe",
    ),
    _g("probe_enabled", "agent", "1 when the probe sampled in the last tick, else 0.", "probe"),
    _g("tick_duration_seconds", "agent", "Duration of the sampler's last pass."),
    _g("last_tick_timestamp_seconds", "agent", "Wall-clock time of the sampler's last pass."),
    _g("agent_memory_bytes", "agent", "Memory held by the agent's own series store and buffers."),
    _g("agent_series", "agent", "Series held in the agent's bounded store."),
    _c("agent_dropped_series_total", "agent", "New series refused because the store was full."),
    # escalation: the culprit search's traced windows and their cost
    _c("dumps_total", "escalation", "Dumps taken (census only or traced window)."),
    _g(
        "dump_active",
        "escalation",
        "1 while a dump runs; the detectors hold memory samples until it settles.",
    ),
    _c("escalations_total", "escalation", "Traced windows run (automatic and asked for)."),
    _c("escalation_failures_total", "escalation", "Traced windows that failed."),
    _c(
        "escalation_traced_seconds_total",
        "escalation",
        "Seconds spent with tracemalloc on for windows.",
    ),
    _g("escalation_tracing_enabled", "escalation", "1 while a traced window runs."),
    _g("dump_pause_seconds", "escalation", "The last dump's heap walk (the host's pause)."),
)

BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in CATALOG}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
HISTOGRAM_ROWS = frozenset(
    spec.name + suffix for spec in CATALOG if spec.kind == "histogram" for suffix in ("_bucket",)
)


def spec_of_sample(name: str) -> MetricSpec | None:
    """The catalog entry a sample belongs to (a histogram's ``_bucket`` row to its family)."""
    spec = BY_NAME.get(name)
    if spec is not None:
        return spec
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            family = BY_NAME.get(name[: -len(suffix)])
            if family is not None and family.kind == "histogram":
                return family
    return None


def markdown_table() -> str:
    """The README's metric table, generated so that it cannot drift from the catalog."""
    rows = ["| metric | type | labels | probe | meaning |", "|---|---|---|---|---|"]
    for spec in CATALOG:
        labels = ", ".join(spec.labels) + (" + the series' labels" if spec.series_labels else "")
        rows.append(f"| `diag_{spec.name}` | {spec.kind} | {labels} | {spec.probe} | {spec.help} |")
    return "\n".join(rows)
