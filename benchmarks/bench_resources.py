"""Benchmark: what the resource probe costs, and how well it forecasts exhaustion.

Targets (issue #12):

- the always-on resource probe adds ≤ 30 µs to the agent tick in a process holding 10k open
  fds (files, sockets, pipes), against a tick without it measured in the same run, interleaved.
  Both the median of the every-tick part and the amortized cost of the budgeted passes (the fds
  by kind with the socket states, the maps count, the children, asyncio tasks: each pass timed
  here, spaced as its ``Cadence`` spaces it at the default interval) are printed; the target is
  judged on their sum;
- ``diag watch`` at a 1 s interval stays ≤ 1 % of one core on a process with 10k open fds
  (baseline: a loop reading /proc/PID/status once a second, beside it);
- the time to fd exhaustion is forecast within 25 % (|log2| ≤ 0.32) on real children that open
  fds at a known rate under a known RLIMIT_NOFILE: the truth is the moment the child's
  ``open`` fails with EMFILE. The watcher runs the detector with its clock sped up
  (``time_scale``, as ``diag demo`` does), so a leak of about a minute is judged in seconds.

``python -m benchmarks.bench_resources [--quick]``; exit status 1 when a target is missed (not
with ``--quick``, a smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import resource
import select
import socket
import subprocess
import sys
import time
from array import array
from collections.abc import Callable

from benchmarks import fmt_ratio, fmt_us, median, percentile, verdict
from benchmarks.bench_watch import watch_cpu_shares
from diag.detect import BUCKET_SECONDS
from diag.settings import Settings
from diag.testing import FakeClock
from diag.watched import RESOURCE_USAGE
from probes import analysis
from probes.agent import Agent, default_probes
from probes.base import Probe
from probes.resources import SHARES, TICK_BUDGET, ResourceProbe
from probes.watcher import Watcher

TARGET_TICK_NS = 30_000
TARGET_WATCH_SHARE = 0.01
TARGET_LOG2 = 0.32
FDS = 10_000


def hold_fds(n: int) -> list[object]:
    """``n`` open fds: 60 % files, 20 % connected TCP sockets (both ends), 20 % pipes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, n + 1000), max(hard, n + 1000)))
    held: list[object] = []
    server = socket.create_server(("127.0.0.1", 0), backlog=4096)
    held.append(server)
    for _ in range(n // 10):
        client = socket.create_connection(server.getsockname())
        held += [client, server.accept()[0]]
    for _ in range(n // 10):
        held += list(os.pipe())
    for _ in range(n - len(os.listdir("/proc/self/fd"))):
        held.append(open(sys.executable, "rb"))  # noqa: SIM115
    return held


def release(held: list[object]) -> None:
    for item in held:
        if isinstance(item, int):
            os.close(item)
        else:
            item.close()  # type: ignore[attr-defined]
    held.clear()


# -- the tick ---------------------------------------------------------------------------------


def time_ticks(
    agent: Agent, clock: FakeClock, interval: float, n: int, out: array[int], at: int = 0
) -> None:
    """``n`` ticks timed into ``out[at:at + n]``: preallocated, so that timing allocates
    nothing and moves no memory series (their detectors' decisions would cost differently in
    each agent, and blur the difference measured)."""
    tick = agent.sampler.tick
    now = time.perf_counter_ns
    for i in range(at, at + n):
        clock.advance(interval)
        started = now()
        tick()
        out[i] = now() - started


def time_pass(fn: Callable[[], object], n: int) -> float:
    """Median ns of ``fn``."""
    out = []
    for _ in range(n):
        started = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - started)
    return median(out)


def measure_tick(quick: bool) -> tuple[bool, str]:
    # No history, and no traced windows: a verdict's escalation would time a heap census.
    settings = Settings(history="off", escalation_window=0.0)
    without: list[Probe] = [p for p in default_probes(settings) if p.name != "resources"]
    clocks = FakeClock(), FakeClock(), FakeClock()
    bare = Agent(settings, probes=without, clock=clocks[0])
    full = Agent(settings, clock=clocks[1])
    # The probe's samples without their six detectors: what the detector's decisions cost.
    unjudged = Agent(settings, clock=clocks[2])
    unjudged.analyzer._judged = analysis.JUDGED - {RESOURCE_USAGE}
    assert any(p.name == "resources" for p in full.sampler.probes)
    # Small batches, interleaved: the bursts of a shared machine hit the three rows alike.
    rounds, calls = (40, 10) if quick else (600, 10)
    agents = ((bare, clocks[0]), (full, clocks[1]), (unjudged, clocks[2]))
    warm = array("q", bytes(8 * 200))
    for agent, clock in agents:
        time_ticks(agent, clock, settings.interval, 200, warm)  # warm: detectors, first passes
    timings = [array("q", bytes(8 * rounds * calls)) for _ in agents]
    for r in range(rounds):
        for (agent, clock), ns in zip(agents, timings, strict=True):
            time_ticks(agent, clock, settings.interval, calls, ns, r * calls)
    bare_ns, full_ns, unjudged_ns = (list(ns) for ns in timings)
    # A detector decides once a 30 s bucket, on the tick that closes it: 1 tick in 6 at 5 s,
    # which a median of all ticks leaves out. Each agent's i-th timed tick is its (200 + i)-th,
    # so tick i of every row is at the same place in its bucket: the rows are compared place by
    # place (medians), and the six differences averaged. That is the cost per tick.
    phases = max(1, round(BUCKET_SECONDS / settings.interval))

    def averaged(more: list[int], less: list[int]) -> tuple[float, list[float]]:
        steps = [median(more[p::phases]) - median(less[p::phases]) for p in range(phases)]
        return sum(steps) / phases, steps

    delta, steps = averaged(full_ns, bare_ns)
    print(f"  {'':<56} {'median':>9} {'p90':>9} {'p99':>9}")
    for label, ns in (("agent tick without the resource probe", bare_ns),
                      ("agent tick with it", full_ns),
                      ("agent tick with it, its series not judged", unjudged_ns)):  # fmt: skip
        p50, p90, p99 = (fmt_us(percentile(ns, q)) for q in (50, 90, 99))
        print(f"  {label:<56} {p50:>9} {p90:>9} {p99:>9}")
    status = {s.name: s for s in full.sampler.status()}
    print(f"  resource probe's own pass (sampler's last_duration): "
          f"{fmt_us(status['resources'].last_duration * 1e9)}")  # fmt: skip

    # The budgeted passes, each timed alone, spaced as their cadences space them.
    probe = ResourceProbe(interval=settings.interval)
    probe.sample()
    size = os.stat("/proc/self/fd").st_size
    passes = {
        "fds": time_pass(lambda: probe._list_fds(size), 5),
        "maps": time_pass(probe._refresh_maps, 20),
        "children": time_pass(probe._refresh_children, 20),
        "asyncio": time_pass(probe._refresh_tasks, 20),
    }
    amortized = 0.0
    print(f"  budgeted passes (tick budget {fmt_us(TICK_BUDGET * 1e9)} at the "
          f"{settings.interval:g} s interval, shared {', '.join(f'{k} {v:.0%}' for k, v in SHARES.items())}):")  # fmt: skip  # noqa: E501
    for name, ns in passes.items():
        per_second = TICK_BUDGET / settings.interval * SHARES[name]
        spacing = max(settings.interval, ns / 1e9 / per_second)
        per_tick = ns * settings.interval / spacing
        amortized += per_tick
        print(f"    {name:<9} {fmt_us(ns):>9} a pass, every {spacing:,.0f} s: "
              f"{fmt_us(per_tick)} a tick on average")  # fmt: skip
    probe.close()
    cost = delta + amortized
    probe_part, _ = averaged(unjudged_ns, bare_ns)
    detectors, detector_steps = averaged(full_ns, unjudged_ns)
    print(f"  the every-tick part, averaged over the {phases} ticks of a detector bucket: "
          f"{fmt_us(delta)} (tick by tick: {', '.join(fmt_us(d) for d in steps)}; "
          f"the median tick's {fmt_us(median(full_ns) - median(bare_ns))} leaves out the "
          f"bucket-closing tick)")  # fmt: skip
    print(f"  of the every-tick part: the probe and its samples' bookkeeping "
          f"{fmt_us(probe_part)}, the detector on its six judged series {fmt_us(detectors)} "
          f"(of which its decisions, on the bucket-closing tick: "
          f"{fmt_us((max(detector_steps) - median(detector_steps)) / phases)} a tick)")  # fmt: skip
    ok = cost <= TARGET_TICK_NS
    line = (
        f"resource probe's cost per agent tick with {FDS:,} fds: {fmt_us(cost)} "
        f"({fmt_us(delta)} every tick + {fmt_us(amortized)} amortized passes; "
        f"{fmt_ratio(median(full_ns) / median(bare_ns))} the bare tick of "
        f"{fmt_us(median(bare_ns))}) "
        f"(target ≤ {fmt_us(TARGET_TICK_NS)}: {verdict(ok)})"
    )
    return ok, line


# -- diag watch ------------------------------------------------------------------------------

TARGET = f"""
import threading, sys
sys.path.insert(0, {os.getcwd()!r})
from benchmarks.bench_resources import hold_fds
held = hold_fds({FDS})
print("ready", flush=True)
threading.Event().wait()
"""


def measure_watch(quick: bool) -> tuple[bool, str]:
    share, minimal_share, elapsed = watch_cpu_shares(TARGET, 10.0 if quick else 60.0)
    ok = share <= TARGET_WATCH_SHARE
    line = (
        f"diag watch at a 1 s interval on a process with {FDS:,} fds: {share * 100:.3f} % of one "
        f"core over {elapsed:.0f} s (target ≤ 1 %: {verdict(ok)}); a loop reading "
        f"/proc/PID/status each second: {minimal_share * 100:.3f} % "
        f"({share / max(minimal_share, 1e-6):.1f}x)"
    )
    return ok, line


# -- the forecast ----------------------------------------------------------------------------

LEAKER = """
import os, resource, sys, time
limit, rate = int(sys.argv[1]), float(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
held = []
print("ready", flush=True)
started = time.monotonic()
while True:
    while len(held) < rate * (time.monotonic() - started):
        try:
            held.append(open(sys.executable, "rb"))
        except OSError:
            print(f"exhausted {time.time()}", flush=True)
            time.sleep(3600)
    time.sleep(0.01)
"""


@dataclasses.dataclass
class Run:
    limit: int
    rate: float
    proc: subprocess.Popen[str]
    watcher: Watcher
    forecasts: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (t, s)
    exhausted: float | None = None


def measure_forecast(quick: bool) -> tuple[bool, str]:
    time_scale, tick = 120.0, 0.1
    cases = [(512, 12.0)] if quick else [(1024, 12.0), (1536, 20.0), (2048, 30.0)]
    runs: list[Run] = []
    for limit, rate in cases:
        proc = subprocess.Popen(
            [sys.executable, "-c", LEAKER, str(limit), str(rate)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        watcher = Watcher(proc.pid, "off", time_scale=time_scale, interval=tick)
        runs.append(Run(limit, rate, proc, watcher))
    deadline = time.monotonic() + max(limit / rate for limit, rate in cases) + 30
    try:
        while any(r.exhausted is None for r in runs) and time.monotonic() < deadline:
            for run in runs:
                if run.exhausted is not None:
                    continue
                now = time.time()
                row = run.watcher.tick(now)
                fds = (row or {}).get("resources", {}).get("fds")
                if fds and fds["verdict"] == "leak" and fds["seconds_to_exhaustion"]:
                    run.forecasts.append((now, fds["seconds_to_exhaustion"]))
                assert run.proc.stdout is not None
                poller = select.poll()
                poller.register(run.proc.stdout, select.POLLIN)
                if poller.poll(0):
                    run.exhausted = float(run.proc.stdout.readline().split()[1])
            time.sleep(tick)
    finally:
        for run in runs:
            run.watcher.close()
            run.proc.kill()
            run.proc.wait()
            assert run.proc.stdout is not None
            run.proc.stdout.close()
    firsts, all_errors = [], []
    print(f"  detector time_scale {time_scale:g}, watcher tick {tick:g} s")
    for run in runs:
        if run.exhausted is None or not run.forecasts:
            print(f"    RLIMIT_NOFILE {run.limit}, {run.rate:g} fds/s: no forecast before the end")
            firsts.append(math.inf)
            continue
        errors = [abs(math.log2(s / (run.exhausted - t))) for t, s in run.forecasts
                  if run.exhausted - t > 1.0]  # fmt: skip
        t0, s0 = run.forecasts[0]
        true0 = run.exhausted - t0
        firsts.append(errors[0] if errors else math.inf)
        all_errors += errors
        print(
            f"    RLIMIT_NOFILE {run.limit}, {run.rate:g} fds/s: first leak verdict forecast "
            f"{s0:.1f} s, true {true0:.1f} s (|log2| {abs(math.log2(s0 / true0)):.3f}); median "
            f"|log2| over {len(errors)} later forecasts {median(errors):.3f}"
        )
    worst = max(firsts)
    ok = worst <= TARGET_LOG2 and bool(all_errors) and median(all_errors) <= TARGET_LOG2
    line = (
        f"time to fd exhaustion forecast at the first leak verdict: worst |log2| {worst:.3f}, "
        f"median over every forecast {median(all_errors) if all_errors else math.nan:.3f} "
        f"(target ≤ {TARGET_LOG2}, i.e. within 25 %: {verdict(ok)})"
    )
    return ok, line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke-test run")
    args = parser.parse_args(argv)
    print(f"resources benchmark{' (--quick: indicative only)' if args.quick else ''}: "
          f"{os.cpu_count()} CPUs, kernel {os.uname().release}")  # fmt: skip
    held = hold_fds(FDS)
    size, listed = os.stat("/proc/self/fd").st_size, len(os.listdir("/proc/self/fd"))
    print(f"  this process holds {listed:,} fds (stat size {size:,}); a count by stat "
          f"{fmt_us(time_pass(lambda: os.stat('/proc/self/fd'), 200))}, by listdir "
          f"{fmt_us(time_pass(lambda: os.listdir('/proc/self/fd'), 5))}")  # fmt: skip
    results = [measure_tick(args.quick)]
    release(held)
    results.append(measure_watch(args.quick))
    results.append(measure_forecast(args.quick))
    print()
    for _, line in results:
        print(line)
    if args.quick:
        print("--quick: a smoke test; the verdict does not set the exit status")
        return 0
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
