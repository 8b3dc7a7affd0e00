"""The post-mortem as Markdown, for pasting into an issue."""

from __future__ import annotations

from diag.units import format_forecast
from reports import text
from reports.postmortem import PostMortem


def render(report: PostMortem) -> str:
    out = [f"### diag report: {text.headline(report)}", "", f"- {text.span_line(report)}"]
    out.append(f"- {text.verdict_line(report)}")
    out.extend(f"- {line}" for line in text.evidence_lines(report))
    counted = any(s.unit != "bytes" for s in report.series)
    out += ["", "| memory and resources | |" if counted else "| memory | |", "|---|---|"]
    for line in text.memory_lines(report):
        name, _, rest = line.partition(": ")
        out.append(f"| {name} | {rest} |")
    if report.alerts:
        out += ["", "| alert start | series | time to OOM (low to high) |", "|---|---|---|"]
        for a in report.alerts:
            tto = (
                "-"
                if a["seconds_to_oom"] is None
                else format_forecast(
                    a["seconds_to_oom"], a["seconds_to_oom_low"], a["seconds_to_oom_high"]
                )
            )
            out.append(f"| {text.when(a['start'])} | `{a['series']}` | {tto} |")
    if report.problems:
        out += ["", *(f"> history: {p}" for p in report.problems)]
    return "\n".join(out) + "\n"
