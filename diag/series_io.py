"""Reading recorded series: CSV files with a header ``t,value`` (seconds, bytes) and an optional
third column ``requests`` (the process's cumulative request count), Prometheus range queries'
answers, either gzip-compressed or not, and the memory series of diag histories (with the run's
request counters, where the agent counted requests)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from diag import watched
from diag.detect import MAX_READING
from diag.errors import UsageError
from diag.history import SeriesData, find_runs, read_run


@dataclass
class RecordedSeries:
    path: str
    name: str  # the value column's name, or the file's stem when it is just "value"
    times: array[float]
    values: array[float]
    #: Cumulative requests at each sample (the detector's load covariate), where known.
    requests: array[float] | None = None
    #: How the input was read where it was not as written (a time unit, gaps skipped).
    notes: list[str] = field(default_factory=list)
    #: One process's life (a history run: the agent's or a watch's): no fall in it is a
    #: restart. A CSV or a Prometheus export may span restarts.
    one_process: bool = False


#: Names a CSV's time column may have (Grafana's export says "Time").
TIME_COLUMNS = ("t", "time", "timestamp", "date", "datetime")
#: How a value cell marks a missing point in Grafana's and Prometheus's exports: a gap.
GAP_CELLS = frozenset({"", "null", "nan"})
#: Epoch times in finer units than seconds, told apart by magnitude: 1e11 seconds is 3,000
#: years, and 1e11 milliseconds is 1973; a time since the process started is far below both.
EPOCH_UNITS = (
    (1e17, 1e-9, "nanoseconds"),
    (1e14, 1e-6, "microseconds"),
    (1e11, 1e-3, "milliseconds"),
)


GZIP_MAGIC = b"\x1f\x8b"
#: The longest line a CSV may have: a file without line ends (a binary, /dev/zero, a gzip bomb
#: of zeros) would otherwise be read whole into memory as one line.
MAX_LINE = 1 << 20
#: The most JSON a Prometheus answer may hold, decompressed: parsed, it takes several times
#: that in memory.
MAX_JSON = 256 << 20
TRUNCATED_NOTE = "the gzip file ends early (cut off): the rows before the cut were read"


def _open_text(path: str) -> io.TextIOWrapper:
    """The file as text, through gzip where it is compressed (a ``.csv.gz`` export, the
    recorded library's files): told by its first bytes, not its name. A spreadsheet's
    byte-order mark is dropped either way."""
    with open(path, "rb") as f:
        compressed = f.read(len(GZIP_MAGIC)) == GZIP_MAGIC
    if compressed:
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _rows(f: io.TextIOWrapper, notes: list[str], path: str) -> Iterator[list[str]]:
    """A CSV's rows to its end, or to where a gzip file was cut off (a copy interrupted, a
    disk that filled): the whole rows before the cut are kept, and the cut noted."""
    try:
        yield from csv.reader(_lines(f, path, first=2))
    except EOFError:
        notes.append(TRUNCATED_NOTE)


def _line(f: io.TextIOWrapper, path: str, number: int) -> str:
    """One line, of MAX_LINE characters at most: a longer one is no CSV's."""
    line = f.readline(MAX_LINE)
    if len(line) >= MAX_LINE and not line.endswith("\n"):
        raise UsageError(
            f"{path}: line {number} runs past {MAX_LINE:,} characters without an end: not a CSV"
        )
    return line


def _lines(f: io.TextIOWrapper, path: str, first: int) -> Iterator[str]:
    number = first
    while line := _line(f, path, number):
        yield line
        number += 1


def _time(cell: str) -> tuple[float, bool]:
    """A time cell: a number (True), or an ISO 8601 date-time as epoch seconds (False); a
    date-time without a zone is taken as UTC. ValueError when it is neither."""
    try:
        return float(cell), True
    except ValueError:
        moment = datetime.fromisoformat(cell.strip())
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp(), False


