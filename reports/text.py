"""The post-mortem as words: the lines shared by the terminal, Markdown and HTML renderers."""

from __future__ import annotations

import datetime

from diag.units import format_bytes, format_duration, format_forecast
from reports.postmortem import PostMortem

HOW = {
    "oom-kill": "killed by the OOM killer",
    "killed": "killed without a clean stop (SIGKILL)",
    "exit": "exited",
    "running": "still running",
    "unknown": "ended, how is unknown",
}


def when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC"
    )


def headline(report: PostMortem) -> str:
    how = HOW.get(report.ended.get("how", "unknown"), report.ended.get("how", "?"))
    command = " ".join(report.command) or "?"
    return f"pid {report.pid} ({command}) {how}"


def verdict_line(report: PostMortem) -> str:
    if not report.alerts:
        return "The detector saw no leak in the recorded memory series."
    first = report.alerts[0]
    line = f"First leak warning at {when(first['start'])} on {first['series']}"
    if first["seconds_to_oom"] is not None:
        line += ", forecasting OOM in " + format_forecast(
            first["seconds_to_oom"], first["seconds_to_oom_low"], first["seconds_to_oom_high"]
        )
    if report.lead_seconds is not None:
        line += f"; {format_duration(report.lead_seconds)} before the end"
    return line + "."


def evidence_lines(report: PostMortem) -> list[str]:
    ended = report.ended
    lines = []
    if "why" in ended:
        lines.append(str(ended["why"]))
    if isinstance(ended.get("kernel_log"), list):
        lines.extend(f"kernel: {line}" for line in ended["kernel_log"])
    elif ended.get("kernel_log"):
        lines.append(str(ended["kernel_log"]))
    if "usage_of_limit_at_last_sample" in ended:
        lines.append(
            f"memory at the last sample: {ended['usage_of_limit_at_last_sample']:.0%} of its limit"
        )
    for key in ("status", "signal", "oom_kills_before", "oom_kills_after"):
        if key in ended:
            lines.append(f"{key.replace('_', ' ')}: {ended[key]}")
    return lines


def memory_lines(report: PostMortem) -> list[str]:
    lines = []
    for s in report.series:
        grew = s.last - s.first
        lines.append(
            f"{s.title}: {format_bytes(s.first)} -> {format_bytes(s.last)} ({format_bytes(grew)})"
        )
    for endpoint, per_request in sorted(report.retained_per_request.items()):
        lines.append(f"growth per request: {format_bytes(per_request)} per {endpoint} request")
    return lines


def span_line(report: PostMortem) -> str:
    if report.first_sample is None or report.last_sample is None:
        return "no samples recorded"
    span = format_duration(report.last_sample - report.first_sample)
    first, last = when(report.first_sample), when(report.last_sample)
    return f"{report.samples:,} ticks from {first} to {last} ({span})"
