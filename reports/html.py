"""The post-mortem as one self-contained HTML file: inline CSS and SVG, no script, no network,
so it opens on an air-gapped laptop and prints well."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from diag.units import format_bytes, format_duration
from reports import text
from reports.dump import render_text
from reports.postmortem import PostMortem, SeriesReport

WIDTH, HEIGHT = 880, 280
LEFT, RIGHT, TOP, BOTTOM = 72, 16, 16, 36

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1d2430;
       margin: 2rem auto; max-width: 960px; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin: 0 0 .3rem; }
.how { font-size: 1.1rem; padding: .6rem .9rem; border-radius: 6px; margin: .8rem 0; }
.how.oom-kill, .how.killed { background: #fde8e8; border-left: 5px solid #c0392b; }
.how.exit, .how.running { background: #e8f4fd; border-left: 5px solid #2471a3; }
.how.unknown { background: #f2f2f2; border-left: 5px solid #888; }
.meta { color: #5a6270; font-size: .9rem; }
ul.evidence { margin: .3rem 0 0 1.2rem; padding: 0; }
h2 { font-size: 1.15rem; margin: 1.6rem 0 .3rem; }
svg { background: #fbfcfd; border: 1px solid #e3e6ea; border-radius: 4px; }
.legend span { margin-right: 1.2rem; font-size: .85rem; }
.swatch { display: inline-block; width: 14px; height: 3px; vertical-align: middle;
          margin-right: .3rem; }
table { border-collapse: collapse; margin: .4rem 0; }
td, th { border-bottom: 1px solid #e3e6ea; padding: .25rem .8rem .25rem 0; text-align: left; }
.problems { color: #8a5a00; }
"""


def _scale(lo: float, hi: float, a: float, b: float):  # type: ignore[no-untyped-def]
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _points(xs: Sequence[float], ys: Sequence[float], fx, fy) -> str:  # type: ignore[no-untyped-def]
    return " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in zip(xs, ys, strict=True))


