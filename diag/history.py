"""The crash-safe history: what the agent and ``diag watch`` saw, readable after a SIGKILL.

Format, version 1. A history directory holds one directory per run
(``<UTC start>-<pid>``), and each run a sequence of segment files ``seg-NNNNNN.dh``:

    segment := b"DIAGHIST" | version u16 | 6 reserved bytes | record*
    record  := magic u16 (0xD1A6) | type u8 | 0 u8 | length u32 | crc32 u32 | payload
               (little-endian; the CRC covers type, length and payload)

    SERIES  (1)  id u16 | JSON {"name", "labels"}         defines a series id in this segment
    TICK    (2)  t f64 | count u16 | count x (id u16, value f64)
    EVENT   (3)  JSON {"kind": "start" | "stop" | "exit" | "verdict" | "finding" | ..., "t", ...}
    SUMMARY (4)  t0 f64 | t1 f64 | count u16 | count x (id u16, min f64, max f64, last f64)

Why it survives a kill: records are only appended, each is whole-or-detectably-not (length and
CRC), and the writer hands them to the kernel at least once a second; SIGKILL loses only what
was still in the process. The reader takes every record whose CRC holds, stops a segment at a
cut record, and resyncs on the magic after a damaged one, saying what it skipped.

Bounded: a segment is closed at ``segment_bytes``; when the run's raw segments pass
``raw_budget``, the oldest is rewritten as one SUMMARY per minute (each series' min, max and
last) and the raw file removed; summaries beyond ``summary_budget`` are dropped oldest first.
Each segment repeats the series definitions, so any suffix of segments reads on its own.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import math
import os
import re
import shutil
import struct
import threading
import time
import zlib
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from diag.model import Labels, Sample, series_key
from diag.procfs import pid_alive

log = logging.getLogger("diag")

VERSION = 1
FILE_MAGIC = b"DIAGHIST"
FILE_HEADER = struct.Struct("<8sH6x")
RECORD_MAGIC = 0xD1A6
RECORD_HEADER = struct.Struct("<HBxII")
SERIES, TICK, EVENT, SUMMARY = 1, 2, 3, 4
_TICK_HEAD = struct.Struct("<dH")
_PAIR = struct.Struct("<Hd")
_SUMMARY_HEAD = struct.Struct("<ddH")
_SUMMARY_ROW = struct.Struct("<Hddd")
_MAGIC_BYTES = struct.pack("<H", RECORD_MAGIC)

MiB = 1024 * 1024
#: Beside the segments: faulthandler's stacks of a native crash (probes.endings writes it).
FAULT_FILE = "fault.txt"
#: Events handed to the kernel at once: what a SIGKILL right after must not take away (the
#: start and the end of a run, findings, and what the process said as it ended).
FORCED_EVENTS = frozenset({"start", "stop", "exit", "finding", "cuda-oom", "signal", "exception"})


#: The reason of the stop record a ``diag watch`` writes when the watch ends while its
#: target still runs: the watch's end, not the process's.
WATCH_ENDED = "watch ended"


def default_root(env: Mapping[str, str] = os.environ) -> str:
    """``$DIAG_HISTORY``, else ``$XDG_STATE_HOME/diag/history``, else ``~/.local/state/...``."""
    if env.get("DIAG_HISTORY"):
        return env["DIAG_HISTORY"]
    state = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "diag", "history")


@functools.lru_cache(maxsize=64)
def _tick_struct(count: int) -> struct.Struct:
    """One struct for a whole tick: t, count and count (id, value) pairs, packed at once."""
    return struct.Struct("<dH" + "Hd" * count)


def _record(kind: int, payload: bytes) -> bytes:
    head = struct.pack("<BxI", kind, len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head))
    return RECORD_HEADER.pack(RECORD_MAGIC, kind, len(payload), crc) + payload


def _crc_of(kind: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<BxI", kind, len(payload))))


# -- writing ----------------------------------------------------------------------------------


@dataclass
class WriterStats:
    bytes_written: int = 0
    records: int = 0
    write_errors: int = 0
    disk_full: bool = False
    dropped_bytes: int = 0  # buffered while the disk was full, beyond the buffer's bound


class HistoryWriter:
    """Appends ticks and events to a run directory. Never raises on I/O at runtime: a full or
    failing disk is counted, logged once, and retried; sampling goes on. Thread-safe: ticks
    come from the sampler thread, a CUDA OOM record from whichever thread allocated."""

    def __init__(
        self,
        run_dir: str,
        *,
        flush_seconds: float = 1.0,
        segment_bytes: int = 8 * MiB,
        raw_budget: int = 64 * MiB,
        summary_budget: int = 64 * MiB,
        max_buffer: int = 16 * MiB,
        monotonic: Any = time.monotonic,
    ) -> None:
        self.run_dir = run_dir
        self.flush_seconds = flush_seconds
        self.segment_bytes = segment_bytes
        self.raw_budget = raw_budget
        self.summary_budget = summary_budget
        self.max_buffer = max_buffer
        self.stats = WriterStats()
        self._monotonic = monotonic
        self._ids: dict[tuple[str, Labels], int] = {}
        self._last_keys: list[tuple[str, Labels]] = []
        self._last_ids: list[int | None] = []
        self._definitions: list[bytes] = []  # SERIES records, repeated at each segment's start
        self._buffer = bytearray()
        self._lock = threading.RLock()
        self._last_flush = monotonic()
        self._fd = -1
        self._segment = 0
        self._segment_size = 0
        self._exhausted_at: float | None = None
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        existing = _segments(run_dir)
        self._segment = existing[-1][0] if existing else 0

    # records in

    def write_samples(self, t: float, samples: Sequence[Sample]) -> None:
        with self._lock:
            self._write_samples(t, samples)

    def _write_samples(self, t: float, samples: Sequence[Sample]) -> None:
        values = [s.value for s in samples]
        total = sum(values)
        if total - total != 0.0:
            # A nan or an infinity among them (a probe's failed reading, a gauge divided by
            # zero): no reading, so not recorded, or every replay and report of the run would
            # carry it (a first value of "inf TiB", Infinity in the report's JSON). Checked on
            # the sum, once a tick; a sum of finite values that overflows keeps them all.
            finite = [s for s in samples if math.isfinite(s.value)]
            if len(finite) < len(samples):
                samples = finite
                values = [s.value for s in samples]
        keys = [(s.name, s.labels) for s in samples]
        if keys != self._last_keys:
            # The set of series changed (the first tick, a new endpoint, a probe waking):
            # look the ids up once; most ticks repeat the last tick's series exactly.
            ids = [self._ids.get(k) for k in keys]
            for i, series_id in enumerate(ids):
                if series_id is None:
                    ids[i] = self._define(samples[i])
            self._last_keys = keys
            self._last_ids = ids
        ids = self._last_ids
        count = len(ids)
        fields: list[float | int | None] = [t, count, *([0] * (2 * count))]
        fields[2::2] = ids
        fields[3::2] = values
        if None in ids:  # more than 65,535 series: the surplus is not recorded
            kept = [
                (i, v) for i, v in zip(fields[2::2], fields[3::2], strict=True) if i is not None
            ]
            count = len(kept)
            fields = [t, count, *(x for pair in kept for x in pair)]
        self._buffer += _record(TICK, _tick_struct(count).pack(*fields))
        self._maybe_flush()

    def _define(self, sample: Sample) -> int | None:
        if len(self._ids) >= 65535:
            return None
        series_id = self._ids[(sample.name, sample.labels)] = len(self._ids)
        document = {"name": sample.name, "labels": dict(sample.labels)}
        definition = _record(SERIES, struct.pack("<H", series_id) + json.dumps(document).encode())
        self._definitions.append(definition)
        self._buffer += definition
        return series_id

    def write_event(self, kind: str, t: float, **fields: Any) -> None:
        document = {"kind": kind, "t": t, **fields}
        with self._lock:
            self._buffer += _record(EVENT, json.dumps(document, default=str).encode())
            self._maybe_flush(force=kind in FORCED_EVENTS)

    # flushing

    def _maybe_flush(self, force: bool = False) -> None:
        now = self._monotonic()
        if force or now - self._last_flush >= self.flush_seconds or len(self._buffer) >= MiB:
            self._flush()

    def flush(self) -> None:
        """Hand the buffer to the kernel (a SIGKILL after this loses nothing of it)."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        self._last_flush = self._monotonic()
        if not self._buffer:
            return
        try:
            if self._fd < 0 or self._segment_size >= self.segment_bytes:
                self._next_segment()
            written = os.write(self._fd, self._buffer)
            self._segment_size += written
            self.stats.bytes_written += written
            del self._buffer[:written]
            if self._buffer:  # a short write: the rest next time
                return
            if self.stats.disk_full:
                log.warning("diag: history writes resumed in %s", self.run_dir)
            self.stats.disk_full = False
        except OSError as exc:
            self._write_failed(exc)

    def _write_failed(self, exc: OSError) -> None:
        self.stats.write_errors += 1
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            self._out_of_descriptors(exc)
        first = not self.stats.disk_full
        self.stats.disk_full = True
        if first:
            why = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            log.warning(
                "diag: history not written to %s: %s; sampling goes on, writes are retried",
                self.run_dir,
                why,
            )
        if len(self._buffer) > self.max_buffer:
            # Keep the newest ticks: cut at a record boundary near the front.
            excess = len(self._buffer) - self.max_buffer
            cut = self._buffer.find(_MAGIC_BYTES, excess)
            cut = cut if cut >= 0 else len(self._buffer)
            self.stats.dropped_bytes += cut
            del self._buffer[:cut]
            self._buffer[:0] = b"".join(self._definitions)

    def _out_of_descriptors(self, exc: OSError) -> None:
        """The process ran out of file descriptors as a segment was opened: a
        ``resource-exhausted`` event into the buffer, written once a descriptor is free again
        (at most one a minute)."""
        now = self._monotonic()
        if self._exhausted_at is not None and now - self._exhausted_at < 60.0:
            return
        self._exhausted_at = now
        document = {
            "kind": "resource-exhausted", "t": time.time(), "resource": "fds",
            "error": errno.errorcode.get(exc.errno or 0, str(exc.errno)),
            "type": "builtins.OSError", "message": str(exc)[:300], "how": "agent",
            "where": "diag history writer: opening a segment", "stack": [],
        }  # fmt: skip
        self._buffer += _record(EVENT, json.dumps(document).encode())

    def _next_segment(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            # Only a closed segment can tip the budget: check it here, not at every flush.
            self._enforce_budget()
        number = self._segment + 1
        path = os.path.join(self.run_dir, f"seg-{number:06d}.dh")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        joined = b"".join(self._definitions)
        head = FILE_HEADER.pack(FILE_MAGIC, VERSION) + joined
        try:
            if os.write(fd, head) < len(head):
                raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            # No segment without its head: the file goes, and the next try takes the same
            # number (a full disk retried at every flush must not leave a file each time).
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        self._segment = number
        self._fd = fd
        self._segment_size = len(head)
        # The definitions are in the new segment's head: don't write them twice.
        if joined and self._buffer.startswith(joined):
            del self._buffer[: len(joined)]

    def _enforce_budget(self) -> None:
        segments = _segments(self.run_dir)
        raw = [(n, p) for n, p in segments if n != self._segment and not p.endswith(".sum.dh")]
        raw_bytes = sum(os.path.getsize(p) for _, p in raw) + self._segment_size
        while raw and raw_bytes > self.raw_budget:
            _number, path = raw.pop(0)
            size = os.path.getsize(path)
            summarise_segment(path)
            raw_bytes -= size
        summaries = [p for _, p in _segments(self.run_dir) if p.endswith(".sum.dh")]
        total = sum(os.path.getsize(p) for p in summaries)
        while len(summaries) > 1 and total > self.summary_budget:
            oldest = summaries.pop(0)
            total -= os.path.getsize(oldest)
            os.unlink(oldest)

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._close_fd()

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _segments(run_dir: str) -> list[tuple[int, str]]:
    found = []
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return []
    for name in names:
        match = re.fullmatch(r"seg-(\d{6})(\.sum)?\.dh", name)
        if match:
            found.append((int(match.group(1)), os.path.join(run_dir, name)))
    return sorted(found)


def summarise_segment(path: str, bucket_seconds: float = 60.0) -> str:
    """Rewrite a raw segment as per-minute (min, max, last) summaries; returns the new path."""
    segment = read_segment(path)
    out = bytearray(FILE_HEADER.pack(FILE_MAGIC, VERSION))
    for series_id, (name, labels) in segment.series.items():
        out += _record(
            SERIES,
            struct.pack("<H", series_id) + json.dumps({"name": name, "labels": labels}).encode(),
        )
    buckets: dict[float, dict[int, list[float]]] = {}
    last_time: dict[float, float] = {}
    for t, pairs in segment.ticks:
        start = t - t % bucket_seconds
        last_time[start] = t  # a summary is stamped with its last sample, never later
        rows = buckets.setdefault(start, {})
        for series_id, value in pairs:
            row = rows.get(series_id)
            if row is None:
                rows[series_id] = [value, value, value]
            else:
                row[0] = min(row[0], value)
                row[1] = max(row[1], value)
                row[2] = value
    for start, rows in sorted(buckets.items()):
        payload = bytearray(_SUMMARY_HEAD.pack(start, last_time[start], len(rows)))
        for series_id, (low, high, last) in rows.items():
            payload += _SUMMARY_ROW.pack(series_id, low, high, last)
        out += _record(SUMMARY, bytes(payload))
    for event in segment.events:
        out += _record(EVENT, json.dumps(event).encode())
    target = path[: -len(".dh")] + ".sum.dh"
    temporary = target + ".tmp"
    with open(temporary, "wb") as f:
        f.write(out)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, target)
    os.unlink(path)
    return target


