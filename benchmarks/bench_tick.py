"""Benchmark: the cost of one tick of the always-on probes.

Target: one ``Sampler.tick()`` of the default agent (probes process, heap, limits, cuda when
present, plus what the agent adds: request counters, the growth detector, the history) takes
≤ 200 µs median, in a process that imported torch and holds real tensors and a realistic
Python heap.

What is timed: ``agent.sampler.tick()`` of an ``Agent(Settings())`` that is not started, the
whole pass (probes, detector, series store, self-metrics, history listener), driven the way it
runs in production at the default 5 s interval rather than back to back:

- the clock the samples are stamped with advances by the interval before each tick, so the
  detector folds 30 s buckets and re-evaluates its windows at the production rate (back to
  back, thousands of ticks would fall in one bucket and skip that work);
- readings that run every tick in production but are held back by a wall-time budget
  (``heap``'s ``sys.getallocatedblocks``) are made due before each tick;
- the history recorder is started (into a temporary directory) and its once-a-second flush
  made due before each tick, as it is at a 5 s interval;
- two endpoints receive requests between ticks, so the request counters are live.

The detail-cadence readings (USS/PSS from smaps_rollup, gc per-generation object counts; every
30 s by default) are timed separately, with how long they hold up the host's other Python
threads. Baselines, interleaved with the ticks in the same run: ``psutil.Process()
.memory_info()`` (what services call today) and open/read of ``/proc/self/status``.

``python -m benchmarks.bench_tick [--quick]``; exit status 1 when the target is missed (not with
``--quick``, a smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psutil
import torch

from benchmarks import fmt_ratio, fmt_us, median, percentile, verdict
from diag.settings import Settings
from diag.testing import FakeClock, FakeCudaModule, memory_stats_dict
from probes.agent import Agent, default_probes
from probes.base import Cadence, Probe
from probes.cuda import CudaProbe
from probes.heap import HeapProbe
from probes.process import ProcessProbe
from probes.requests import RequestStats
from probes.sampler import Sampler

TARGET_NS = 200_000
MIB = 1024 * 1024
ENDPOINTS = (("tts", 0.012), ("health", 0.0004))  # (endpoint, seconds per request)


@dataclass(frozen=True)
class Config:
    tensor_mib: int  # real tensors held, 1 MiB each
    objects: int  # small Python objects created
    warmup_ticks: int  # untimed ticks first: 720 x 5 s = one hour of detector history
    rounds: int  # interleaved rounds of (ticks, baselines)
    calls: int  # timed calls per row per round
    detail_passes: int  # timed detail-cadence passes


FULL = Config(
    tensor_mib=320, objects=200_000, warmup_ticks=720, rounds=5, calls=800, detail_passes=15
)
QUICK = Config(
    tensor_mib=64, objects=50_000, warmup_ticks=100, rounds=2, calls=150, detail_passes=5
)


# -- the host's heap -------------------------------------------------------------------------


def build_heap(config: Config) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Real tensors (pages touched, so resident) and ``config.objects`` small Python objects
    shaped like a service's: per record a dict, a str, a list and a tuple."""
    tensors = [torch.full((256, 1024), float(i)) for i in range(config.tensor_mib)]
    records = [
        {"id": i, "text": f"utterance {i}", "tokens": [i, i + 1, i + 2], "span": (i, i + 3)}
        for i in range(config.objects // 4)
    ]
    return tensors, records


# -- driving an agent as in production -------------------------------------------------------


def every_tick_cadences(probes: list[Probe], interval: float) -> list[tuple[str, Cadence]]:
    """Cadences that run every tick at ``interval`` and are only held back by their budget
    (``Cadence(0.0)`` and the like); the detail cadences (interval > tick interval) are not."""
    found = []
    for probe in probes:
        for attr, value in vars(probe).items():
            if isinstance(value, Cadence) and value.interval < interval:
                found.append((f"{probe.name}.{attr}", value))
    return found


class ProductionTicks:
    """An agent, not started, whose ticks are prepared to do what a production tick does
    (see the module's docstring). ``prepare()`` runs before each tick, outside the timing."""

    def __init__(
        self,
        label: str,
        settings: Settings,
        probes: list[Probe] | None = None,
        *,
        bare: bool = False,
        endpoints: tuple[tuple[str, float], ...] = ENDPOINTS,
    ) -> None:
        self.label = label
        self.endpoints = endpoints
        self.interval = settings.interval
        self.clock = FakeClock()
        self.requests = RequestStats()
        self.agent: Agent | None = None
        self.writer: Any = None
        if bare:  # the probes alone: no detector, history or request counters
            self.sampler = Sampler(
                probes if probes is not None else default_probes(settings),
                interval=settings.interval,
                clock=self.clock,
            )
        else:
            self.agent = Agent(settings, probes=probes, clock=self.clock, requests=self.requests)
            self.sampler = self.agent.sampler
            if self.agent.recorder is not None:
                self.agent.recorder.start()
                self.writer = self.agent.recorder.writer
        found = every_tick_cadences(self.sampler.probes, self.interval)
        self.cadence_names = [name for name, _ in found]
        self._cadences = [cadence for _, cadence in found]
        # The writer flushes once per ``flush_seconds`` of real time: every tick at 5 s.
        self.flush_forced = self.writer is not None and hasattr(self.writer, "_last_flush")

    def prepare(self) -> None:
        self.clock.advance(self.interval)
        for endpoint, seconds in self.endpoints:
            self.requests.record(endpoint, seconds)
        for cadence in self._cadences:
            cadence.reset()
        if self.flush_forced:
            self.writer._last_flush = -math.inf

    def tick(self) -> None:
        self.prepare()
        self.sampler.tick()

    def close(self) -> None:
        if self.agent is not None and self.agent.recorder is not None:
            self.agent.recorder.stop()
        self.sampler.close()


# -- timing ----------------------------------------------------------------------------------


@dataclass
class Series:
    """Timings of one row, in nanoseconds, plus per-probe durations where it is a tick."""

    label: str
    ns: list[int] = field(default_factory=list)
    per_probe: dict[str, list[float]] = field(default_factory=dict)  # seconds
    bookkeeping: list[float] = field(default_factory=list)  # ns: tick minus its probes
    reasons: dict[str, str | None] = field(default_factory=dict)
    disabled: set[str] = field(default_factory=set)

    @property
    def median(self) -> float:
        return median(self.ns)


def time_calls(series: Series, fn: Callable[[], object], n: int) -> None:
    clock = time.perf_counter_ns
    out = series.ns
    for _ in range(n):
        started = clock()
        fn()
        out.append(clock() - started)


def time_ticks(series: Series, ticks: ProductionTicks, n: int) -> None:
    clock = time.perf_counter_ns
    sampler = ticks.sampler
    for _ in range(n):
        ticks.prepare()
        started = clock()
        sampler.tick()
        elapsed = clock() - started
        series.ns.append(elapsed)
        in_probes = 0.0
        for status in sampler.status():
            series.reasons[status.name] = status.reason
            if not status.enabled:  # disabled: did not run, last_duration is stale
                series.disabled.add(status.name)
                continue
            series.per_probe.setdefault(status.name, []).append(status.last_duration)
            in_probes += status.last_duration
        series.bookkeeping.append(elapsed - in_probes * 1e9)


class StallMonitor:
    """A thread that sleeps ``period`` again and again and records how late it wakes: the
    longest time another Python thread (a request handler) is kept from running."""

    def __init__(self, period: float = 0.0002) -> None:
        self.period_ns = int(period * 1e9)
        self._period = period
        self._stop = threading.Event()
        self.worst_ns = 0
        self._thread = threading.Thread(target=self._run, name="stall-monitor", daemon=True)

    def _run(self) -> None:
        clock = time.perf_counter_ns
        while not self._stop.is_set():
            started = clock()
            time.sleep(self._period)
            late = clock() - started - self.period_ns
            self.worst_ns = max(self.worst_ns, late)

    @contextmanager
    def running(self) -> Iterator[StallMonitor]:
        self._thread.start()
        time.sleep(0.05)
        self.worst_ns = 0
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def stall(action: Callable[[], object], passes: int) -> float:
    """How long another thread is kept waiting while ``action`` runs: per pass the monitor's
    worst lateness, then the median over passes (single passes are noisy on a shared VM; the
    main thread sleeps between passes, so only the action itself competes for the GIL)."""
    worst = []
    with StallMonitor().running() as monitor:
        for _ in range(passes):
            time.sleep(0.02)
            monitor.worst_ns = 0
            action()
            time.sleep(0.005)  # let the monitor wake up and record the pass
            worst.append(monitor.worst_ns)
    return median(worst)


# -- scenarios -------------------------------------------------------------------------------


def fake_cuda_probes(settings: Settings) -> list[Probe]:
    """The default probes with the CUDA probe reading a fake ``torch.cuda`` (one device whose
    allocator holds 2 GiB), because this machine has no GPU."""
    fake = FakeCudaModule(stats={0: memory_stats_dict(allocated=2 << 30, reserved=3 << 30)})
    return [
        CudaProbe(cuda=lambda: fake) if isinstance(p, CudaProbe) else p
        for p in default_probes(settings)
    ]


def detail_probes(settings: Settings) -> list[Probe]:
    """The default probes with the detail cadences always due (interval 0, no budget)."""
    probes: list[Probe] = []
    for probe in default_probes(settings):
        if isinstance(probe, ProcessProbe):
            probe = ProcessProbe(cadence=Cadence(0.0, budget=math.inf))
        elif isinstance(probe, HeapProbe):
            probe = HeapProbe(cadence=Cadence(0.0, budget=math.inf))
        probes.append(probe)
    return probes


def read_status_file() -> str:
    with open("/proc/self/status") as f:
        return f.read()


def measure_detail(config: Config, settings: Settings, plain: ProductionTicks) -> dict[str, float]:
    """Median cost of each detail reading, of a whole tick with them due, and the stalls."""
    proc = ProcessProbe()
    heap = HeapProbe()
    proc.sample()
    heap.sample()  # the first pass runs everything once (opens files, loads mallinfo2)
    smaps, tracked = Series("smaps"), Series("tracked")
    for _ in range(config.detail_passes):
        time_calls(smaps, proc._refresh_detail, 1)
        time_calls(tracked, heap._count_tracked, 1)

    detail = ProductionTicks("detail", settings, detail_probes(settings))
    for _ in range(3):
        detail.tick()
    detail_ticks = Series("detail tick")
    time_ticks(detail_ticks, detail, config.detail_passes)
    out = {
        "smaps_ns": smaps.median,
        "tracked_ns": tracked.median,
        "tick_ns": detail_ticks.median,
        "stall_detail_ns": stall(detail.tick, config.detail_passes),
        "stall_tick_ns": stall(plain.tick, config.detail_passes),
        "stall_smaps_ns": stall(proc._refresh_detail, config.detail_passes),
        "stall_tracked_ns": stall(heap._count_tracked, config.detail_passes),
        "stall_none_ns": stall(lambda: None, config.detail_passes),
    }
    detail.close()
    proc.close()
    return out


# -- report ----------------------------------------------------------------------------------


def print_row(label: str, ns: list[int]) -> None:
    p50, p90, p99 = (fmt_us(percentile(ns, q)) for q in (50, 90, 99))
    print(f"  {label:<48} {p50:>9} {p90:>9} {p99:>9}")


def print_probes(series: Series) -> None:
    print(f"  per probe (median of the sampler's last_duration), {series.label}:")
    for name, durations in series.per_probe.items():
        reason = series.reasons.get(name)
        note = f"  (unavailable: {reason})" if reason else ""
        print(f"    {name:<12} {fmt_us(median(durations) * 1e9):>9}{note}")
    for name in sorted(series.disabled):
        print(f"    {name:<12} {'-':>9}  (disabled: {series.reasons.get(name)})")
    print(
        f"    {'rest':<12} {fmt_us(median(series.bookkeeping)):>9}  (tick minus the above: "
        "series store, self-metrics, listeners such as the history write)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke-test run")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL

    objects_before = len(gc.get_objects())
    tensors, records = build_heap(config)
    gc.collect()
    tracked = len(gc.get_objects())
    rss = psutil.Process().memory_info().rss
    print(
        f"tick benchmark{' (--quick: indicative only)' if args.quick else ''}: "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"host heap: {len(tensors)} MiB in {len(tensors)} real tensors, "
        f"{4 * len(records):,} small Python objects created; gc tracks {tracked:,} objects "
        f"({objects_before:,} before); RSS {rss / MIB:.0f} MiB"
    )

    with tempfile.TemporaryDirectory(prefix="diag-bench-") as history:
        settings = Settings()

        def in_dir(name: str) -> Settings:
            return dataclasses.replace(settings, history=os.path.join(history, name))

        scenarios = [ProductionTicks(f"agent, {len(ENDPOINTS)} endpoints", in_dir("default"))]
        gpu_tensors: list[torch.Tensor] = []
        if torch.cuda.is_available():
            # A real GPU: the host initialises CUDA and holds tensors there; the default agent's
            # CudaProbe then reads the real allocator, so no fake is needed.
            gpu_tensors = [torch.ones(256, 1024, device="cuda") for _ in range(64)]
            cuda_label = f"real CUDA ({torch.cuda.get_device_name(0)})"
            scenarios[0].label = f"agent with {cuda_label}, {len(ENDPOINTS)} endpoints"
            print(f"CUDA: {cuda_label}, {len(gpu_tensors)} MiB of tensors on it")
        else:
            cuda_label = "FAKE CUDA"
            scenarios.append(
                ProductionTicks(
                    f"agent with {cuda_label}, {len(ENDPOINTS)} endpoints",
                    in_dir("fake-cuda"),
                    fake_cuda_probes(settings),
                )
            )
            print(
                "CUDA: this machine has no GPU; the 'with FAKE CUDA' rows replace the CUDA "
                "probe's torch.cuda with diag.testing.FakeCudaModule (a fake: its memory_stats "
                "is a dict copy, not the real allocator's)"
            )
        scenarios.append(
            ProductionTicks("agent, no requests counted", in_dir("no-requests"), endpoints=())
        )
        probes_only = fake_cuda_probes(settings) if not torch.cuda.is_available() else None
        scenarios.append(
            ProductionTicks(
                f"probes only{', FAKE CUDA' if probes_only else ''} (bare Sampler)",
                settings,
                probes_only,
                bare=True,
            )
        )
        main_ticks = scenarios[0]
        for scenario in scenarios:
            for _ in range(config.warmup_ticks):
                scenario.tick()
        print(
            "timed: agent.sampler.tick() of Agent(Settings()), not started, driven as in "
            f"production: sample clock +{settings.interval:g} s per tick "
            f"({config.warmup_ticks} warm-up ticks = {config.warmup_ticks * settings.interval:g} "
            f"s of detector history); made due before each tick: "
            f"{', '.join(main_ticks.cadence_names) or 'no budget-gated reading'}, "
            f"history flush {'yes' if main_ticks.flush_forced else 'NO (not found)'}; "
            f"{len(ENDPOINTS)} endpoints with requests"
        )
        print(f"timing: {config.rounds} interleaved rounds of {config.calls} calls per row")

        ticks = [Series(scenario.label) for scenario in scenarios]
        back_to_back = Series("back to back")
        history_write = Series("history write")
        psutil_new, psutil_held, status_read = Series("psutil"), Series("held"), Series("read")
        held = psutil.Process()
        recorder = main_ticks.agent.recorder if main_ticks.agent is not None else None

        def write_history() -> None:
            main_ticks.prepare()
            assert recorder is not None and main_ticks.sampler.latest is not None
            started = time.perf_counter_ns()
            recorder.record_tick(main_ticks.sampler.latest)
            history_write.ns.append(time.perf_counter_ns() - started)

        for _ in range(config.rounds):
            for scenario, series in zip(scenarios, ticks, strict=True):
                time_ticks(series, scenario, config.calls)
            time_calls(back_to_back, main_ticks.sampler.tick, config.calls)
            if recorder is not None:
                for _ in range(config.calls):
                    write_history()
            time_calls(psutil_new, lambda: psutil.Process().memory_info(), config.calls)
            time_calls(psutil_held, held.memory_info, config.calls)
            time_calls(status_read, read_status_file, config.calls)

        print(f"\n  {'':<48} {'median':>9} {'p90':>9} {'p99':>9}")
        for series in ticks:
            print_row(f"tick, {series.label}", series.ns)
        print_row("(agent tick back to back, nothing driven)", back_to_back.ns)
        if history_write.ns:
            print_row("(of which: history write + flush)", history_write.ns)
        print_row("baseline: psutil.Process().memory_info()", psutil_new.ns)
        print_row("baseline: open+read /proc/self/status", status_read.ns)
        print_row("(psutil, Process kept: p.memory_info())", psutil_held.ns)
        latest = main_ticks.sampler.latest
        print(f"  samples per tick of the agent: {len(latest.samples) if latest else 0}")
        print()
        for scenario, series in zip(scenarios, ticks, strict=True):
            if scenario.endpoints or scenario.agent is None:
                print_probes(series)

        detail = measure_detail(config, in_dir("detail"), main_ticks)
        for scenario in scenarios:
            scenario.close()
        del gpu_tensors

    interval = settings.detail_interval
    proc_every = max(interval, detail["smaps_ns"] / 1e9 / 0.001)
    heap_every = max(interval, detail["tracked_ns"] / 1e9 / 0.001)
    average = detail["smaps_ns"] / proc_every + detail["tracked_ns"] / heap_every
    print(
        f"\n  detail cadence (detail_interval {interval:g} s, budget 0.1 % of wall time; at the "
        f"{settings.interval:g} s interval 1 tick in {interval / settings.interval:.0f} "
        "carries it):"
    )
    print(
        f"    process USS/PSS (smaps_rollup read + parse)       {fmt_us(detail['smaps_ns']):>9}"
        f"  runs every {proc_every:.0f} s; stalls another thread "
        f"{fmt_us(detail['stall_smaps_ns'])}"
    )
    print(
        f"    heap gc tracked objects (gc.get_objects, 3 gens)  {fmt_us(detail['tracked_ns']):>9}"
        f"  runs every {heap_every:.0f} s; stalls another thread "
        f"{fmt_us(detail['stall_tracked_ns'])}"
    )
    print(
        f"    whole tick with both due                          {fmt_us(detail['tick_ns']):>9}"
        f"  stalls another thread {fmt_us(detail['stall_detail_ns'])} "
        f"(ordinary tick: {fmt_us(detail['stall_tick_ns'])}; nothing running: "
        f"{fmt_us(detail['stall_none_ns'])})"
    )
    print(
        f"    averaged over time: {fmt_us(average)} of detail work per second of wall time "
        f"({average / 1e7:.3f} %)"
    )

    main_series = ticks[0]
    ratio_psutil = main_series.median / psutil_new.median
    ratio_status = main_series.median / status_read.median
    print("\n  ratios (same run):")
    print(f"    tick / psutil.Process().memory_info()  {fmt_ratio(ratio_psutil)}")
    print(f"    tick / open+read /proc/self/status      {fmt_ratio(ratio_status)}")
    ratio_held = main_series.median / psutil_held.median
    print(f"    tick / psutil with the Process kept     {fmt_ratio(ratio_held)}")

    print()
    ok = True
    for scenario, series in zip(scenarios, ticks, strict=True):
        ratio = fmt_ratio(series.median / psutil_new.median)
        p99 = fmt_us(percentile(series.ns, 99))
        if scenario.agent is None or not scenario.endpoints:  # information, not the target
            print(
                f"tick median ({series.label}): {fmt_us(series.median)} (information, not the "
                f"target); p99 {p99}; ratio to psutil: {ratio}"
            )
            continue
        passed = series.median <= TARGET_NS
        ok = ok and passed
        which = "" if series is ticks[0] else f" ({series.label})"
        print(
            f"tick median{which}: {fmt_us(series.median)} "
            f"(target ≤ {fmt_us(TARGET_NS)}: {verdict(passed)}); p99 {p99}; "
            f"ratio to psutil.Process().memory_info(): {ratio}"
        )
    print(
        f"detail pass (every {interval:g} s, not in the target): {fmt_us(detail['tick_ns'])} "
        f"tick; stalls other threads {fmt_us(detail['stall_detail_ns'])}"
    )
    del tensors, records
    if args.quick:
        print("--quick: a smoke test; the verdict does not set the exit status")
        return 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
