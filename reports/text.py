"""The post-mortem as words: the lines shared by the terminal, Markdown and HTML renderers."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from diag.detect import BUCKET_SECONDS, MIN_GROUPS, DetectorConfig
from diag.units import format_bytes, format_duration, format_forecast
from reports.ending import NO_STOP_RECORD, resource_words
from reports.postmortem import PostMortem, SeriesReport

#: How many lines of a stack the summary shows (the JSON and the history keep them all).
STACK_LINES = 12


def when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC"
    )


def format_count(value: float) -> str:
    """``1,024``: a count (descriptors, threads), with a fraction only where it has one."""
    if abs(value - round(value)) < 1e-9:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def format_value(series: SeriesReport, value: float) -> str:
    """A value of ``series`` in its unit: bytes (``1.2 GiB``) or a count (``1,024``)."""
    return format_bytes(value) if series.unit == "bytes" else format_count(value)


def headline(report: PostMortem) -> str:
    command = " ".join(report.command) or "?"
    return f"pid {report.pid} ({command}) {ending(report.ended)}"


def _short_where(where: str) -> str:
    """``gunicorn/arbiter.py:415 in halt`` for a frame in an installed package."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in where:
            return where.split(marker, 1)[1]
    return where


def _short(name: object) -> str:
    return str(name).rsplit(".", 1)[-1]


def _signal_end(ended: dict[str, Any]) -> str:
    host = ended.get("after_host_handler")
    if host:
        return (
            f"stopped by {ended.get('signal')} after a clean shutdown (its own handler, {host}, "
            "ran first and raised the signal again)"
        )
    return (
        f"stopped by {ended.get('signal')} (the signal's default action: it had no handler of "
        "its own)"
    )


def _exception_end(ended: dict[str, Any]) -> str:
    exception = ended.get("exception") or {}
    kind = _short(exception.get("type", "exception"))
    signals = [s.get("signal") for s in ended.get("signals", [])]
    if signals:  # SIGINT's KeyboardInterrupt, not caught
        return f"stopped by {signals[-1]} ({kind}, not caught)"
    message = exception.get("message")
    return f"ended by an unhandled {kind}" + (f": {message}" if message else "")


def _crash_end(ended: dict[str, Any]) -> str:
    fault = ended.get("fault") or {}
    kind = ", ".join(str(x) for x in (fault.get("error"), fault.get("signal")) if x)
    return f"crashed in native code ({kind})"


def _exit_end(ended: dict[str, Any]) -> str:
    handler = ended.get("in_signal_handler")
    if handler:
        text = (
            f"ended by its {handler['signal']} handler ({handler['handler']} called "
            f"sys.exit({handler.get('status')})), exit status {ended.get('status')}"
        )
        if handler["signal"] == "SIGABRT" and "gunicorn" in str(handler["handler"]):
            text += ": a gunicorn worker past its --timeout, aborted by its master"
        return text
    if ended.get("status") is not None:
        text = f"exited with status {ended['status']}"
        call = ended.get("exit_call") or {}
        if call.get("where"):
            text += f" (sys.exit at {_short_where(call['where'])})"
    elif ended.get("reason") == "stop":
        text = "stopped its agent (probes.stop()); the process may have run on"
    else:
        text = "exited cleanly"
    handled = [s for s in ended.get("signals", []) if s.get("handled_by")]
    if handled:
        text += f" after {handled[-1].get('signal')} (handled by {handled[-1]['handled_by']})"
    return text


def _killed_end(ended: dict[str, Any]) -> str:
    after = ended.get("after_signal")
    if ended.get("signal_name"):  # a watcher saw the signal
        return f"killed by {ended['signal_name']}"
    if after:
        return (
            f"killed after {after.get('signal')} and a grace period: still running "
            f"{after.get('seconds_to_last_sample', 0):.0f} s later, then no stop record"
        )
    text = NO_STOP_RECORD
    if ended.get("sigterm_handler"):
        text += (
            f"; SIGTERM was its own handler's ({ended['sigterm_handler']}): a SIGKILL after an "
            "orchestrator's grace period would end it this way"
        )
    return text


