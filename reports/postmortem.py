"""The post-mortem of a run: what the history says, as data; the renderers only draw it.

``build(run_dir)`` reads a run, replays the detector over its memory series (the same code the
agent ran), and works out how the process ended from the evidence at hand: a stop record, an
exit record written by a watcher, a process still alive, the cgroup's memory at the last
samples, and the kernel's log line for the pid when it can be read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from diag import watched
from diag.detect import Alert, Detector, DetectorConfig, leak_episodes, replay
from diag.history import History, SeriesData, read_run
from diag.model import Labels
from reports.ending import (
    RESOURCE_LIMIT,
    RESOURCE_USAGE,
    how_it_ended,
    join_watcher,
    resource_title,
)

MAX_PLOT_POINTS = 800


@dataclass
class SeriesReport:
    key: str
    title: str
    labels: dict[str, str]
    times: list[float]
    values: list[float]
    limits: list[float | None]  # the limit the series was judged against, per plotted point
    first: float
    last: float
    alerts: list[Alert]
    #: The detector's last word on the series (recorded live, else replayed): a state such as
    #: ``insufficient_data``, ``warming_up``, ``steady``, ``growing`` or ``leak``, its reason,
    #: and the growth rate behind it (bytes per second) when it measured one.
    verdict: str = "insufficient_data"
    verdict_reason: str = ""
    verdict_rate: float | None = None
    #: ``bytes`` (a ``..._bytes`` series) or ``count`` (descriptors, threads, tasks...).
    unit: str = "bytes"
    #: The resource a ``resource_usage`` series counts (``fds``, ``threads``...), else None.
    resource: str | None = None


@dataclass
class PostMortem:
    run_dir: str
    pid: int | None
    command: list[str]
    host: str | None
    versions: dict[str, str | None]
    first_sample: float | None
    last_sample: float | None
    samples: int
    ended: dict[str, Any]
    alerts: list[dict[str, Any]]
    lead_seconds: float | None
    verdicts: list[dict[str, Any]]
    retained_per_request: dict[str, float]
    last_finding: dict[str, Any] | None
    series: list[SeriesReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The documented ``diag report --json`` document (series data left out)."""
        document = asdict(self)
        document.pop("series")
        document["memory"] = [
            {"series": s.key, "first": s.first, "last": s.last, "samples": len(s.times)}
            for s in self.series
            if s.unit == "bytes"
        ]
        document["resources"] = [
            {"series": s.key, "resource": s.resource, "first": s.first, "last": s.last,
             "limit": _last_limit(s), "samples": len(s.times)}
            for s in self.series
            if s.unit != "bytes"
        ]  # fmt: skip
        return document


def _last_limit(series: SeriesReport) -> float | None:
    limits = [x for x in series.limits if x is not None]
    return limits[-1] if limits else None


# -- how did it end: reports.ending ---------------------------------------------------------


def _watcher_exit(run_dir: str, pid: int | None) -> dict[str, Any] | None:
    """The exit record of a ``diag watch`` of the same process beside this run, if any."""
    if pid is None or run_dir.rstrip("/").endswith("-watch"):
        return None
    root = os.path.dirname(run_dir.rstrip("/"))
    try:
        names = sorted(n for n in os.listdir(root) if n.endswith(f"-{pid}-watch"))
    except OSError:
        return None
    for name in reversed(names):
        exits = read_run(os.path.join(root, name)).events_of("exit")
        if exits:
            return exits[-1]
    return None


# -- the memory series and the detector's view of them --------------------------------------


def _limit_for(history: History, data: SeriesData) -> Callable[[int], float | None]:
    """The limit each sample is judged against, as the agent does (``watched.limit_for``:
    headroom for host memory, the device total for a GPU)."""
    row = watched.BY_NAME[data.name]
    labels = tuple(sorted(data.labels.items()))
    readings: dict[tuple[str, Labels], float] = {}
    if data.name == RESOURCE_USAGE:
        return _same_labels_limit(history, data, row.total or RESOURCE_LIMIT)
    if row.total is not None:
        total = history.get(row.total, **data.labels)
        if total is not None and total.values:
            readings[(row.total, labels)] = total.values[-1]
        return lambda i: watched.limit_for(data.name, labels, data.values[i], readings)
    usage = history.get(watched.HOST_USAGE)
    limit = history.get(watched.HOST_LIMIT)
    if usage is None or limit is None or not usage.values:
        return lambda i: None
    by_time = dict(zip(usage.times, zip(limit.values, usage.values, strict=False), strict=False))

    def at(i: int) -> float | None:
        pair = by_time.get(data.times[i])
        if pair is None:
            return None
        tick: dict[tuple[str, Labels], float] = {
            (watched.HOST_LIMIT, ()): pair[0],
            (watched.HOST_USAGE, ()): pair[1],
        }
        return watched.limit_for(data.name, labels, data.values[i], tick)

    return at


def _same_labels_limit(
    history: History, data: SeriesData, name: str
) -> Callable[[int], float | None]:
    """The limit of a count (``resource_limit{resource}`` beside ``resource_usage``) at each
    sample's time, else its last reading: a limit raised or lowered as the run goes is drawn
    where it changed."""
    limit = history.get(name, **data.labels)
    if limit is None or not limit.values:
        return lambda i: None
    by_time = dict(zip(limit.times, limit.values, strict=True))
    last = limit.values[-1]
    return lambda i: by_time.get(data.times[i], last)


