"""The post-mortem as one self-contained HTML file: inline CSS and SVG, no script, no network,
so it opens on an air-gapped laptop and prints well."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from diag.units import format_duration
from reports import text
from reports.dump import render_text
from reports.postmortem import PostMortem, SeriesReport

WIDTH, HEIGHT = 880, 300
LEFT, RIGHT, TOP, BOTTOM = 76, 16, 34, 36
#: A series is drawn on an axis at least this share of its level tall, so that noise of a few
#: MiB on a flat GiB is drawn as the small wobble it is, not as a swing across the chart...
MIN_SPAN_SHARE = 0.05
#: ... and never shorter than this (a count: never shorter than a few of it).
MIN_SPAN_BYTES = 1024.0 * 1024.0
MIN_SPAN_COUNT = 4.0
#: Space above and below the data, as a share of the span drawn.
MARGIN_SHARE = 0.06
#: An axis whose bottom would sit this close to zero (a share of its span) starts at zero.
ZERO_SNAP_SHARE = 0.1
#: The limit joins the axis (a dashed line) when it is at most this many data spans above the
#: data; farther away it is written as headroom over the chart, and the axis stays the data's.
LIMIT_NEAR_SPANS = 1.0
#: The x axis runs past the end to show a forecast, by at most this share of the run.
FORECAST_SHARE = 0.5

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1d2430;
       margin: 2rem auto; max-width: 960px; padding: 0 1rem; overflow-wrap: break-word; }
h1 { font-size: 1.5rem; margin: 0 0 .3rem; }
.how { font-size: 1.1rem; padding: .6rem .9rem; border-radius: 6px; margin: .8rem 0;
       background: #f2f2f2; border-left: 5px solid #888; }
.how.oom-kill, .how.killed, .how.crash, .how.exception { background: #fde8e8;
  border-left: 5px solid #c0392b; }
.how.signal, .how.os-exit, .how.reboot { background: #fdf3e3; border-left: 5px solid #b9770e; }
.how.exit, .how.running { background: #e8f4fd; border-left: 5px solid #2471a3; }
.how.unknown { background: #f2f2f2; border-left: 5px solid #888; }
.meta { color: #5a6270; font-size: .9rem; }
ul.evidence { margin: .3rem 0 0 1.2rem; padding: 0; }
h2 { font-size: 1.15rem; margin: 1.6rem 0 .3rem; }
svg.chart { display: block; width: 100%; height: auto; background: #fbfcfd;
            border: 1px solid #e3e6ea; border-radius: 4px; }
.legend span { margin-right: 1.2rem; font-size: .85rem; }
.swatch { display: inline-block; width: 14px; height: 3px; vertical-align: middle;
          margin-right: .3rem; }
table { border-collapse: collapse; margin: .4rem 0; }
td, th { border-bottom: 1px solid #e3e6ea; padding: .25rem .8rem .25rem 0; text-align: left; }
pre.finding { font-size: .82rem; line-height: 1.35; max-width: 100%; white-space: pre-wrap;
              overflow-wrap: anywhere; word-break: break-word; background: #fbfcfd;
              border: 1px solid #e3e6ea; border-radius: 4px; padding: .6rem .8rem; }
.problems { color: #8a5a00; }
"""
#: Characters per line of the finding's tree: at .82rem monospace it fits the page's column;
#: narrower windows wrap it (pre-wrap) instead of scrolling.
FINDING_WIDTH = 100
#: The width of a character of the charts' 11-unit text, about, for keeping labels apart.
CHAR_WIDTH = 6.6
#: Round steps, in the axis unit (KiB, MiB, GiB...).
_STEPS = (1.0, 2.0, 2.5, 5.0)
#: Round steps for the time axis, in seconds.
_TIME_STEPS = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 10800,
               14400, 21600, 43200, 86400, 172800, 604800)  # fmt: skip