def chart(series: SeriesReport, report: PostMortem) -> str:
    """One series against its limit, with the first warning, its forecast and the end."""
    t0 = series.times[0]
    end = report.last_sample or series.times[-1]
    alert = series.alerts[0] if series.alerts else None
    forecast_end = None
    if alert is not None and alert.seconds_to_oom is not None:
        forecast_end = alert.start + alert.seconds_to_oom
    t_max = max(end, forecast_end or end)
    limits = [x for x in series.limits if x is not None]
    y_max = max([*series.values, *limits]) * 1.05
    y_min = min(series.values) * 0.95 if not limits else 0.0
    fx = _scale(t0, t_max, LEFT, WIDTH - RIGHT)
    fy = _scale(y_min, y_max, HEIGHT - BOTTOM, TOP)
    parts = [f'<svg width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'role="img" aria-label="{html.escape(series.title)}">']  # fmt: skip
    for v in _nice_ticks(y_min, y_max):  # y grid and labels
        y = fy(v)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eceff2"/>'
        )
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
                     f'fill="#5a6270">{format_bytes(v)}</text>')  # fmt: skip
    for i in range(6):  # x labels: time since the first sample
        t = t0 + (t_max - t0) * i / 5
        anchor = "start" if i == 0 else "end" if i == 5 else "middle"
        label = f"+{format_duration(t - t0)}"
        parts.append(f'<text x="{fx(t):.1f}" y="{HEIGHT - 12}" font-size="11" '
                     f'text-anchor="{anchor}" fill="#5a6270">{label}</text>')  # fmt: skip
    limit_points = [
        (t, v) for t, v in zip(series.times, series.limits, strict=True) if v is not None
    ]
    if limit_points:
        xs, ys = zip(*limit_points, strict=True)
        parts.append(f'<polyline fill="none" stroke="#c0392b" stroke-width="1.5" '
                     f'stroke-dasharray="6 4" points="{_points(xs, ys, fx, fy)}"/>')  # fmt: skip
    parts.append(f'<polyline fill="none" stroke="#2471a3" stroke-width="1.8" '
                 f'points="{_points(series.times, series.values, fx, fy)}"/>')  # fmt: skip
    if alert is not None:
        x = fx(alert.start)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" '
                     f'stroke="#e67e22" stroke-width="1.5"/>')  # fmt: skip
        parts.append(f'<text x="{x + 4:.1f}" y="{TOP + 12}" font-size="11" fill="#b35900">'
                     f'first warning</text>')  # fmt: skip
        if forecast_end is not None and limits:
            y1, x2, y2 = fy(_value_at(series, alert.start)), fx(forecast_end), fy(limits[-1])
            parts.append(f'<line x1="{x:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                         f'stroke="#e67e22" stroke-dasharray="3 3"/>')  # fmt: skip
    if report.ended.get("how") in ("oom-kill", "killed", "exit"):
        x = fx(end)
        label = {"oom-kill": "OOM kill", "killed": "killed", "exit": "exit"}[report.ended["how"]]
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" '
                     f'stroke="#7b241c" stroke-width="2"/>')  # fmt: skip
        parts.append(f'<text x="{x - 4:.1f}" y="{TOP + 26}" font-size="11" text-anchor="end" '
                     f'fill="#7b241c">{label}</text>')  # fmt: skip
    parts.append("</svg>")
    return "\n".join(parts)


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round ticks in binary units (0.5 GiB, 256 MiB...), about ``count`` across the range."""
    unit = 1024.0 ** max(0, min(4, int(math.log(max(high, 1.0), 1024))))
    raw = (high - low) / unit / max(count - 1, 1) or 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    step = unit * next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = []
    value = math.ceil(low / step) * step
    while value <= high + 1e-9 * step:
        ticks.append(value)
        value += step
    return ticks


def _value_at(series: SeriesReport, t: float) -> float:
    for time, value in zip(series.times, series.values, strict=True):
        if time >= t:
            return value
    return series.values[-1]


LEGEND = (
    '<div class="legend">'
    '<span><i class="swatch" style="background:#2471a3"></i>memory</span>'
    '<span><i class="swatch" style="background:#c0392b"></i>limit</span>'
    '<span><i class="swatch" style="background:#e67e22"></i>first warning and its forecast</span>'
    '<span><i class="swatch" style="background:#7b241c"></i>end of the process</span></div>'
)


def render(report: PostMortem) -> str:
    e = html.escape
    how = report.ended.get("how", "unknown")
    evidence = "".join(f"<li>{e(line)}</li>" for line in text.evidence_lines(report))
    meta = [text.span_line(report)]
    meta += [f"host {report.host}"] if report.host else []
    meta += [f"{k} {v}" for k, v in report.versions.items() if v]
    body = [
        f"<h1>{e(text.headline(report))}</h1>",
        f'<div class="meta">{e(" · ".join(meta))}</div>',
        f'<div class="how {e(how)}">{e(text.verdict_line(report))}'
        f'<ul class="evidence">{evidence}</ul></div>',
    ]
    if report.series:
        body.append(LEGEND)
    for series in report.series:
        body.append(f"<h2>{e(series.title)}</h2>")
        body.append(chart(series, report))
    rows = "".join(
        f"<tr><td>{e(name)}</td><td>{e(rest)}</td></tr>"
        for name, _, rest in (line.partition(": ") for line in text.memory_lines(report))
    )
    body.append(f"<h2>Memory, first to last sample</h2><table>{rows}</table>")
    if report.last_finding:
        tree = render_text(report.last_finding)
        body.append(f"<h2>Last culprit finding</h2><pre>{e(tree)}</pre>")
    if report.problems:
        items = "".join(f"<li>{e(p)}</li>" for p in report.problems)
        body.append(f'<h2>History</h2><ul class="problems">{items}</ul>')
    title = e(f"diag report: pid {report.pid}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