def _title(title: str, data: SeriesData) -> str:
    """The series' title and labels; a resource's count is named by its resource."""
    resource = data.labels.get("resource")
    if data.name == RESOURCE_USAGE and resource is not None:
        rest = {k: v for k, v in data.labels.items() if k != "resource"}
        return resource_title(resource) + "".join(f" {k}={v}" for k, v in sorted(rest.items()))
    return title + "".join(f" {k}={v}" for k, v in sorted(data.labels.items()))


def _downsample(n: int) -> range:
    step = max(1, n // MAX_PLOT_POINTS)
    return range(0, n, step)


def alerts_from_verdicts(events: Iterable[dict[str, Any]], key: str) -> list[Alert] | None:
    """The leak episodes the agent (or a watcher) recorded for a series as it ran: exactly what
    it saw and exported. None when it recorded no verdicts for that series."""
    verdicts = [e for e in events if e.get("kind") == "verdict" and e.get("series") == key]
    if not verdicts:
        return None
    points = (
        (
            float(e["t"]),
            e.get("state", ""),
            e.get("seconds_to_oom"),
            e.get("seconds_to_oom_low"),
            e.get("seconds_to_oom_high"),
        )
        for e in verdicts
    )
    return leak_episodes(key, points)


def _series_reports(history: History) -> list[SeriesReport]:
    out: list[SeriesReport] = []
    for row in watched.read_by("report"):
        name, title = row.name, row.title
        for key, data in sorted(history.series.items()):
            if data.name != name or len(data.times) < 2:
                continue
            limit_at = _limit_for(history, data)
            picked = list(_downsample(len(data.times)))
            if picked[-1] != len(data.times) - 1:
                picked.append(len(data.times) - 1)  # the plot ends where the series ended
            judged_limit = limit_at(len(data.times) - 1)
            recorded = [
                e for e in history.events if e.get("kind") == "verdict" and e.get("series") == key
            ]
            alerts = alerts_from_verdicts(recorded, key)
            if alerts is None:  # nothing recorded live: replay the same detector now
                # A run is one process's history: no fall in it is a restart.
                detector = Detector(judged_limit, DetectorConfig(one_process=True))
                lows = data.lows
                alerts = replay(data.times, lows, judged_limit, series=key, detector=detector)
                final = detector.verdict
                state: str = final.state
                reason, rate = final.reason, final.rate
            else:
                state = str(recorded[-1].get("state", "insufficient_data"))
                reason = str(recorded[-1].get("reason", ""))
                rate = recorded[-1].get("rate")
            label = _title(title, data)
            highs = data.highs
            out.append(
                SeriesReport(
                    key=key,
                    title=label,
                    labels=dict(data.labels),
                    times=[data.times[i] for i in picked],
                    values=[highs[i] for i in picked],
                    limits=[limit_at(i) for i in picked],
                    first=data.values[0],
                    last=data.values[-1],
                    alerts=alerts,
                    verdict=state,
                    verdict_reason=reason,
                    verdict_rate=None if rate is None else float(rate),
                    unit="bytes" if name.endswith("_bytes") else "count",
                    resource=data.labels.get("resource") if name == RESOURCE_USAGE else None,
                )
            )
    return out


def build(run_dir: str, **kwargs: Any) -> PostMortem:
    history = read_run(run_dir)
    starts = history.events_of("start")
    start = starts[0] if starts else {}
    pid = start.get("pid")
    if pid is None:
        match = re.search(r"-(\d+)(-watch)?$", run_dir.rstrip("/"))
        pid = int(match.group(1)) if match else None
    ended = join_watcher(how_it_ended(history, pid, run_dir, **kwargs), _watcher_exit(run_dir, pid))
    series = _series_reports(history)
    alerts: list[dict[str, Any]] = [a.to_json() for s in series for a in s.alerts]
    alerts.sort(key=lambda a: a["start"])
    death = ended.get("at") or ended.get("last_sample") or history.last_sample
    lead = None
    if alerts and ended["how"] in ("oom-kill", "killed", "exit") and death is not None:
        lead = max(float(death) - alerts[0]["start"], 0.0)
    retained = {}
    for data in history.series.values():
        if data.name == "retained_bytes_per_request" and data.values:
            retained[data.labels.get("endpoint", "?")] = data.values[-1]
    findings = history.events_of("finding")
    return PostMortem(
        run_dir=run_dir,
        pid=pid,
        command=list(start.get("command", [])),
        host=start.get("host"),
        versions={k: start.get(k) for k in ("python", "diag", "torch")},
        first_sample=history.first_sample,
        last_sample=history.last_sample,
        samples=history.ticks,
        ended=ended,
        alerts=alerts,
        lead_seconds=lead,
        verdicts=[e for e in history.events if e.get("kind") == "verdict"],
        retained_per_request=retained,
        last_finding=findings[-1] if findings else None,
        series=series,
        problems=history.problems,
    )