@dataclass(frozen=True)
class YAxis:
    low: float
    high: float
    ticks: list[float]
    unit: float  # 1, KiB, MiB, GiB... the ticks are labelled in
    unit_name: str
    limit: float | None  # the last limit the series was judged against
    limit_shown: bool  # near enough to be drawn on this axis
    flat: bool  # the series moved less than the detector's noise floor


def _unit(value: float) -> tuple[float, str]:
    for power, name in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if value >= 1024.0**power:
            return 1024.0**power, name
    return 1.0, "B"


def _nice_step(span: float, unit: float, intervals: int = 5) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten, in ``unit``) cutting ``span`` into
    about ``intervals``."""
    raw = span / unit / intervals
    if raw <= 0:
        return unit
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return unit * next(m * magnitude for m in (*_STEPS, 10.0) if m * magnitude >= raw * 0.999)


def y_axis(series: SeriesReport) -> YAxis:
    """The y axis a series is drawn on: its own range with a margin, in round ticks. The limit
    joins it only when near (``LIMIT_NEAR_SPANS``): a 22 GiB machine does not flatten 400 MiB
    of growth into the bottom pixel row."""
    lo, hi = min(series.values), max(series.values)
    level = max(abs(lo), abs(hi))
    flat = text.is_flat(series) and hi - lo <= 2 * text.FLAT_SHARE * max(level, 1.0)
    counted = series.unit != "bytes"
    least = max(MIN_SPAN_SHARE * level, MIN_SPAN_COUNT if counted else MIN_SPAN_BYTES)
    if hi - lo < least:  # barely moves: an axis tall enough to draw the movement at its size
        middle = (lo + hi) / 2
        lo, hi = middle - least / 2, middle + least / 2
    margin = MARGIN_SHARE * (hi - lo)
    low, high = lo - margin, hi + margin
    limits = [x for x in series.limits if x is not None]
    limit = limits[-1] if limits else None
    shown = limit is not None and low <= limit <= high + LIMIT_NEAR_SPANS * (hi - lo)
    if shown and limit is not None:
        high = max(high, limit + margin)
    if min(series.values) >= 0 and low < ZERO_SNAP_SHARE * (high - low):
        low = 0.0  # memory cannot go below zero, and near it the zero line is the reference
    unit, name = (1.0, "") if counted else _unit(max(abs(low), abs(high)))
    step = _nice_step(high - low, unit)
    if counted:
        step = float(max(1, math.ceil(step)))  # a count's ticks are whole numbers
    first = math.ceil(low / step - 1e-9)
    ticks = [i * step for i in range(first, math.floor(high / step + 1e-9) + 1)]
    return YAxis(low, high, ticks, unit, name, limit, shown, flat)


def _tick_label(value: float, axis: YAxis) -> str:
    step = (axis.ticks[1] - axis.ticks[0]) / axis.unit if len(axis.ticks) > 1 else 1.0
    decimals = next((d for d in range(4) if abs(round(step, d) - step) < 1e-6 * step), 3)
    if not axis.unit_name:  # a count
        return f"{value:,.{decimals}f}"
    return f"{value / axis.unit:.{decimals}f} {axis.unit_name}"


def time_ticks(t0: float, t1: float) -> tuple[float, list[float]]:
    """A round step and the ticks at its multiples from ``t0`` (offsets in seconds)."""
    span = max(t1 - t0, 1.0)
    step = float(next((s for s in _TIME_STEPS if span / s <= 7), _TIME_STEPS[-1]))
    return step, [i * step for i in range(int(span / step + 1e-9) + 1)]


def _time_label(offset: float, step: float) -> str:
    return f"+{offset:.0f} s" if step < 60 else f"+{format_duration(offset)}"


def _scale(lo: float, hi: float, a: float, b: float) -> Callable[[float], float]:
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _points(
    xs: Sequence[float],
    ys: Sequence[float],
    fx: Callable[[float], float],
    fy: Callable[[float], float],
) -> str:
    return " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in zip(xs, ys, strict=True))


def _label(x: float, y: float, words: str, fill: str, anchor: str = "start") -> str:
    """Text with a halo of the chart's background, readable over the lines it crosses."""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="11" text-anchor="{anchor}" fill="{fill}" '
        f'stroke="#fbfcfd" stroke-width="3" paint-order="stroke">{html.escape(words)}</text>'
    )


