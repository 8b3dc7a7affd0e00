"""``diag analyze FILE... [--limit BYTES] [--json]``: replay recorded series."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from diag.detect import Alert, Detector, Verdict, replay
from diag.errors import UsageError
from diag.history import find_runs, read_run
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
        "final": final.fields(),
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
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--limit", type=_Bytes(), help="The limit to forecast against (4GiB, 4294967296).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input, per line.")
def analyze(files: tuple[str, ...], limit: int | None, as_json: bool) -> None:
    """Replay recorded series through the detector: CSV files with a header t,value (seconds,
    bytes), or history directories (each run's memory series).

    Exit code 1 when a leak was found in any input, 2 when an input could not be read.
    """
    found = False
    bad: list[str] = []
    for path in files:
        try:
            inputs = read_inputs(path)
        except UsageError as exc:
            bad.append(str(exc))
            click.echo(f"diag: {exc}", err=True)
            continue
        for series in inputs:
            found = _analyze_one(series, limit, as_json) or found
    if bad:
        raise click.exceptions.Exit(2)
    if found:
        raise click.exceptions.Exit(1)


#: The memory series of a history that analyze replays.
HISTORY_SERIES = ("process_resident_memory_bytes", "process_unique_memory_bytes",
                  "malloc_in_use_bytes", "cuda_allocated_bytes", "cuda_reserved_bytes")  # fmt: skip


def read_inputs(path: str) -> list[RecordedSeries]:
    """A CSV file is one series; a history (a run, or a directory of runs) gives each run's
    memory series, named ``run/series``."""
    if not os.path.isdir(path):
        return [read_csv(path)]
    runs = find_runs(path)
    if not runs:
        raise UsageError(f"{path}: a directory without diag history runs")
    out = []
    for run_dir in runs:
        history = read_run(run_dir)
        for key, data in sorted(history.series.items()):
            if data.name in HISTORY_SERIES and len(data.times) > 1:
                name = f"{os.path.basename(run_dir)}/{key}"
                out.append(RecordedSeries(run_dir, name, data.times, data.lows))
    return out


def _analyze_one(series: RecordedSeries, limit: int | None, as_json: bool) -> bool:
    """Print one input's result; True when it holds a leak."""
    alerts, final = analyze_series(series, limit)
    if as_json:
        click.echo(json.dumps(result_document(series, alerts, final)))
    else:
        click.echo(_summary(series, alerts, final))
    return bool(alerts)
