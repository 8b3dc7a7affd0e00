"""``diag analyze FILE... [--limit BYTES] [--sensitivity S] [--json]``: replay recorded series."""

from __future__ import annotations

import json
from typing import Any

import click

from diag.cli._params import FiniteRange
from diag.errors import UsageError
from diag.series_io import RecordedSeries, read_inputs
from diag.units import parse_bytes
from reports.analysis import analyze_series, result_document, summary


class _Bytes(click.ParamType):  # type: ignore[type-arg]
    name = "bytes"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        try:
            size = value if isinstance(value, int) else parse_bytes(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if size <= 0:  # every sample would be over it: "OOM in 0 s" says nothing
            self.fail(f"a limit must be a byte or more: {value!r}", param, ctx)
        return size


@click.command()
# Not click's readability check: an unreadable file is one line, and the others are read.
@click.argument("files", nargs=-1, required=True, type=click.Path(readable=False))
@click.option("--limit", type=_Bytes(), help="The limit to forecast against (4GiB, 4294967296).")
@click.option(
    "--sensitivity",
    type=FiniteRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    envvar="DIAG_SENSITIVITY",
    help="The detector's eagerness: its durations are divided by it (README: the trade-off).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input, per line.")
def analyze(files: tuple[str, ...], limit: int | None, sensitivity: float, as_json: bool) -> None:
    """Replay recorded series through the detector: CSV files with a header t,value (seconds,
    bytes) and optionally a third column, requests (the cumulative request count: growth that
    follows load is then told from a leak), or history directories (each run's memory series
    with its request counters).

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
            found = _analyze_one(series, limit, sensitivity, as_json) or found
    if bad:
        raise click.exceptions.Exit(2)
    if found:
        raise click.exceptions.Exit(1)


def _analyze_one(
    series: RecordedSeries, limit: int | None, sensitivity: float, as_json: bool
) -> bool:
    """Print one input's result; True when it holds a leak."""
    alerts, final = analyze_series(series, limit, sensitivity)
    if as_json:
        click.echo(json.dumps(result_document(series, alerts, final)))
    else:
        click.echo(summary(series, alerts, final))
    return bool(alerts)