def movement_note(series: SeriesReport, axis: YAxis, seconds: float | None) -> str:
    """What the series did, for the chart's top left: its growth, or that it stayed flat."""

    def fmt(value: float) -> str:
        return text.format_value(series, value)

    lo, hi = fmt(min(series.values)), fmt(max(series.values))
    if axis.flat:
        over = f" over {format_duration(seconds)}" if seconds is not None else ""
        return f"flat: between {lo} and {hi}{over}"
    delta = series.last - series.first
    during = f" in {format_duration(seconds)}" if seconds is not None else ""
    note = f"{fmt(series.first)} → {fmt(series.last)}"
    if text.is_flat(series):  # back where it started, after moving
        return f"{note}{during}, between {lo} and {hi}"
    sign = "+" if delta > 0 else "-"
    return f"{note} ({sign}{fmt(abs(delta))}{during})"


def headroom_note(series: SeriesReport, axis: YAxis) -> str | None:
    """The limit as headroom, for the chart's top right; None when there is no limit."""
    if axis.limit is None:
        return None
    room = axis.limit - series.last
    limit = text.format_value(series, axis.limit)
    if room <= 0.01 * axis.limit:
        return f"limit {limit}, reached at the last sample"
    note = f"limit {limit}, {text.format_value(series, room)} above the last value"
    return note if axis.limit_shown else f"{note} ↑"


def chart(series: SeriesReport, report: PostMortem, index: int = 0) -> str:
    """One series on its own scale, its limit as headroom (a dashed line when near), the first
    warning with its forecast, and the end."""
    t0 = series.times[0]
    end = report.last_sample or series.times[-1]
    alert = series.alerts[0] if series.alerts else None
    forecast_end = None
    if alert is not None and alert.seconds_to_oom is not None:
        forecast_end = alert.start + alert.seconds_to_oom
    t_max = end
    if forecast_end is not None:
        t_max = max(end, min(forecast_end, end + FORECAST_SHARE * (end - t0)))
    axis = y_axis(series)
    fx = _scale(t0, t_max, LEFT, WIDTH - RIGHT)
    fy = _scale(axis.low, axis.high, HEIGHT - BOTTOM, TOP)
    clip = f"plot-{index}"
    warning_right = -math.inf  # where the first warning's words end
    parts = [
        f'<svg class="chart" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{html.escape(series.title)}">',
        f'<defs><clipPath id="{clip}"><rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{HEIGHT - TOP - BOTTOM}"/></clipPath></defs>',
    ]
    for v in axis.ticks:  # y grid and labels
        y = fy(v)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eceff2"/>'
        )
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
                     f'fill="#5a6270">{_tick_label(v, axis)}</text>')  # fmt: skip
    step, offsets = time_ticks(t0, t_max)
    for offset in offsets:  # x labels: time since the first sample
        x = fx(t0 + offset)
        anchor = "start" if offset == 0 else "end" if x > WIDTH - RIGHT - 30 else "middle"
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{HEIGHT - BOTTOM}" '
                     f'y2="{HEIGHT - BOTTOM + 4}" stroke="#b9c0c8"/>')  # fmt: skip
        words = _time_label(offset, step)
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 14}" font-size="11" '
                     f'text-anchor="{anchor}" fill="#5a6270">{words}</text>')  # fmt: skip
    moved = movement_note(series, axis, text.run_seconds(report))
    parts.append(_label(LEFT, TOP - 12, moved, "#1d2430"))
    note = headroom_note(series, axis)
    if note is not None:
        parts.append(_label(WIDTH - RIGHT, TOP - 12, note, "#a93226", "end"))
    if axis.limit_shown:
        limit_points = [
            (t, v) for t, v in zip(series.times, series.limits, strict=True) if v is not None
        ]
        xs, ys = zip(*limit_points, strict=True)
        parts.append(f'<polyline class="limit" clip-path="url(#{clip})" fill="none" '
                     f'stroke="#c0392b" stroke-width="1.5" stroke-dasharray="6 4" '
                     f'points="{_points(xs, ys, fx, fy)}"/>')  # fmt: skip
    parts.append(f'<polyline class="series" clip-path="url(#{clip})" fill="none" '
                 f'stroke="#2471a3" stroke-width="1.8" '
                 f'points="{_points(series.times, series.values, fx, fy)}"/>')  # fmt: skip
    if alert is not None:
        x = fx(alert.start)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" '
                     f'stroke="#e67e22" stroke-width="1.5"/>')  # fmt: skip
        if forecast_end is not None and axis.limit is not None:
            y1, x2, y2 = fy(_value_at(series, alert.start)), fx(forecast_end), fy(axis.limit)
            parts.append(f'<line class="forecast" clip-path="url(#{clip})" x1="{x:.1f}" '
                         f'y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#e67e22" '
                         f'stroke-dasharray="3 3"/>')  # fmt: skip
        words = "first warning"
        if forecast_end is not None:  # the forecast may run past the plot: say where it ends
            words += f", forecasting the limit at +{format_duration(forecast_end - t0)}"
        parts.append(_label(x + 4, HEIGHT - BOTTOM - 8, words, "#b35900"))
        warning_right = x + 4 + CHAR_WIDTH * len(words)
    how = report.ended.get("how", "unknown")
    if how not in ("running", "unknown"):
        x = fx(end)
        label = END_LABELS.get(how, how)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" '
                     f'stroke="#7b241c" stroke-width="2"/>')  # fmt: skip
        # At the bottom beside the warning's words when they leave room, else at the top.
        crowded = x - 4 - CHAR_WIDTH * len(label) < warning_right + 8
        y = TOP + 14 if crowded else HEIGHT - BOTTOM - 8
        parts.append(_label(x - 4, y, label, "#7b241c", "end"))
    parts.append("</svg>")
    return "\n".join(parts)