# -- reading ----------------------------------------------------------------------------------


@dataclass
class Segment:
    path: str
    series: dict[int, tuple[str, dict[str, str]]] = field(default_factory=dict)
    ticks: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list)
    summaries: list[tuple[float, float, list[tuple[int, float, float, float]]]] = field(
        default_factory=list
    )
    events: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _scan(data: bytes, path: str, problems: list[str]) -> Iterator[tuple[int, memoryview]]:
    """Every record whose CRC holds; cut or damaged bytes are skipped and reported."""
    view = memoryview(data)
    offset = FILE_HEADER.size
    end = len(data)
    skipped_from: int | None = None
    while offset + RECORD_HEADER.size <= end:
        magic, kind, length, crc = RECORD_HEADER.unpack_from(data, offset)
        body = offset + RECORD_HEADER.size
        valid = magic == RECORD_MAGIC and body + length <= end
        if valid and _crc_of(kind, view[body : body + length]) == crc:
            if skipped_from is not None:
                skipped = offset - skipped_from
                problems.append(f"{path}: {skipped} damaged bytes skipped at offset {skipped_from}")
                skipped_from = None
            yield kind, view[body : body + length]
            offset = body + length
            continue
        if magic == RECORD_MAGIC and body + length > end and skipped_from is None:
            resume = _next_whole_record(data, view, offset + 1)
            if resume is None:
                # A record cut short: the writer was killed mid-write, or is writing it now.
                problems.append(f"{path}: the last record is cut short ({end - offset} bytes)")
                return
            # Whole records after it: its length is damaged, not cut; they are read on.
            skipped_from, offset = offset, resume
            continue
        if skipped_from is None:
            skipped_from = offset
        next_magic = data.find(_MAGIC_BYTES, offset + 1)
        offset = next_magic if next_magic >= 0 else end
    if skipped_from is not None:
        problems.append(
            f"{path}: {end - skipped_from} damaged bytes skipped at offset {skipped_from}"
        )
    elif offset < end:
        problems.append(f"{path}: the last record is cut short ({end - offset} bytes)")


