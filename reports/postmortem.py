"""The post-mortem of a run: what the history says, as data; the renderers only draw it.

``build(run_dir)`` reads a run, replays the detector over its memory series (the same code the
agent ran), and works out how the process ended from the evidence at hand: a stop record, an
exit record written by a watcher, a process still alive, the cgroup's memory at the last
samples, and the kernel's log line for the pid when it can be read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from diag import procfs, watched
from diag.detect import Alert, Detector, leak_episodes, replay
from diag.history import History, SeriesData, read_run
from diag.model import Labels

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
        ]
        return document


# -- how did it end -------------------------------------------------------------------------


def _kernel_log_lines(read_kmsg: Callable[[], Iterable[str]]) -> tuple[list[str], str | None]:
    try:
        return list(read_kmsg()), None
    except PermissionError:
        return [], "the kernel log is not readable (root or CAP_SYSLOG needed)"
    except OSError as exc:
        return [], f"the kernel log is not readable ({exc.strerror or exc})"


def how_it_ended(
    history: History,
    pid: int | None,
    *,
    proc_root: str = "/proc",
    read_kernel_log: Callable[[], Iterable[str]] = procfs.read_kmsg,
) -> dict[str, Any]:
    exits = history.events_of("exit")
    if exits:  # a watcher saw it end: its record is the best evidence
        record = dict(exits[-1])
        record.pop("kind", None)
        record.setdefault("how", "exit")
        return record
    stops = history.events_of("stop")
    if stops:
        return {"how": "exit", "clean_stop": True, "at": stops[-1].get("t"),
                "reason": stops[-1].get("reason")}  # fmt: skip
    if pid is not None and procfs.is_alive(pid, history.first_sample, proc_root):
        return {"how": "running", "pid": pid}
    if pid is None:
        return {"how": "unknown", "why": "the history has no start record"}
    evidence: dict[str, Any] = {
        "how": "killed",
        "clean_stop": False,
        "last_sample": history.last_sample,  # None when it died within its first second
        "why": "the history ends without a stop record: the process was killed (SIGKILL) "
        "or lost power",
    }
    lines, problem = _kernel_log_lines(read_kernel_log)
    kernel = procfs.oom_lines_for(pid, lines)
    if kernel:
        evidence.update(how="oom-kill", kernel_log=kernel[-2:])
    elif problem:
        evidence["kernel_log"] = problem
    usage = history.get("memory_limit_usage_bytes")
    limit = history.get("memory_limit_bytes")
    if usage is not None and limit is not None and usage.values and limit.values:
        share = usage.values[-1] / limit.values[-1] if limit.values[-1] else 0.0
        evidence["usage_of_limit_at_last_sample"] = round(share, 4)
        if share >= 0.9 and evidence["how"] == "killed":
            evidence["how"] = "oom-kill"
            evidence["why"] = (
                f"no stop record, and memory was at {share:.0%} of its limit at the last sample"
            )
    kills = history.get("cgroup_oom_kills_total")
    if kills is not None and len(kills.values) >= 2 and kills.values[-1] > kills.values[0]:
        evidence["cgroup_oom_kills_during_run"] = kills.values[-1] - kills.values[0]
    return evidence


# -- the memory series and the detector's view of them --------------------------------------


def _limit_for(history: History, data: SeriesData) -> Callable[[int], float | None]:
    """The limit each sample is judged against, as the agent does (``watched.limit_for``:
    headroom for host memory, the device total for a GPU)."""
    row = watched.BY_NAME[data.name]
    labels = tuple(sorted(data.labels.items()))
    readings: dict[tuple[str, Labels], float] = {}
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
            picked = _downsample(len(data.times))
            judged_limit = limit_at(len(data.times) - 1)
            alerts = alerts_from_verdicts(history.events, key)
            if alerts is None:  # nothing recorded live: replay the same detector now
                detector = Detector(judged_limit)
                lows = data.lows
                alerts = replay(data.times, lows, judged_limit, series=key, detector=detector)
            label = title + "".join(f" {k}={v}" for k, v in sorted(data.labels.items()))
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
    ended = how_it_ended(history, pid, **kwargs)
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