#: The end marker's words, by ``PostMortem.ended["how"]`` (other endings show their own name).
END_LABELS = {
    "oom-kill": "OOM kill", "killed": "killed", "exit": "exit", "crash": "crash",
    "signal": "signal", "exception": "exception", "os-exit": "os._exit", "reboot": "reboot",
}  # fmt: skip


def _value_at(series: SeriesReport, t: float) -> float:
    for time, value in zip(series.times, series.values, strict=True):
        if time >= t:
            return value
    return series.values[-1]


LEGEND = (
    '<div class="legend">'
    '<span><i class="swatch" style="background:#2471a3"></i>memory</span>'
    '<span><i class="swatch" style="background:#c0392b"></i>limit (dashed when near, else as '
    "headroom)</span>"
    '<span><i class="swatch" style="background:#e67e22"></i>first warning, forecast</span>'
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
    counted = any(s.unit != "bytes" for s in report.series)
    if report.series:
        body.append(LEGEND.replace(">memory<", ">memory, resources in use<") if counted else LEGEND)
    for index, series in enumerate(report.series):
        body.append(f"<h2>{e(series.title)}</h2>")
        body.append(chart(series, report, index))
    rows = "".join(
        f"<tr><td>{e(name)}</td><td>{e(rest)}</td></tr>"
        for name, _, rest in (line.partition(": ") for line in text.memory_lines(report))
    )
    what = "Memory and resources" if counted else "Memory"
    body.append(f"<h2>{what}, first to last sample</h2><table>{rows}</table>")
    if report.last_finding:
        tree = render_text(report.last_finding, width=FINDING_WIDTH)
        body.append(f'<h2>Last culprit finding</h2><pre class="finding">{e(tree)}</pre>')
    if report.problems:
        items = "".join(f"<li>{e(p)}</li>" for p in report.problems)
        body.append(f'<h2>History</h2><ul class="problems">{items}</ul>')
    title = e(f"diag report: pid {report.pid}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