def _next_whole_record(data: bytes, view: memoryview, start: int) -> int | None:
    """Where the first record at or after ``start`` whose CRC holds begins, or None."""
    end = len(data)
    at = data.find(_MAGIC_BYTES, start)
    while 0 <= at <= end - RECORD_HEADER.size:
        _, kind, length, crc = RECORD_HEADER.unpack_from(data, at)
        body = at + RECORD_HEADER.size
        if body + length <= end and _crc_of(kind, view[body : body + length]) == crc:
            return at
        at = data.find(_MAGIC_BYTES, at + 1)
    return None


def read_segment(path: str) -> Segment:
    segment = Segment(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        segment.problems.append(f"{path}: cannot read: {exc.strerror or exc}")
        return segment
    if len(data) < FILE_HEADER.size:
        segment.problems.append(f"{path}: shorter than a header ({len(data)} bytes)")
        return segment
    magic, version = FILE_HEADER.unpack_from(data)
    if magic != FILE_MAGIC:
        segment.problems.append(f"{path}: not a diag history segment")
        return segment
    if version > VERSION:
        segment.problems.append(
            f"{path}: written by a newer diag (format {version}, this reads {VERSION}): upgrade"
        )
        return segment
    for kind, payload in _scan(data, path, segment.problems):
        try:
            _decode(segment, kind, payload)
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            segment.problems.append(f"{path}: a record of type {kind} did not decode ({exc})")
    return segment


def _decode(segment: Segment, kind: int, payload: memoryview) -> None:
    if kind == SERIES:
        (series_id,) = struct.unpack_from("<H", payload)
        document = json.loads(bytes(payload[2:]))
        segment.series[series_id] = (document["name"], document["labels"])
    elif kind == TICK:
        t, count = _TICK_HEAD.unpack_from(payload)
        if _TICK_HEAD.size + count * _PAIR.size != len(payload):
            raise ValueError(f"a tick of {count} samples in {len(payload)} bytes")
        pairs = list(_PAIR.iter_unpack(payload[_TICK_HEAD.size :]))
        segment.ticks.append((t, pairs))
    elif kind == EVENT:
        segment.events.append(json.loads(bytes(payload)))
    elif kind == SUMMARY:
        t0, t1, count = _SUMMARY_HEAD.unpack_from(payload)
        if _SUMMARY_HEAD.size + count * _SUMMARY_ROW.size != len(payload):
            raise ValueError(f"a summary of {count} rows in {len(payload)} bytes")
        rows = list(_SUMMARY_ROW.iter_unpack(payload[_SUMMARY_HEAD.size :]))
        segment.summaries.append((t0, t1, rows))


@dataclass
class SeriesData:
    name: str
    labels: dict[str, str]
    times: array[float] = field(default_factory=lambda: array("d"))
    values: array[float] = field(default_factory=lambda: array("d"))
    #: Index -> (min, max) of the points that are per-minute summaries; raw points have none.
    ranges: dict[int, tuple[float, float]] = field(default_factory=dict)

    @property
    def lows(self) -> array[float]:
        """Each point's lowest value (its own for a raw sample)."""
        return self._patched(0)

    @property
    def highs(self) -> array[float]:
        return self._patched(1)

    def _patched(self, which: int) -> array[float]:
        out = array("d", self.values)
        for index, bounds in self.ranges.items():
            out[index] = bounds[which]
        return out


@dataclass
class History:
    run_dir: str
    series: dict[str, SeriesData]
    events: list[dict[str, Any]]
    problems: list[str]
    ticks: int

    @property
    def first_sample(self) -> float | None:
        starts = [s.times[0] for s in self.series.values() if s.times]
        return min(starts) if starts else None

    @property
    def last_sample(self) -> float | None:
        ends = [s.times[-1] for s in self.series.values() if s.times]
        return max(ends) if ends else None

    def get(self, name: str, **labels: str) -> SeriesData | None:
        return self.series.get(series_key(name, tuple(sorted(labels.items()))))

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == kind]


