"""``diag analyze``'s results: each recorded series replayed through the detector, as data (the
documented JSON line) and as a readable summary."""

from __future__ import annotations

import os
from typing import Any

from diag.detect import Alert, Detector, DetectorConfig, Verdict, replay
from diag.series_io import RecordedSeries
from diag.units import format_bytes, format_duration, format_forecast


def analyze_series(
    series: RecordedSeries, limit: float | None, sensitivity: float = 1.0
) -> tuple[list[Alert], Verdict]:
    config = DetectorConfig(sensitivity=sensitivity, one_process=series.one_process)
    detector = Detector(limit, config)
    alerts = replay(
        series.times,
        series.values,
        limit,
        series=series.name,
        detector=detector,
        requests=series.requests,
    )
    return alerts, detector.verdict


def result_document(series: RecordedSeries, alerts: list[Alert], final: Verdict) -> dict[str, Any]:
    """The documented ``--json`` line for one input (times on the input's clock)."""
    return {
        "file": series.path,
        "series": series.name,
        "samples": len(series.times),
        "first_sample": series.times[0],
        "last_sample": series.times[-1],
        "alerts": [a.to_json() for a in alerts],
        "final": final.fields(),
        "notes": list(series.notes),
    }


def summary(series: RecordedSeries, alerts: list[Alert], final: Verdict) -> str:
    t0 = series.times[0]
    span = series.times[-1] - t0
    count = len(series.times)
    samples = f"{count:,} sample{'' if count == 1 else 's'}"
    # Named where the path alone does not say which series it is (a Prometheus answer's
    # results, a history run's series, a CSV's named column).
    named = series.name and series.name not in os.path.basename(series.path)
    where = f"{series.path} [{series.name}]" if named else series.path
    lines = [f"{where}: {samples} over {format_duration(span)}"]
    lines.extend(f"  ({note})" for note in series.notes)
    for a in alerts:
        when = f"leak from +{format_duration(a.start - t0)}"
        when += f" to +{format_duration(a.end - t0)}" if a.end is not None else " to the end"
        if a.seconds_to_oom is not None:
            when += ", forecast OOM in " + format_forecast(
                a.seconds_to_oom, a.seconds_to_oom_low, a.seconds_to_oom_high
            )
        lines.append(f"  {when}")
    if not alerts:
        lines.append("  no leak")
    rate = f", {format_bytes(final.rate * 3600)}/h" if final.rate else ""
    lines.append(f"  final verdict: {final.state} ({final.reason}{rate})")
    return "\n".join(lines)
