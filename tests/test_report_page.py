"""diag report's page as a person reads it: charts scaled to what moved, the limit as headroom, a
verdict line that says why there is none yet, and a culprit finding that fits the page.

The three runs below are the ones a person meets: a service that leaked hundreds of MiB in a
minute on a host without a memory cgroup (no verdict yet, a finding that names the culprit), a
healthy hour, and an OOM kill under a cgroup limit."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from diag.cli import main
from diag.history import HistoryWriter
from diag.model import Sample
from reports import html, markdown, postmortem, text
from tests.test_report import CHROMIUM_FLAGS, _screenshot

MiB = 1024 * 1024
GiB = 1024 * MiB
T0 = 1_700_000_000.0
CULPRIT = "examples.tts_service._AUDIO_CACHE[<str>].__traceback__ › synthesize() › audio"


def _finding(t: float) -> dict[str, Any]:
    """A finding event as the escalation records it (``probes.escalation._finding_of``): the
    top owners with their first allocation stack, no chain."""
    frames = [
        {"file": "/srv/app/examples/tts_service.py", "line": 42, "function": "synthesize"},
        {"file": "/srv/app/examples/tts_service.py", "line": 88, "function": "talk"},
        {"file": "/usr/lib/python3/site-packages/starlette/routing.py", "line": 74,
         "function": "app"},
    ]  # fmt: skip
    return {
        "reason": "process_resident_memory_bytes turned growing",
        "pid": 4242,
        "taken_at": t,
        "pause_seconds": 0.41,
        "complete": True,
        "cause": {
            "kind": "leak",
            "summary": "live Python objects grow: 204.0 MiB retained by one holder",
            "evidence": ["RSS +7.4 MiB/s over the window", "malloc in use +7.1 MiB/s"],
        },
        "owners": [
            {
                "path": CULPRIT,
                "kind": "dict",
                "retained_bytes": 204 * MiB,
                "objects": 1_632,
                "growth_bytes_per_second": 2.0 * MiB,
                "contents": [
                    {
                        "type": "torch.Tensor float32",
                        "device": "cpu",
                        "count": 1_632,
                        "bytes": 204 * MiB,
                    },
                ],
                "allocation_stacks": [{"bytes": 204 * MiB, "count": 1_632, "frames": frames}],
                "growth_bytes_per_request": 128 * 1024.0,
                "chain": [],
            }
        ],
        "window_seconds": 20.0,
        "requests": 160,
        "allocation_sites": [
            {"site": "examples/tts_service.py:42 synthesize()", "bytes": 40 * MiB, "count": 320}
        ],
        "notes": [],
    }


def leak_run(run_dir: Path) -> None:
    """27 MiB to 459 MiB in 58 s on a host without a memory cgroup (RAM, 22 GiB, is the limit),
    killed: no stop record. A culprit finding 40 s in."""
    writer = HistoryWriter(str(run_dir), flush_seconds=0.0)
    writer.write_event("start", T0, pid=4242, command=["python", "-m", "examples.tts_service"])
    steps = 59
    for i in range(steps):
        t = T0 + i
        rss = 27 * MiB + (459 - 27) * MiB * i / (steps - 1) + (0.8 * MiB * math.sin(i) if i else 0)
        if i == steps - 1:
            rss = 459 * MiB
        writer.write_samples(t, [
            Sample("process_resident_memory_bytes", rss),
            Sample("process_unique_memory_bytes", rss - 9 * MiB),
            Sample("malloc_in_use_bytes", 4 * MiB + (rss - 27 * MiB) * 0.93),
            Sample("memory_limit_bytes", 22.0 * GiB),
            Sample("memory_limit_usage_bytes", 1.6 * GiB + rss),
            Sample("memory_limit_info", 1.0, (("source", "system"),)),
        ])  # fmt: skip
        if i == 40:
            writer.write_event("finding", t, **_finding(t))
    writer.close()


def healthy_run(run_dir: Path) -> None:
    """An hour at about 820 MiB with noise under a 4 GiB cgroup, stopped cleanly."""
    writer = HistoryWriter(str(run_dir), flush_seconds=0.0)
    writer.write_event("start", T0, pid=4243, command=["python", "app.py"])
    step = 10.0
    for i in range(int(3600 / step) + 1):
        t = T0 + i * step
        noise = 3 * MiB * math.sin(i / 3.0) + 2 * MiB * math.sin(i * 1.7)
        rss = 820 * MiB + noise
        writer.write_samples(t, [
            Sample("process_resident_memory_bytes", rss),
            Sample("process_unique_memory_bytes", rss - 60 * MiB),
            Sample("malloc_in_use_bytes", 310 * MiB + noise / 2),
            Sample("memory_limit_bytes", 4.0 * GiB),
            Sample("memory_limit_usage_bytes", rss + 150 * MiB),
            Sample("memory_limit_info", 1.0, (("source", "cgroup-v2"),)),
        ])  # fmt: skip
    writer.write_event("stop", t, reason="stop")
    writer.close()


def oom_run(run_dir: Path) -> None:
    """300 MiB growing 0.1 MiB/s from its first half hour under a 1 GiB cgroup limit, until the
    cgroup is full at the last sample: no stop record, an OOM kill."""
    writer = HistoryWriter(str(run_dir), flush_seconds=0.0)
    writer.write_event("start", T0, pid=4244, command=["python", "tts_service.py"])
    step, rss, i = 10.0, 300 * MiB, 0
    limit = 1.0 * GiB
    while True:
        t = T0 + i * step
        if i * step > 1800:
            rss += 0.1 * MiB * step
        saw = 12 * MiB * math.sin(i / 5.0)
        usage = min(rss + saw + 40 * MiB, limit)
        writer.write_samples(t, [
            Sample("process_resident_memory_bytes", usage - 40 * MiB),
            Sample("malloc_in_use_bytes", usage - 140 * MiB),
            Sample("memory_limit_bytes", limit),
            Sample("memory_limit_usage_bytes", usage),
            Sample("memory_limit_info", 1.0, (("source", "cgroup-v2"),)),
        ])  # fmt: skip
        if usage >= limit:
            break
        i += 1
    writer.close()


RUNS = {"leak": leak_run, "healthy": healthy_run, "oom": oom_run}


def _built(tmp_path: Path, name: str) -> postmortem.PostMortem:
    run_dir = tmp_path / f"20231114T221320Z-{name}"
    RUNS[name](run_dir)
    return postmortem.build(str(run_dir), read_kernel_log=lambda: [])


def _series(report: postmortem.PostMortem, key: str) -> postmortem.SeriesReport:
    return next(s for s in report.series if s.key == key)


RSS = "process_resident_memory_bytes"


# -- the charts' scales -------------------------------------------------------------------------


def test_the_axis_spans_the_leak_not_the_machine(tmp_path):
    report = _built(tmp_path, "leak")
    rss = _series(report, RSS)
    assert rss.limits[-1] == pytest.approx(22 * GiB - 1.6 * GiB)  # RAM less the others' use
    axis = html.y_axis(rss)
    assert axis.low == 0.0 and 459 * MiB < axis.high < 520 * MiB  # not 0 to 20 GiB
    assert not axis.limit_shown and not axis.flat
    assert axis.ticks == [i * 100 * MiB for i in range(5)]
    # The growth fills the plot: the polyline's y values cover most of its height.
    chart = html.chart(rss, report)
    (points,) = re.findall(r'class="series"[^>]*points="([^"]+)"', chart)
    ys = [float(p.split(",")[1]) for p in points.split()]
    plot = html.HEIGHT - html.TOP - html.BOTTOM
    assert max(ys) - min(ys) > 0.8 * plot
    # The limit is there as headroom, in words, and no line is drawn for it far off the axis.
    assert "limit 20.4 GiB, 20.0 GiB above the last value" in chart
    assert 'class="limit"' not in chart


def test_a_flat_series_is_drawn_flat_and_said_to_be(tmp_path):
    report = _built(tmp_path, "healthy")
    rss = _series(report, RSS)
    axis = html.y_axis(rss)
    assert axis.flat
    assert 700 * MiB < axis.low < 815 * MiB < 826 * MiB < axis.high < 900 * MiB
    # The axis is at least 5 % of the level tall: a few MiB of noise stay a small wobble.
    assert axis.high - axis.low >= html.MIN_SPAN_SHARE * 820 * MiB
    chart = html.chart(rss, report)
    (points,) = re.findall(r'class="series"[^>]*points="([^"]+)"', chart)
    ys = [float(p.split(",")[1]) for p in points.split()]
    share = (max(ys) - min(ys)) / (html.HEIGHT - html.TOP - html.BOTTOM)
    assert 0.05 < share < 0.4  # its movement shows, and is not blown up to the full height
    assert "flat: between 815.1 MiB and 825.0 MiB over 1 h" in chart
    assert "limit 3.9 GiB, 3.0 GiB above the last value" in chart


def test_a_near_limit_joins_the_axis_as_a_dashed_line(tmp_path):
    report = _built(tmp_path, "oom")
    rss = _series(report, RSS)
    axis = html.y_axis(rss)
    assert axis.limit_shown and axis.limit is not None
    assert axis.low < min(rss.values) and axis.limit < axis.high < axis.limit * 1.1
    chart = html.chart(rss, report)
    assert 'class="limit"' in chart and 'stroke-dasharray="6 4"' in chart
    assert "limit 984.0 MiB, reached at the last sample" in chart
    assert 'class="forecast"' in chart and "first warning" in chart and "OOM kill" in chart


def _plain(values, limit=None, seconds=600.0):
    n = len(values)
    times = [T0 + i * seconds / (n - 1) for i in range(n)]
    return postmortem.SeriesReport(
        key=RSS, title="RSS", labels={}, times=times, values=list(values),
        limits=[limit] * n, first=values[0], last=values[-1], alerts=[],
    )  # fmt: skip


def test_y_axis_cases():
    # A limit a few spans above the data stays off the axis; within a span it joins it.
    far = html.y_axis(_plain([500 * MiB, 600 * MiB, 700 * MiB], limit=2 * GiB))
    assert not far.limit_shown and far.high < 760 * MiB and far.low > 400 * MiB
    near = html.y_axis(_plain([500 * MiB, 600 * MiB, 700 * MiB], limit=800 * MiB))
    assert near.limit_shown and near.high > 800 * MiB
    # A constant series: an axis around it, said to be flat, no movement invented.
    constant = html.y_axis(_plain([2 * GiB] * 50))
    assert constant.flat and constant.low < 2 * GiB < constant.high
    assert constant.high - constant.low == pytest.approx(html.MIN_SPAN_SHARE * 2 * GiB * 1.12)
    # No limit at all: no note.
    assert html.headroom_note(_plain([1.0, 2.0]), html.y_axis(_plain([1.0, 2.0]))) is None
    # Ticks are round numbers in one unit, inside the axis.
    axis = html.y_axis(_plain([1.1 * GiB, 1.9 * GiB]))
    assert axis.unit_name == "GiB"
    assert [html._tick_label(v, axis) for v in axis.ticks] == [
        "1.2 GiB", "1.4 GiB", "1.6 GiB", "1.8 GiB"
    ]  # fmt: skip
    assert all(axis.low <= v <= axis.high for v in axis.ticks)


def test_time_ticks_are_round():
    assert html.time_ticks(0.0, 58.0) == (10.0, [0.0, 10.0, 20.0, 30.0, 40.0, 50.0])
    step, ticks = html.time_ticks(0.0, 8520.0)  # 2 h 22 min
    assert step == 1800.0 and ticks[-1] == 7200.0
    assert html._time_label(5400.0, step) == "+1 h 30 min"


# -- the verdict line ---------------------------------------------------------------------------


def test_a_short_run_says_why_there_is_no_verdict_and_what_grew(tmp_path):
    report = _built(tmp_path, "leak")
    assert report.alerts == []
    assert {s.verdict for s in report.series} == {"insufficient_data"}
    line = text.verdict_line(report)
    assert "saw no leak" not in line
    assert line.startswith(
        "No leak verdict yet: the run lasted 58 s, and the detector gives a first verdict after "
        "3 min of samples and can call a leak only after 25 min (a 15 min warm-up, then 10 min "
        "of steady growth). In those 58 s, RSS grew 27.0 MiB -> 459.0 MiB (+432.0 MiB), "
    )
    assert "malloc in use grew 4.0 MiB -> 405.8 MiB (+401.8 MiB)" in line


def test_the_verdict_does_not_contradict_a_growing_finding(tmp_path):
    report = _built(tmp_path, "leak")
    line = text.verdict_line(report)
    assert line.endswith(
        f"; the last culprit finding names {CULPRIT}, a dict retaining 204.0 MiB and growing "
        "+2.0 MiB/s."
    )
    # The same words in every rendering.
    assert line in markdown.render(report)
    assert html.html.escape(line) in html.render(report)
    # A run the detector did judge, with a finding that grows: both are said.
    healthy = _built(tmp_path, "healthy")
    healthy.last_finding = _finding(T0 + 100)
    line = text.verdict_line(healthy)
    assert line.startswith("The detector saw no leak in the recorded memory series over 1 h: ")
    assert f"; but the last culprit finding names {CULPRIT}" in line


def _verdict_line_with_finding_cause(tmp_path, cause):
    """The verdict line of a leaking run whose last finding has this cause."""
    report = _built(tmp_path, "leak")
    finding = _finding(T0 + 100)
    finding["cause"] = cause
    report.last_finding = finding
    return text.verdict_line(report)


def test_a_finding_that_blames_native_memory_is_said_so_not_its_top_holder(tmp_path):
    # A native leak with a small holder growing beside it (4 % of the growth): the finding's
    # cause says native, and the verdict line must not name the holder as the culprit.
    cause = {
        "kind": "native_growth",
        "summary": "memory grows outside Python's objects: native code holds it",
        "evidence": [],
    }
    line = _verdict_line_with_finding_cause(tmp_path, cause)
    assert CULPRIT not in line
    assert line.endswith(
        "; the last culprit finding blames no Python holder (native growth: memory grows "
        "outside Python's objects: native code holds it)."
    )


def test_a_finding_that_names_a_root_over_several_holders_is_said_so(tmp_path):
    # Five holders beneath one engine, none a quarter of the growth: the finding names the
    # engine, and the verdict line must not name the biggest fifth.
    cause = {
        "kind": "leak",
        "summary": "live objects are piling up under svc.ENGINE, in 5 holders beneath it",
        "evidence": [],
        "culprit": {"path": "svc.ENGINE", "holders": 5, "bytes_per_second": 5 * MiB, "share": 0.9},
    }
    line = _verdict_line_with_finding_cause(tmp_path, cause)
    assert CULPRIT not in line
    assert line.endswith(
        "; the last culprit finding names svc.ENGINE: 5 holders beneath it grew +5.0 MiB/s "
        "together."
    )


def test_a_healthy_run_says_its_memory_stayed_flat(tmp_path):
    report = _built(tmp_path, "healthy")
    assert {s.verdict for s in report.series} == {"steady"}
    assert text.verdict_line(report) == (
        "The detector saw no leak in the recorded memory series over 1 h: RSS stayed flat "
        "(820.0 MiB -> 822.9 MiB), USS stayed flat (760.0 MiB -> 762.9 MiB) and malloc in use "
        "stayed flat (310.0 MiB -> 311.4 MiB)."
    )


def test_the_verdict_recorded_live_is_the_one_reported(tmp_path):
    run_dir = tmp_path / "20231114T221320Z-live"
    leak_run(run_dir)
    writer = HistoryWriter(str(run_dir), flush_seconds=0.0)
    writer.write_event("verdict", T0 + 58, series=RSS, state="warming_up",
                       reason="within the warm-up grace after (re)start")  # fmt: skip
    writer.close()
    report = postmortem.build(str(run_dir), read_kernel_log=lambda: [])
    rss = _series(report, RSS)
    assert (rss.verdict, rss.verdict_reason) == (
        "warming_up", "within the warm-up grace after (re)start"
    )  # fmt: skip
    assert text.verdict_line(report).startswith("No leak verdict yet: the run lasted 58 s")


def test_the_terminal_says_it_too(tmp_path):
    import io

    from rich.console import Console

    from reports import terminal

    report = _built(tmp_path, "leak")
    out = io.StringIO()
    terminal.render(report, Console(file=out, width=200))
    flat = " ".join(out.getvalue().split())
    assert "No leak verdict yet" in flat and "saw no leak" not in flat


# -- the finding fits -------------------------------------------------------------------------


def test_the_finding_is_drawn_to_fit_the_page(tmp_path):
    report = _built(tmp_path, "leak")
    page = html.render(report)
    (tree,) = re.findall(r'<pre class="finding">(.*?)</pre>', page, re.S)
    lines = html.html.unescape(tree).splitlines()
    assert max(len(line) for line in lines) <= html.FINDING_WIDTH
    assert any(CULPRIT in line for line in lines)
    # ...and a window narrower than that wraps it rather than scrolling the page.
    rule = re.search(r"pre\.finding \{([^}]*)\}", page).group(1)
    assert "white-space: pre-wrap" in rule and "overflow-wrap: anywhere" in rule
    assert re.search(r"svg\.chart \{[^}]*width: 100%[^}]*height: auto", page)


# -- in a real browser ------------------------------------------------------------------------

#: Added to a copy of the page (the report itself has no script): what a person would check by
#: eye, measured after layout and written into the DOM, which --dump-dom then prints.
MEASURE = """<script>
const plotOf = svg => svg.querySelector("clipPath rect").getBBox();
const out = {
  viewport: window.innerWidth,
  scrollWidth: document.documentElement.scrollWidth,
  wider: [...document.querySelectorAll("body *")]
    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
    .map(e => e.tagName + " " + (e.getAttribute("class") || "")),
  charts: [...document.querySelectorAll("svg.chart")].map(svg => ({
    drawn: svg.getBoundingClientRect().width,
    series: svg.querySelector("polyline.series").getBBox().height / plotOf(svg).height,
  })),
  finding: [...document.querySelectorAll("pre.finding")].map(p => p.scrollWidth - p.clientWidth),
};
document.body.setAttribute("data-measured", JSON.stringify(out));
</script>"""


def _dump_dom(chromium: str, page: Path, profile: Path, width: int) -> str:
    flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--window-size")]
    return subprocess.run(
        [chromium, *flags, f"--window-size={width},900", f"--user-data-dir={profile}",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip


def _measured(dom: str) -> dict[str, Any]:
    import html as markup
    import json

    match = re.search(r'data-measured="([^"]*)"', dom)
    assert match, dom[:2000]
    return dict(json.loads(markup.unescape(match.group(1))))


def _in_chromium(tmp_path: Path, name: str) -> tuple[str, list[dict[str, Any]]]:
    """Render run ``name`` with ``diag report --html``, screenshot it (kept under
    $DIAG_REPORT_SHOTS when set, to look at), and dump its DOM at a desktop and a phone width
    with the page measured. Returns the DOM and the measurements."""
    import os
    import shutil

    from tests.conftest import require_tool

    chromium = require_tool("chromium")
    run_dir = tmp_path / f"20231114T221320Z-{name}"
    RUNS[name](run_dir)
    page = tmp_path / f"{name}.html"
    result = CliRunner().invoke(main, ["report", str(run_dir), "--html", str(page)])
    assert result.exit_code == 0, result.output
    png = tmp_path / f"{name}.png"
    shot = _screenshot(chromium, page, png, tmp_path / "profile")
    assert shot.returncode == 0, shot.stderr
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 30_000
    if os.environ.get("DIAG_REPORT_SHOTS"):
        shutil.copy(png, Path(os.environ["DIAG_REPORT_SHOTS"]) / png.name)
    measured_page = tmp_path / f"{name}-measured.html"
    measured_page.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    doms = [
        _dump_dom(chromium, measured_page, tmp_path / f"profile-{width}", width)
        for width in (1000, 500)
    ]
    measures = [_measured(dom) for dom in doms]
    for measure in measures:
        # Nothing sticks out of the window, the charts included: no sideways scrolling.
        assert measure["scrollWidth"] <= measure["viewport"], measure
        assert measure["wider"] == [], measure
        assert all(c["drawn"] <= measure["viewport"] for c in measure["charts"]), measure
        assert all(overflow <= 0 for overflow in measure["finding"]), measure
    return doms[0], measures


def _text_of(dom: str) -> str:
    import html as markup

    return " ".join(markup.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


@pytest.mark.e2e
def test_a_short_leak_in_chromium(tmp_path):
    dom, measures = _in_chromium(tmp_path, "leak")
    words = _text_of(dom)
    assert "No leak verdict yet: the run lasted 58 s" in words
    assert "can call a leak only after 25 min" in words
    assert "RSS grew 27.0 MiB -> 459.0 MiB (+432.0 MiB)" in words
    assert "27.0 MiB → 459.0 MiB (+432.0 MiB in 58 s)" in words  # over the RSS chart
    assert "limit 20.4 GiB, 20.0 GiB above the last value" in words
    assert "saw no leak" not in words
    assert CULPRIT in words and "+2.0 MiB/s" in words
    for measure in measures:
        # Each series' growth fills most of its plot: visible, not three flat lines.
        assert [c["series"] > 0.8 for c in measure["charts"]] == [True] * 3, measure
        assert len(measure["finding"]) == 1


@pytest.mark.e2e
def test_a_healthy_hour_in_chromium(tmp_path):
    dom, measures = _in_chromium(tmp_path, "healthy")
    words = _text_of(dom)
    assert "The detector saw no leak in the recorded memory series over 1 h" in words
    assert "RSS stayed flat (820.0 MiB -> 822.9 MiB)" in words
    assert "flat: between 815.1 MiB and 825.0 MiB over 1 h" in words
    assert "limit 3.9 GiB, 3.0 GiB above the last value" in words
    assert "No leak verdict yet" not in words and "Last culprit finding" not in words
    for measure in measures:
        # The noise shows as a small wobble: neither a flat line nor a swing across the plot.
        assert all(0.05 < c["series"] < 0.4 for c in measure["charts"]), measure


@pytest.mark.e2e
def test_an_oom_kill_in_chromium(tmp_path):
    dom, measures = _in_chromium(tmp_path, "oom")
    words = _text_of(dom)
    assert "killed at its memory limit, most likely by an OOM killer" in words  # no kernel line
    assert "First leak warning at" in words and "forecasting OOM in" in words
    assert "limit 984.0 MiB, reached at the last sample" in words
    assert dom.count('class="limit"') == 2 and dom.count('class="forecast"') == 2
    assert "first warning" in words and "OOM kill" in words
    assert "300.0 MiB → 984.0 MiB (+684.0 MiB in 2 h 22 min)" in words
    for measure in measures:
        assert all(c["series"] > 0.6 for c in measure["charts"]), measure


def test_labels_near_the_end_keep_apart(tmp_path):
    import dataclasses

    from diag.detect import Alert

    report = _built(tmp_path, "oom")
    rss = _series(report, RSS)
    late = Alert(RSS, rss.times[-1] - 300, None, 900.0, 800.0, 1000.0)
    chart = html.chart(dataclasses.replace(rss, alerts=[late]), report)
    warning = re.search(r'<text x="([\d.]+)" y="([\d.]+)"[^>]*>first warning, forecasting', chart)
    end = re.search(r'<text x="([\d.]+)" y="([\d.]+)"[^>]*>OOM kill<', chart)
    assert warning and end
    assert warning.group(2) != end.group(2)  # not on one line, over each other
    chart = html.chart(rss, report)  # a warning long before the end: both at the bottom
    warning = re.search(r'<text x="[\d.]+" y="([\d.]+)"[^>]*>first warning', chart)
    end = re.search(r'<text x="[\d.]+" y="([\d.]+)"[^>]*>OOM kill<', chart)
    assert warning and end and warning.group(1) == end.group(1)


def test_growth_the_detector_judged_is_said_with_its_reason(tmp_path):
    import dataclasses

    report = _built(tmp_path, "oom")
    report.alerts = []
    report.series = [
        dataclasses.replace(
            s, alerts=[], verdict="growing", verdict_reason="steady growth, watched too briefly yet"
        )
        for s in report.series
    ]
    line = text.verdict_line(report)
    assert line.startswith(
        "The detector saw no leak in the recorded memory series over 2 h 22 min: RSS grew "
        "300.0 MiB -> 984.0 MiB (+684.0 MiB)"
    )
    assert "the detector judged RSS growth, not a leak: steady growth, watched too briefly yet" in (
        line
    )