def read_run(run_dir: str) -> History:
    """Everything recoverable from a run directory, in time order, with what was skipped."""
    series: dict[str, SeriesData] = {}
    events: list[dict[str, Any]] = []
    problems: list[str] = []
    ticks = 0
    segments = _segments(run_dir)
    if not segments:
        problems.append(f"{run_dir}: no history segments here")
    for _, path in segments:
        segment = read_segment(path)
        problems.extend(segment.problems)
        events.extend(segment.events)
        names = {
            series_id: _series_for(series, name, labels)
            for series_id, (name, labels) in segment.series.items()
        }
        for _t0, t1, rows in segment.summaries:
            for series_id, low, high, last in rows:
                data = names.get(series_id)
                if data is not None:
                    data.ranges[len(data.values)] = (low, high)
                    data.times.append(t1)
                    data.values.append(last)
        # The hot loop of a week-long report: bound appends, looked up once per series.
        appenders = {i: (d.times.append, d.values.append) for i, d in names.items()}
        for t, pairs in segment.ticks:
            ticks += 1
            for series_id, value in pairs:
                append = appenders.get(series_id)
                if append is not None:
                    append[0](t)
                    append[1](value)
    events.sort(key=lambda e: float(e.get("t", 0.0)))
    return History(run_dir, series, events, problems, ticks)