def _oom_end(ended: dict[str, Any]) -> str:
    """Certain where the kernel's log or the cgroup's kill counter says so; otherwise only
    memory at the limit and no stop record say it, and so does the sentence."""
    if isinstance(ended.get("kernel_log"), list) or ended.get("cgroup_oom_kills_during_run"):
        return "killed by the OOM killer"
    return "killed at its memory limit, most likely by an OOM killer"


#: The words for each ``ended["how"]`` (see ``reports.ending``).
ENDINGS: dict[str, Callable[[dict[str, Any]], str]] = {
    "signal": _signal_end,
    "exception": _exception_end,
    "crash": _crash_end,
    "exit": _exit_end,
    "killed": _killed_end,
    "os-exit": lambda ended: f"ended by os._exit({ended.get('status')})",
    "oom-kill": _oom_end,
    "reboot": lambda ended: "ended when the machine restarted (power loss or a reboot)",
    "running": lambda ended: "still running",
}


def _counts(resource: dict[str, Any]) -> str:
    usage, limit = resource.get("usage"), resource.get("limit")
    if usage is not None and limit is not None:
        sampled = "" if usage >= limit else " at the nearest sample"
        return f" ({format_count(usage)} of {format_count(limit)}{sampled})"
    if limit is not None:
        return f" (its limit: {format_count(limit)})"
    if usage is not None:
        return f" ({format_count(usage)} in use)"
    return ""


def resource_phrase(ended: dict[str, Any]) -> str:
    """What the run ran out of, after the words of its end: `` — it ran out of file
    descriptors (1,024 of 1,024)``; a thread that died of it, or the agent's own failure."""
    resource = ended.get("resource")
    if not resource:
        return ""
    out_of = f"it ran out of {resource_words(str(resource.get('resource')))}{_counts(resource)}"
    how, error = resource.get("how"), resource.get("error")
    if how == "unhandled" and ended.get("how") == "exception":
        return f" — {out_of}"
    if how == "unhandled":
        return f"; {out_of}: an unhandled {_short(resource.get('type'))} ({error})"
    if how == "thread":
        return f"; {out_of}: its thread {resource.get('thread', '?')} died of {error}"
    return f"; {out_of}: {resource.get('where')} failed with {error}"


def ending(ended: dict[str, Any]) -> str:
    """How the process ended, in words, from ``PostMortem.ended``."""
    words = ENDINGS.get(ended.get("how", "unknown"))
    text = words(ended) if words is not None else "ended, how is unknown"
    text += resource_phrase(ended)
    watcher = ended.get("watcher") or {}
    seen = watcher.get("signal_name") or (
        f"status {watcher['status']}" if watcher.get("status") is not None else None
    )
    return text + (f"; diag watch saw it end with {seen}" if seen else "")


def verdict_line(report: PostMortem) -> str:
    if not report.alerts:
        return no_alert_line(report)
    first = report.alerts[0]
    line = f"First leak warning at {when(first['start'])} on {first['series']}"
    counted = any(s.key == first["series"] and s.unit != "bytes" for s in report.series)
    if first["seconds_to_oom"] is not None:
        line += ", forecasting its limit in " if counted else ", forecasting OOM in "
        line += format_forecast(
            first["seconds_to_oom"], first["seconds_to_oom_low"], first["seconds_to_oom_high"]
        )
    if report.lead_seconds is not None:
        line += f"; {format_duration(report.lead_seconds)} before the end"
    return line + "."


#: The detector's states that are no verdict yet: too few samples, or the warm-up after a start.
UNDECIDED = ("insufficient_data", "warming_up")
#: A change smaller than this share of the level is "flat" (the detector's own noise floor).
FLAT_SHARE = DetectorConfig().min_rise_share