def _as_written(row: list[str]) -> str:
    """A row as a CSV writes it, quotes where a cell needs them: ``"1,000",5``."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(row)
    return _shortened(out.getvalue())


def _shortened(text: str, most: int = 120) -> str:
    """A line for an error message: a JSON document is one line, megabytes long."""
    return text if len(text) <= most else text[: most - 1] + "…"


def read_csv(path: str) -> RecordedSeries:
    """Parse a ``t,value[,requests]`` CSV; a bad file is one clear ``UsageError`` naming the
    line. Read as real exports come: quoted fields (Grafana quotes a series' labels), times
    in seconds, finer epoch units or ISO 8601 date-times, and empty, ``null`` or ``NaN``
    values as gaps, skipped and counted."""
    notes: list[str] = []
    try:
        with _open_text(path) as f:
            first = _line(f, path, 1)
            columns = [c.strip().lower() for c in next(csv.reader([first]), [])]
            if (
                len(columns) not in (2, 3)
                or columns[0] not in TIME_COLUMNS
                or columns[2:] not in ([], ["requests"])
            ):
                raise UsageError(
                    f"{path}: expected a header 't,value' (seconds, bytes) or "
                    f"'t,value,requests', found {_shortened(first.strip())!r}"
                )
            width = len(columns)
            times, values, requests = array("d"), array("d"), array("d")
            scale: float | None = None  # the numeric times' unit, from the first one
            gaps = 0
            for number, row in enumerate(_rows(f, notes, path), start=2):
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) == width and row[1].strip().lower() in GAP_CELLS:
                    gaps += 1
                    continue
                try:
                    if len(row) != width:
                        raise ValueError
                    t, numeric = _time(row[0])
                    numbers = [t, *(float(cell) for cell in row[1:])]
                except ValueError:
                    raise UsageError(
                        f"{path}:{number}: not {width} numbers: {_as_written(row)!r}"
                    ) from None
                if not all(-MAX_READING < n < MAX_READING for n in numbers):
                    # The detector would skip it; a file says something is wrong with it.
                    raise UsageError(
                        f"{path}:{number}: not a reading (nan, an infinity, or beyond "
                        f"1e100): {_as_written(row)!r}"
                    )
                if numeric:
                    if scale is None:
                        scale = 1.0
                        for least, factor, unit in EPOCH_UNITS:
                            if abs(t) >= least:
                                scale = factor
                                notes.append(f"times read as epoch {unit}")
                                break
                    numbers[0] = t * scale
                if times and numbers[0] < times[-1]:
                    # The detector skips a sample older than the last; a file would lose
                    # every row after the turn without a word (two files pasted together).
                    raise UsageError(
                        f"{path}:{number}: time goes back from {times[-1]:g} to "
                        f"{numbers[0]:g}; sort the rows by time"
                    )
                times.append(numbers[0])
                values.append(numbers[1])
                if width == 3:
                    requests.append(numbers[2])
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text CSV file") from None
    except csv.Error as exc:
        raise UsageError(f"{path}: not a CSV file: {exc}") from None
    except EOFError:
        raise UsageError(f"{path}: the gzip file is cut off before its first row") from None
    except zlib.error as exc:
        raise UsageError(f"{path}: a damaged gzip file: {exc}") from None
    if not times:
        raise UsageError(f"{path}: no samples after the header")
    if gaps:
        notes.append(f"{gaps:,} rows without a value skipped (gaps)")
    stem = os.path.splitext(os.path.basename(path).removesuffix(".gz"))[0]
    name = stem if columns[1] == "value" else columns[1]
    return RecordedSeries(path, name, times, values, requests if width == 3 else None, notes)


#: The memory series of a history that analyze replays.
HISTORY_SERIES = frozenset(watched.names_read_by("analyze"))


def read_prometheus(path: str) -> list[RecordedSeries]:
    """A Prometheus range query's answer as ``/api/v1/query_range`` gives it (the whole
    answer, or its ``data``): one series per result, named by its labels. A ``NaN`` point
    (a stale series) is a gap, skipped and counted, as in a CSV."""
    try:
        with _open_text(path) as f:
            text = f.read(MAX_JSON + 1)
        if len(text) > MAX_JSON:
            raise UsageError(
                f"{path}: over {MAX_JSON >> 20} MiB of JSON, too much to analyse at once; ask "
                "Prometheus for fewer series or a coarser step"
            )
        document = json.loads(text)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not JSON: {_shortened(str(exc))}") from None
    except EOFError:
        raise UsageError(f"{path}: the gzip file is cut off: no whole answer in it") from None
    except zlib.error as exc:
        raise UsageError(f"{path}: a damaged gzip file: {exc}") from None
    data = document.get("data", document) if isinstance(document, dict) else None
    results = data.get("result") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("resultType") != "matrix"
        or not isinstance(results, list)
    ):
        raise UsageError(
            f"{path}: expected a Prometheus range query's answer (/api/v1/query_range, "
            "resultType matrix) or a CSV with a header 't,value'"
        )
    out = []
    for number, result in enumerate(results, start=1):
        metric = result.get("metric") if isinstance(result, dict) else None
        name = _labelled(metric) if isinstance(metric, dict) else ""
        name = name or f"result {number}"
        times, values = array("d"), array("d")
        gaps = 0
        try:
            for t, v in result.get("values") or []:
                t, v = float(t), float(v)
                if math.isnan(v):
                    gaps += 1
                    continue
                if not (-MAX_READING < t < MAX_READING and -MAX_READING < v < MAX_READING):
                    raise ValueError
                if times and t < times[-1]:
                    raise ValueError
                times.append(t)
                values.append(v)
        except (ValueError, TypeError, AttributeError):
            raise UsageError(
                f"{path}: {name}: not [time, value] pairs in time order, each a reading"
            ) from None
        if times:
            notes = [f"{gaps:,} points without a value skipped (gaps)"] if gaps else []
            out.append(RecordedSeries(path, name, times, values, None, notes))
    if not out:
        raise UsageError(f"{path}: the answer holds no samples")
    return out


def _labelled(metric: dict[str, object]) -> str:
    """``process_resident_memory_bytes{instance="tts:9109"}``, as Prometheus writes a series."""
    name = str(metric.get("__name__", ""))
    labels = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return f"{name}{{{labels}}}" if labels else name


def _is_json(path: str) -> bool:
    """Whether the file begins as a JSON object does (a byte-order mark and spaces aside)."""
    try:
        with _open_text(path) as f:
            start = f.read(64)
    except (OSError, UnicodeDecodeError, EOFError, zlib.error):
        return False  # read_csv says why
    return start.lstrip().startswith("{")


def read_inputs(path: str) -> list[RecordedSeries]:
    """A CSV file is one series; a Prometheus range query's answer, one per result; a history
    (a run, or a directory of runs) gives each run's memory series, named ``run/series``."""
    if not os.path.isdir(path):
        return read_prometheus(path) if _is_json(path) else [read_csv(path)]
    runs = find_runs(path)
    if not runs:
        raise UsageError(f"{path}: a directory without diag history runs")
    out = []
    problems: list[str] = []
    for run_dir in runs:
        history = read_run(run_dir)
        problems += history.problems
        counters = [data for data in history.series.values() if data.name == "requests_total"]
        for key, data in sorted(history.series.items()):
            if data.name in HISTORY_SERIES and len(data.times) > 1:
                name = f"{os.path.basename(run_dir)}/{key}"
                requests = _requests_at(data.times, counters) if counters else None
                # What the reader skipped in the run (damage, a cut): each of its series' note.
                notes = list(history.problems)
                out.append(
                    RecordedSeries(
                        run_dir, name, data.times, data.lows, requests, notes, one_process=True
                    )
                )
    if not out:
        why = f": {problems[0]}" if problems else ""
        raise UsageError(f"{path}: no memory series of two samples or more in its runs{why}")
    return out


def _requests_at(times: array[float], counters: list[SeriesData]) -> array[float]:
    """All endpoints' requests so far at each of ``times``: each counter's last value then."""
    total = array("d", bytes(8 * len(times)))
    for counter in counters:
        for i, t in enumerate(times):
            at = bisect_right(counter.times, t) - 1
            if at >= 0:
                total[i] += counter.values[at]
    return total
