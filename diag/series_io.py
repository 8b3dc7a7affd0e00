"""Reading recorded series: CSV files with a header ``t,value`` (seconds, bytes), and the memory
series of diag histories."""

from __future__ import annotations

import os
from array import array
from dataclasses import dataclass

from diag import watched
from diag.errors import UsageError
from diag.history import find_runs, read_run


@dataclass
class RecordedSeries:
    path: str
    name: str  # the value column's name, or the file's stem when it is just "value"
    times: array[float]
    values: array[float]


def read_csv(path: str) -> RecordedSeries:
    """Parse a ``t,value`` CSV; a bad file is one clear ``UsageError`` naming the line."""
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline().strip().lower().replace(" ", "")
            columns = header.split(",")
            if len(columns) != 2 or columns[0] not in ("t", "time", "timestamp"):
                raise UsageError(
                    f"{path}: expected a header 't,value' (seconds, bytes), found {header!r}"
                )
            times, values = array("d"), array("d")
            for number, line in enumerate(f, start=2):
                if not line.strip():
                    continue
                t_text, _, v_text = line.partition(",")
                try:
                    t, v = float(t_text), float(v_text)
                except ValueError:
                    raise UsageError(
                        f"{path}:{number}: not two numbers: {line.strip()!r}"
                    ) from None
                times.append(t)
                values.append(v)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text CSV file") from None
    if not times:
        raise UsageError(f"{path}: no samples after the header")
    stem = os.path.splitext(os.path.basename(path))[0]
    return RecordedSeries(path, stem if columns[1] == "value" else columns[1], times, values)


#: The memory series of a history that analyze replays.
HISTORY_SERIES = frozenset(watched.names_read_by("analyze"))


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