def _series_for(series: dict[str, SeriesData], name: str, labels: dict[str, str]) -> SeriesData:
    key = series_key(name, tuple(sorted(labels.items())))
    data = series.get(key)
    if data is None:
        data = series[key] = SeriesData(name, labels)
    return data


RUN_NAME = re.compile(r"\d{8}T\d{6}Z-\d+(-watch)?$")  # a watcher's run ends in -watch


def run_name(start: float, pid: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(start)) + f"-{pid}"


def find_runs(root: str) -> list[str]:
    """Run directories under ``root`` (or ``root`` itself if it is one), oldest first."""
    if _segments(root):
        return [root]
    try:
        names = sorted(n for n in os.listdir(root) if RUN_NAME.match(n))
    except OSError:
        return []
    return [os.path.join(root, n) for n in names]


#: The most runs a history root keeps. A server that forks a worker every few hundred
#: requests (gunicorn's max_requests, a Pool's maxtasksperchild) starts a run per worker, and
#: each run is bounded on its own (``HistoryWriter``), not their number.
MAX_RUNS = 200


def prune_runs(root: str, keep: int = MAX_RUNS) -> int:
    """Remove the oldest runs beyond ``keep`` whose process is gone (a live one's run is
    never removed, nor is anything that is not a run); returns how many went. Never raises."""
    try:
        names = sorted(n for n in os.listdir(root) if RUN_NAME.match(n))
    except OSError:
        return 0
    removed = 0
    for name in names:
        if len(names) - removed <= keep:
            break
        if pid_alive(int(name.split("-")[1])):
            continue  # a live process's run stays, and the next oldest goes instead
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        removed += 1
    return removed


def latest_run(root: str) -> str | None:
    """The run written to most recently (a live one, or the last to die)."""
    runs = find_runs(root)
    if not runs:
        return None

    def last_write(run: str) -> float:
        return max((os.path.getmtime(p) for _, p in _segments(run)), default=0.0)

    return max(runs, key=last_write)