def detector_needs(config: DetectorConfig | None = None) -> tuple[float, float, float]:
    """How long the detector must watch a series, in seconds: before its first verdict (enough
    buckets for a trend test), its warm-up after a start, and the least growth after it that
    can be called a leak."""
    config = config or DetectorConfig()
    return MIN_GROUPS * BUCKET_SECONDS, config.warmup_seconds, config.min_leak_seconds


def run_seconds(report: PostMortem) -> float | None:
    if report.first_sample is None or report.last_sample is None:
        return None
    return report.last_sample - report.first_sample


def is_flat(series: SeriesReport) -> bool:
    delta = series.last - series.first
    return abs(delta) <= FLAT_SHARE * max(abs(series.first), abs(series.last), 1.0)


def growth_phrase(series: SeriesReport) -> str:
    """``RSS grew 27.0 MiB -> 459.0 MiB (+432.0 MiB)``, or that it stayed flat."""
    first, last = format_value(series, series.first), format_value(series, series.last)
    delta = series.last - series.first
    if is_flat(series):
        return f"{series.title} stayed flat ({first} -> {last})"
    verb, sign = ("grew", "+") if delta > 0 else ("fell", "-")
    return f"{series.title} {verb} {first} -> {last} ({sign}{format_value(series, abs(delta))})"


#: A finding's causes that blame no Python holder: what it says is said, not its top owner.
NO_HOLDER_CAUSES = frozenset(
    {
        "native_growth",
        "allocator_retention",
        "fragmentation",
        "copy_on_write",
        "cuda_caching_plateau",
        "unexplained",
    }
)


def finding_phrase(report: PostMortem) -> str | None:
    """What the last culprit finding says grows: its biggest growing holder, or None; where
    its cause blames none (native memory, the allocator), that cause: a holder growing
    beside a native leak explains a few percent of it, and is no culprit; where it names
    several holders beneath one path (none explains the growth alone), that path."""
    finding = report.last_finding or {}
    cause = finding.get("cause") or {}
    if cause.get("kind") in NO_HOLDER_CAUSES:
        kind = str(cause["kind"]).replace("_", " ")
        return f"the last culprit finding blames no Python holder ({kind}: {cause.get('summary')})"
    culprit = cause.get("culprit") or {}
    if (culprit.get("holders") or 0) > 1:
        return (
            f"the last culprit finding names {culprit.get('path', '?')}: "
            f"{culprit['holders']} holders beneath it grew "
            f"+{format_bytes(culprit.get('bytes_per_second') or 0)}/s together"
        )
    owners = finding.get("owners") or []
    growing = [o for o in owners if (o.get("growth_bytes_per_second") or 0) > 0]
    if not growing:
        return None
    owner = growing[0]  # a finding lists its holders biggest first
    return (
        f"the last culprit finding names {owner.get('path', '?')}, a {owner.get('kind', '?')} "
        f"retaining {format_bytes(owner.get('retained_bytes') or 0)} and growing "
        f"+{format_bytes(owner['growth_bytes_per_second'])}/s"
    )


def _why_no_verdict(report: PostMortem, seconds: float | None) -> str:
    first, warmup, min_leak = detector_needs()
    needs = (
        f"the detector gives a first verdict after {format_duration(first)} of samples and can "
        f"call a leak only after {format_duration(warmup + min_leak)} (a "
        f"{format_duration(warmup)} warm-up, then {format_duration(min_leak)} of steady growth)"
    )
    if seconds is None:
        return f"no samples were recorded; {needs}"
    if seconds < warmup + min_leak:
        return f"the run lasted {format_duration(seconds)}, and {needs}"
    # Long enough, yet undecided: a restart (a new warm-up) or a gap in the samples.
    last = report.series[0]
    return (
        f"the run lasted {format_duration(seconds)}, but the detector's last word on "
        f"{last.title} was {last.verdict.replace('_', ' ')} ({last.verdict_reason})"
    )


