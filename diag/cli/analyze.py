"""``diag analyze FILE... [--limit BYTES] [--json]``: replay recorded series."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from diag.detect import Alert, Detector, Verdict, replay
from diag.errors import UsageError
from diag.series_io import RecordedSeries, read_csv
from diag.units import format_bytes, format_duration, parse_bytes


class _Bytes(click.ParamType):  # type: ignore[type-arg]
    name = "bytes"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        try:
            return value if isinstance(value, int) else parse_bytes(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def analyze_series(series: RecordedSeries, limit: float | None) -> tuple[list[Alert], Verdict]:
    detector = Detector(limit)
    alerts = replay(series.times, series.values, limit, series=series.name, detector=detector)
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
        "final": {k: v for k, v in asdict(final).items() if k != "t"},
    }


def _summary(series: RecordedSeries, alerts: list[Alert], final: Verdict) -> str:
    t0 = series.times[0]
    span = series.times[-1] - t0
    lines = [f"{series.path}: {len(series.times):,} samples over {format_duration(span)}"]
    for a in alerts:
        when = f"leak from +{format_duration(a.start - t0)}"
        when += f" to +{format_duration(a.end - t0)}" if a.end is not None else " to the end"
        if a.seconds_to_oom is not None:
            when += (
                f", forecast OOM in {format_duration(a.seconds_to_oom)}"
                f" ({format_duration(a.seconds_to_oom_low or 0)}"
                f" to {format_duration(a.seconds_to_oom_high or 0)})"
            )
        lines.append(f"  {when}")
    if not alerts:
        lines.append("  no leak")
    rate = f", {format_bytes(final.rate * 3600)}/h" if final.rate else ""
    lines.append(f"  final verdict: {final.state} ({final.reason}{rate})")
    return "\n".join(lines)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--limit", type=_Bytes(), help="The limit to forecast against (4GiB, 4294967296).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input, per line.")
def analyze(files: tuple[str, ...], limit: int | None, as_json: bool) -> None:
    """Replay recorded series (CSV with a header t,value: seconds, bytes) through the detector.

    Exit code 1 when a leak was found in any input, 2 when an input could not be read.
    """
    found = False
    bad: list[str] = []
    for path in files:
        try:
            series = read_csv(path)
        except UsageError as exc:
            bad.append(str(exc))
            click.echo(f"diag: {exc}", err=True)
            continue
        alerts, final = analyze_series(series, limit)
        found = found or bool(alerts)
        if as_json:
            click.echo(json.dumps(result_document(series, alerts, final)))
        else:
            click.echo(_summary(series, alerts, final))
    if bad:
        raise click.exceptions.Exit(2)
    if found:
        raise click.exceptions.Exit(1)
