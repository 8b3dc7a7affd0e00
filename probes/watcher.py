"""Watching a process from outside: the engine behind ``diag watch`` and the demo.

A ``Watcher`` samples any process's RSS (and USS/PSS, swap), its cgroup limit and OOM-kill
counter, its NVML GPU memory and its resources (fds by kind, sockets by state, threads,
children, memory maps, /dev/shm) with the same probes the agent uses, judges RSS and each
resource against its limit with the same detector, reads a richer view from an agent running
in the target (over its control socket), records a history that ``diag report`` reads, and,
when the target is gone, works out how it ended from what an outsider can see. Time, the
agent reader and the kernel log are passed in; ``follow`` is the loop both commands run.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from diag import procfs, watched
from diag.control import DUMP_STATE, request
from diag.detect import (
    SETTLE_SECONDS,
    Detector,
    DetectorConfig,
    DisturbanceDiscount,
    RecentRate,
    Verdict,
)
from diag.history import WATCH_ENDED, HistoryWriter, default_root, run_name
from diag.model import Clock, Labels, Sample, series_key
from probes.base import ProbeUnavailable
from probes.cuda import NvmlProbe
from probes.limits import LimitsProbe
from probes.process import ProcessProbe
from probes.resources import ResourceProbe

RSS = "process_resident_memory_bytes"
#: What the resource readings may cost ``diag watch`` per tick, amortized (the by-kind fd
#: listing is budgeted by it: 40 ms for 10k fds runs every 40 s at a 1 s interval).
WATCH_TICK_BUDGET = 1e-3

AgentReader = Callable[[int], "dict[str, float] | None"]


def agent_series(pid: int) -> dict[str, float] | None:
    """The series ``diag watch`` shows of an agent in ``pid`` (embedded, diag run or attached),
    read over its control socket from its latest tick, plus its live dump state; None when it
    runs no agent we may talk to."""
    reply = request(pid, "latest", timeout=0.5)
    if reply is None:
        return None
    shown = watched.names_read_by("watch")
    out: dict[str, float] = {}
    for name, value, labels in reply.get("samples", []):
        if name in shown:
            out[series_key(name, tuple(sorted(labels.items())))] = float(value)
    for name in DUMP_STATE:  # live: fresher than the last tick's gauges
        if name in reply:
            out[name] = float(reply[name])
    return out


def requests_served(agent: dict[str, float] | None) -> float | None:
    """The agent's requests so far, all endpoints: the detector's load covariate (None when
    no agent counts requests)."""
    if not agent:
        return None
    counts = [value for key, value in agent.items() if key.startswith("requests_total")]
    return sum(counts) if counts else None


class DumpSettling:
    """Whether the agent in the target is dumping, or did within the last ``SETTLE_SECONDS``,
    from its dump gauges: its dumps disturb RSS (see ``DisturbanceDiscount``). A dump that
    began and ended between two readings shows as a change of ``dumps_total``."""

    def __init__(self) -> None:
        self._dumps_seen: float | None = None
        self._until = -math.inf

    def disturbed(self, t: float, agent: dict[str, float] | None) -> bool:
        if agent is not None:
            dumps = agent.get("dumps_total")
            changed = dumps is not None and dumps != self._dumps_seen
            if changed and self._dumps_seen is None:
                changed = False  # the first reading: dumps before the watch began
            self._dumps_seen = dumps
            if changed or agent.get("dump_active"):
                self._until = t + SETTLE_SECONDS
        return t < self._until


class Watcher:
    def __init__(
        self,
        pid: int,
        history: str | None,
        limit: float | None = None,
        sensitivity: float = 1.0,
        time_scale: float = 1.0,
        *,
        clock: Clock = time.time,
        read_agent: AgentReader = agent_series,
        read_kernel_log: Callable[[], Iterable[str]] = procfs.read_kmsg,
        proc_root: str = "/proc",
        interval: float = 1.0,
    ) -> None:
        self.pid = pid
        self._clock = clock
        self._read_agent = read_agent
        self._read_kernel_log = read_kernel_log
        self._proc_root = proc_root
        self.process = ProcessProbe(pid, proc_root=proc_root)
        self.limits = LimitsProbe(pid, proc_root=proc_root)
        self.nvml = NvmlProbe(pid)
        self.resources = ResourceProbe(
            pid, proc_root=proc_root, interval=interval, tick_budget=WATCH_TICK_BUDGET
        )
        self.fixed_limit = limit
        # One pid: the watch ends with the process, so no fall it sees is a restart.
        config = DetectorConfig(sensitivity=sensitivity, time_scale=time_scale, one_process=True)
        self.detector = Detector(limit, config)
        #: One detector per resource (fds, threads...), each against its own limit.
        self.resource_detectors: dict[str, Detector] = {}
        self._config = config
        self.recent = RecentRate()
        # The agent's dumps disturb RSS: held back while one runs and until it settles.
        self.discount = DisturbanceDiscount()
        self.settling = DumpSettling()
        self.verdict: Verdict | None = None
        self.oom_kills_last: float | None = None
        self.saw_leak = False
        #: How the target ended, once ``ended`` has found out.
        self.exit: dict[str, Any] | None = None
        self.command = procfs.command_of(pid, proc_root)
        self.writer: HistoryWriter | None = None
        if history != "off":
            root = history or default_root()
            started = clock()
            run_dir = os.path.join(root, run_name(started, pid) + "-watch")
            self.writer = HistoryWriter(run_dir)
            self.writer.write_event(
                "start", started, pid=pid, command=self.command, watcher=os.getpid()
            )

    def tick(self, t: float) -> dict[str, Any] | None:
        """One pass; None once the target is gone."""
        try:
            samples = self.process.sample()
        except ProbeUnavailable:
            return None
        samples = list(samples) + self._optional(self.limits) + self._optional(self.nvml)
        samples += self._optional(self.resources)
        values = {(s.name, s.labels): s.value for s in samples}
        rss = values[(RSS, ())]
        limit = self.fixed_limit
        if limit is None:
            limit = watched.limit_for(RSS, (), rss, values)
        kills = values.get(("cgroup_oom_kills_total", ()))
        if kills is not None:
            self.oom_kills_last = kills
        agent = self._read_agent(self.pid)
        previous = self.verdict
        verdict = previous
        adjusted = self.discount.adjust(rss, self.settling.disturbed(t, agent))
        if adjusted is not None:
            if limit is not None:
                limit -= self.discount.offset  # the headroom is the same
            verdict = self.detector.update(t, adjusted, limit, requests_served(agent))
        if verdict is None:
            verdict = self.detector.verdict
        recent = self.recent.update(t, rss)
        self.verdict = verdict
        self.saw_leak = self.saw_leak or verdict.state == "leak"
        resources = self._judge_resources(t, samples, values)
        if self.writer is not None:
            self.writer.write_samples(t, samples)
            if previous is None or previous.state != verdict.state:
                self.writer.write_event("verdict", t, series=RSS, **verdict.fields())
        row: dict[str, Any] = {
            "t": t,
            "pid": self.pid,
            "rss_bytes": rss,
            "limit_bytes": limit,
            # The detector's rate once it has one; until then, the last two minutes'.
            "growth_bytes_per_second": verdict.rate if verdict.rate is not None else recent,
            "verdict": verdict.state,
            "reason": verdict.reason,
            "seconds_to_oom": verdict.seconds_to_oom,
            "seconds_to_oom_low": verdict.seconds_to_oom_low,
            "seconds_to_oom_high": verdict.seconds_to_oom_high,
        }
        if resources:
            row["resources"] = resources
            row["breakdown"] = breakdown(samples)
        if self.resources.notes:
            row["notes"] = list(self.resources.notes)
        if agent is not None:
            row["agent"] = agent
        return row

    def _judge_resources(
        self, t: float, samples: list[Sample], values: dict[tuple[str, Labels], float]
    ) -> dict[str, dict[str, Any]]:
        """Each resource's usage, limit and verdict (the agent's rule: ``limit_for``)."""
        out: dict[str, dict[str, Any]] = {}
        for sample in samples:
            if sample.name != USAGE:
                continue
            resource = dict(sample.labels)["resource"]
            limit = watched.limit_for(USAGE, sample.labels, sample.value, values)
            detector = self.resource_detectors.get(resource)
            if detector is None:
                detector = self.resource_detectors[resource] = Detector(limit, self._config)
            previous = detector.verdict
            verdict = detector.update(t, sample.value, limit)
            self.saw_leak = self.saw_leak or verdict.state == "leak"
            if self.writer is not None and previous.state != verdict.state:
                key = series_key(USAGE, sample.labels)
                self.writer.write_event("verdict", t, series=key, **verdict.fields())
            out[resource] = {
                "usage": sample.value,
                "limit": limit,
                "verdict": verdict.state,
                "reason": verdict.reason,
                "growth_per_second": verdict.rate,
                "seconds_to_exhaustion": verdict.seconds_to_oom,
                "seconds_to_exhaustion_low": verdict.seconds_to_oom_low,
                "seconds_to_exhaustion_high": verdict.seconds_to_oom_high,
            }
        return out

    def _optional(self, probe: LimitsProbe | NvmlProbe | ResourceProbe) -> list[Sample]:
        try:
            return list(probe.sample())
        except ProbeUnavailable:
            return []

    def ended(self, t: float) -> dict[str, Any]:
        """How the target ended, from what the watcher can see; recorded in the history."""
        record: dict[str, Any] = {"event": "exit", "t": t, "pid": self.pid}
        record.update(procfs.zombie_exit(self.pid, self._proc_root) or {"status": None})
        if record.get("status") is None and "signal" not in record:
            record["status_note"] = "not our child: its exit status went to its parent"
        kills = self.limits.oom_kills()
        after = None if kills is None else float(kills)
        record["oom_kills_before"] = self.oom_kills_last
        record["oom_kills_after"] = after
        try:
            lines = procfs.oom_lines_for(self.pid, self._read_kernel_log())
            record["kernel_log"] = lines[-2:]
        except OSError as exc:
            lines = []
            record["kernel_log"] = f"the kernel log is not readable ({exc.strerror or exc})"
        oom_counted = (
            after is not None and self.oom_kills_last is not None and (after > self.oom_kills_last)
        )
        if lines or oom_counted:
            record["how"] = "oom-kill"
        elif "signal" in record:
            record["how"] = "killed"
        elif record.get("status") is not None:
            record["how"] = "exit"
        else:
            record["how"] = "unknown"
        if self.writer is not None:
            fields = {k: v for k, v in record.items() if k not in ("event", "t")}
            self.writer.write_event("exit", t, **fields)
            self.writer.close()
        self.exit = record
        return record

    def close(self) -> None:
        if self.writer is not None:
            self.writer.write_event("stop", self._clock(), reason=WATCH_ENDED)
            self.writer.close()
        self.process.close()
        self.limits.close()
        self.resources.close()


USAGE = watched.RESOURCE_USAGE
#: The breakdowns a watch row carries: {metric: {"label value(s)": count}}.
BREAKDOWNS = ("open_fds", "sockets", "child_processes", "threads")


def breakdown(samples: list[Sample]) -> dict[str, dict[str, float]]:
    """The resource breakdowns of a tick, e.g. ``{"sockets": {"tcp CLOSE_WAIT": 3}}``."""
    out: dict[str, dict[str, float]] = {}
    for sample in samples:
        if sample.name in BREAKDOWNS:
            labels = dict(sample.labels)
            key = " ".join(labels[k] for k in ("type", "state", "kind") if k in labels)
            out.setdefault(sample.name, {})[key] = sample.value
    return out


def follow(
    watcher: Watcher,
    interval: float,
    stop: threading.Event,
    *,
    duration: float | None = None,
    clock: Clock = time.time,
    monotonic: Clock = time.monotonic,
) -> Iterator[dict[str, Any]]:
    """Tick ``watcher`` every ``interval`` seconds and yield each row, until the target is gone
    (``watcher.exit`` then says how it ended), ``duration`` has passed or ``stop`` is set."""
    started = monotonic()
    while True:
        row = watcher.tick(clock())
        if row is None:
            watcher.ended(clock())
            return
        yield row
        if duration is not None and monotonic() - started >= duration:
            return
        if stop.wait(interval):
            return