def _join(phrases: list[str]) -> str:
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def no_alert_line(report: PostMortem) -> str:
    """The verdict when no leak alert was raised: never a flat "no leak" when the detector did
    not get to decide, and never silent about growth the series or the last finding show."""
    seconds = run_seconds(report)
    finding = finding_phrase(report)
    if not report.series:
        line = "The history holds no memory series for the detector to judge"
        return line + (f"; {finding}." if finding else ".")
    undecided = [s for s in report.series if s.verdict in UNDECIDED]
    growth = _join([growth_phrase(s) for s in report.series])
    if len(undecided) == len(report.series):
        line = f"No leak verdict yet: {_why_no_verdict(report, seconds)}. "
        line += f"In those {format_duration(seconds)}, " if seconds is not None else "Meanwhile "
        line += growth
        if finding:
            line += f"; {finding}"
        return line + "."
    notes = []
    for s in report.series:
        if s.verdict in UNDECIDED:
            notes.append(f"no verdict yet on {s.title} ({s.verdict_reason})")
        elif s.verdict in ("growing", "bounded_growth"):
            kind = "growth that is bounded" if s.verdict == "bounded_growth" else "growth"
            notes.append(f"the detector judged {s.title} {kind}, not a leak: {s.verdict_reason}")
    over = f" over {format_duration(seconds)}" if seconds is not None else ""
    kind = "memory series" if all(s.unit == "bytes" for s in report.series) else "series"
    line = f"The detector saw no leak in the recorded {kind}{over}: {growth}"
    if notes:
        line += "; " + "; ".join(notes)
    if finding:
        line += f"; but {finding}"
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
    for key in ("status", "signal", "where", "oom_kills_before", "oom_kills_after"):
        if ended.get(key) is not None:
            lines.append(f"{key.replace('_', ' ')}: {ended[key]}")
    exception = ended.get("exception")
    if exception:
        lines.append(f"unhandled {exception.get('type')}: {exception.get('message', '')}")
        stack = list(reversed(exception.get("stack", [])))  # most recent call first
        lines.extend(f"  {frame}" for frame in stack[:STACK_LINES])
    lines.extend(resource_lines(ended))
    fault = ended.get("fault")
    if fault:
        lines.append(f"the crashing thread ({fault.get('threads')} threads in all):")
        lines.extend(f"  {frame}" for frame in fault.get("crashing_thread", [])[:STACK_LINES])
    return lines


def resource_lines(ended: dict[str, Any]) -> list[str]:
    """The resource the run ran out of: the error, where, the usage against the limit, and the
    stack of a thread that died of it (an unhandled end's stack is the exception's, above)."""
    resource = ended.get("resource")
    if not resource:
        return []
    name = resource_words(str(resource.get("resource")))
    lines = [
        f"ran out of {name} at {when(resource.get('t'))}: {resource.get('error')} "
        f"({resource.get('message', '')}) in {resource.get('where')}"
    ]
    if resource.get("thread"):
        lines[0] += f", thread {resource['thread']}"
    usage, limit = resource.get("usage"), resource.get("limit")
    if usage is not None or limit is not None:
        counts = " of ".join(format_count(x) for x in (usage, limit) if x is not None)
        what = (
            "in use" if limit is None else "its limit" if usage is None else "in use of its limit"
        )
        lines.append(f"{name} at the sample nearest that moment: {counts} ({what})")
    if (resource.get("events") or 1) > 1:
        lines.append(f"resources ran out {resource['events']} times in this run (the history "
                     "has each)")  # fmt: skip
    if resource.get("how") != "unhandled" or ended.get("how") != "exception":
        stack = list(reversed(resource.get("stack", [])))
        lines.extend(f"  {frame}" for frame in stack[:STACK_LINES])
    return lines


def memory_lines(report: PostMortem) -> list[str]:
    lines = []
    for s in report.series:
        grew = s.last - s.first
        sign = "+" if grew > 0 else ""  # format_value signs a fall itself
        lines.append(
            f"{s.title}: {format_value(s, s.first)} -> {format_value(s, s.last)} "
            f"({sign}{format_value(s, grew)})"
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
