"""The crash-safe history: round trips, every possible cut, damage, a live reader, a full disk,
the size bound, and a real process SIGKILLed mid-run."""

import errno
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from diag import history as h
from diag.model import Sample
from tests.conftest import child_env, small_tmpfs


def _samples(i):
    return [
        Sample("process_resident_memory_bytes", 1e9 + i * 1000.0),
        Sample("cuda_allocated_bytes", float(i), (("device", "0"),)),
    ]


def _write_run(run_dir, ticks=50, **kwargs):
    writer = h.HistoryWriter(str(run_dir), flush_seconds=0.0, **kwargs)
    writer.write_event("start", 0.0, pid=42, command=["python", "app.py"])
    for i in range(ticks):
        writer.write_samples(float(i), _samples(i))
    return writer


def test_round_trip(tmp_path):
    writer = _write_run(tmp_path / "run")
    writer.write_event("stop", 50.0, reason="stop")
    writer.close()
    run = h.read_run(str(tmp_path / "run"))
    assert run.problems == []
    assert run.ticks == 50
    rss = run.get("process_resident_memory_bytes")
    assert list(rss.times) == [float(i) for i in range(50)]
    assert rss.values[-1] == 1e9 + 49000.0
    assert list(run.get("cuda_allocated_bytes", device="0").values) == [float(i) for i in range(50)]
    assert [e["kind"] for e in run.events] == ["start", "stop"]
    assert run.events[0]["command"] == ["python", "app.py"]
    assert (run.first_sample, run.last_sample) == (0.0, 49.0)


def test_a_reading_that_is_no_number_is_not_recorded(tmp_path):
    """A probe's failed reading (nan, an infinity) is left out of its tick; the tick's other
    series are kept, and the run's report stays valid JSON (no NaN, no Infinity)."""
    writer = h.HistoryWriter(str(tmp_path / "run"), flush_seconds=0.0)
    writer.write_event("start", 0.0, pid=42, command=["python", "app.py"])
    bad = {3: math.nan, 4: math.inf, 5: -math.inf}
    for i in range(8):
        samples = _samples(i)
        samples[0] = Sample(samples[0].name, bad.get(i, samples[0].value))
        writer.write_samples(float(i), samples)
    writer.close()
    run = h.read_run(str(tmp_path / "run"))
    assert list(run.get("process_resident_memory_bytes").times) == [0.0, 1.0, 2.0, 6.0, 7.0]
    assert list(run.get("cuda_allocated_bytes", device="0").times) == [float(i) for i in range(8)]
    from reports.postmortem import build

    def refuse(constant):
        raise AssertionError(f"{constant} in the report's JSON")

    json.loads(
        json.dumps(build(str(tmp_path / "run")).to_json(), default=str), parse_constant=refuse
    )


def test_every_cut_in_the_last_records_recovers_all_before_it(tmp_path):
    _write_run(tmp_path / "full", ticks=20).close()
    (segment,) = (tmp_path / "full").glob("seg-*.dh")  # the documented file names
    data = segment.read_bytes()
    ends = _record_ends(data)
    cut_dir = tmp_path / "cut"
    cut_dir.mkdir()
    for cut in range(ends[-4], len(data) + 1):  # every byte of the last three records
        (cut_dir / "seg-000001.dh").write_bytes(data[:cut])
        run = h.read_run(str(cut_dir))  # never raises
        complete = sum(1 for end in ends if end <= cut)
        expected_ticks = complete - 3  # the start event and two series definitions
        assert run.ticks == expected_ticks, cut
        if cut in ends:
            assert run.problems == [], cut
        else:
            assert len(run.problems) == 1 and "cut short" in run.problems[0], (cut, run.problems)


def _record_ends(data):
    ends, offset = [], h.FILE_HEADER.size
    while offset < len(data):
        _, _, length, _ = h.RECORD_HEADER.unpack_from(data, offset)
        offset += h.RECORD_HEADER.size + length
        ends.append(offset)
    return ends


def test_damage_in_the_middle_is_skipped_and_reported(tmp_path):
    _write_run(tmp_path / "run", ticks=30).close()
    (segment,) = (tmp_path / "run").glob("seg-*.dh")
    data = bytearray(segment.read_bytes())
    ends = _record_ends(bytes(data))
    start = ends[10]
    data[start + 14 : start + 18] = b"\xff\xff\xff\xff"  # inside a tick's payload
    segment.write_bytes(bytes(data))
    run = h.read_run(str(tmp_path / "run"))
    assert run.ticks == 29  # one damaged tick lost, everything after it recovered
    assert len(run.problems) == 1
    assert f"damaged bytes skipped at offset {start}" in run.problems[0]


@pytest.mark.parametrize("record", [0, 10])  # the first record (the start event), a tick
def test_a_damaged_length_is_skipped_not_read_as_the_end(tmp_path, record):
    """A length field damaged to point past the end looks like a record cut short; with
    whole records after it, it is damage: they are read on, the stop record too."""
    writer = _write_run(tmp_path / "run", ticks=30)
    writer.write_event("stop", 30.0, reason="exit")
    writer.close()
    (segment,) = (tmp_path / "run").glob("seg-*.dh")
    data = bytearray(segment.read_bytes())
    start = ([h.FILE_HEADER.size, *_record_ends(bytes(data))])[record]
    data[start + 4 : start + 8] = (0x7FFF0000).to_bytes(4, "little")  # its length
    segment.write_bytes(bytes(data))
    run = h.read_run(str(tmp_path / "run"))
    assert run.ticks == (30 if record == 0 else 29)  # the damaged record alone is lost
    assert run.events_of("stop")[-1]["reason"] == "exit"
    assert len(run.problems) == 1
    assert f"damaged bytes skipped at offset {start}" in run.problems[0]


def test_not_a_history_and_a_newer_format_say_so(tmp_path):
    (tmp_path / "seg-000001.dh").write_bytes(b"hello world, not a history at all")
    assert h.read_run(str(tmp_path)).problems == [
        f"{tmp_path}/seg-000001.dh: not a diag history segment"
    ]
    (tmp_path / "seg-000001.dh").write_bytes(h.FILE_HEADER.pack(h.FILE_MAGIC, 99))
    (problem,) = h.read_run(str(tmp_path)).problems
    assert "written by a newer diag (format 99, this reads 1): upgrade" in problem


WRITER = """
import sys, time
from diag.history import HistoryWriter
from diag.model import Sample
w = HistoryWriter(sys.argv[1], flush_seconds=0.0, segment_bytes=4096)
for i in range(3000):
    w.write_samples(float(i), [Sample("process_resident_memory_bytes", float(i))])
    if i % 100 == 0:
        time.sleep(0.001)
w.close()
"""


@pytest.mark.e2e
def test_a_reader_while_the_writer_writes(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], env=child_env())
    reads = 0
    seen = -1
    while proc.poll() is None or reads == 0:
        run = h.read_run(str(tmp_path))
        series = run.get("process_resident_memory_bytes")
        values = list(series.values) if series else []
        # A prefix of what is being written: in order, no gaps, at most one cut record.
        assert values == [float(i) for i in range(len(values))]
        assert all(
            "cut short" in p or "no history segments" in p or "shorter than a header" in p
            for p in run.problems
        ), run.problems
        seen = max(seen, len(values))
        reads += 1
    assert proc.wait() == 0
    final = h.read_run(str(tmp_path))
    assert len(final.get("process_resident_memory_bytes").values) == 3000
    assert final.problems == []
    assert reads > 1


def _switchable_full_disk(monkeypatch, full):
    """The history's writes fail as on a full disk while ``on``: {"on": bool}, to switch."""
    real_write = os.write
    state = {"on": full}

    def write(fd, data):
        if state["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(h.os, "write", write)
    return state


def test_a_full_disk_is_said_once_and_nothing_is_lost_when_space_returns(
    tmp_path, monkeypatch, caplog
):
    writer = h.HistoryWriter(str(tmp_path / "run"), flush_seconds=0.0)
    full = _switchable_full_disk(monkeypatch, full=False)
    with caplog.at_level(logging.WARNING, logger="diag"):
        for i in range(10):
            writer.write_samples(float(i), _samples(i))
        full["on"] = True
        for i in range(10, 60):
            writer.write_samples(float(i), _samples(i))  # never raises
        assert writer.stats.disk_full and writer.stats.write_errors == 50
        full["on"] = False
        writer.write_samples(60.0, _samples(60))
    writer.close()
    assert not writer.stats.disk_full
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "the disk is full; sampling goes on" in messages[0]
    assert "resumed" in messages[1]
    rss = h.read_run(str(tmp_path / "run")).get("process_resident_memory_bytes")
    assert list(rss.times) == [float(i) for i in range(61)]


def test_a_disk_full_before_the_first_segment_leaves_no_empty_segments(tmp_path, monkeypatch):
    """A disk already full when a segment is to be opened: its head cannot be written. Each
    retry (every flush) must not leave a headless file behind, and once space returns every
    tick is there."""
    writer = h.HistoryWriter(str(tmp_path / "run"), flush_seconds=0.0)
    full = _switchable_full_disk(monkeypatch, full=True)
    for i in range(200):
        writer.write_samples(float(i), _samples(i))
    assert writer.stats.write_errors == 200
    assert os.listdir(tmp_path / "run") == []
    full["on"] = False
    writer.write_samples(200.0, _samples(200))
    writer.close()
    assert os.listdir(tmp_path / "run") == ["seg-000001.dh"]
    rss = h.read_run(str(tmp_path / "run")).get("process_resident_memory_bytes")
    assert list(rss.times) == [float(i) for i in range(201)]


@pytest.mark.e2e
def test_a_real_full_tmpfs(tmp_path):
    with small_tmpfs(tmp_path / "small", "64k") as mount:
        writer = h.HistoryWriter(str(mount / "run"), flush_seconds=0.0, max_buffer=64 * 1024)
        for i in range(5000):  # ~210 kB of ticks into 64 kB
            writer.write_samples(float(i), _samples(i))
        assert writer.stats.disk_full
        assert writer.stats.dropped_bytes > 0  # bounded memory: the oldest buffered went
        run = h.read_run(str(mount / "run"))
        assert run.ticks > 100
        assert all("cut short" in p for p in run.problems)
        writer.close()


def test_a_root_keeps_its_newest_runs_and_every_live_processes(tmp_path):
    """A forked worker per few requests starts a run each: their number is bounded too. The
    oldest runs go first, never a live process's, never what is not a run."""
    live = tmp_path / f"20200101T000000Z-{os.getpid()}"  # the oldest, but its process runs
    live.mkdir()
    gone = [tmp_path / f"2020010{day}T000000Z-{(1 << 22) + day}" for day in range(1, 7)]
    for run in gone:
        run.mkdir()
        (run / "seg-000001.dh").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not a run")
    assert h.prune_runs(str(tmp_path), keep=3) == 4
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([live.name, gone[-2].name, gone[-1].name, "notes.txt"])
    assert h.prune_runs(str(tmp_path / "missing"), keep=3) == 0  # never raises


def test_rotation_and_summaries_keep_the_run_bounded(tmp_path):
    writer = h.HistoryWriter(
        str(tmp_path), flush_seconds=0.0, segment_bytes=16_000, raw_budget=40_000,
        summary_budget=30_000,
    )  # fmt: skip
    for i in range(20_000):  # 20,000 s of 1 s ticks
        writer.write_samples(float(i), _samples(i))
    writer.close()
    sizes = [p.stat().st_size for p in tmp_path.iterdir()]  # everything the run left on disk
    assert sum(sizes) <= 40_000 + 30_000 + 16_000 + 2_000
    run = h.read_run(str(tmp_path))
    assert run.problems == []
    rss = run.get("process_resident_memory_bytes")
    assert list(rss.times) == sorted(rss.times)
    # The newest detail is whole; the oldest kept is per-minute, with its range.
    assert rss.times[-1] == 19_999.0
    assert rss.times[-2] == 19_998.0
    summary_points = [i for i in range(len(rss.times)) if rss.lows[i] != rss.highs[i]]
    assert summary_points, "older data was summarised"
    ranges = [rss.highs[i] - rss.lows[i] for i in summary_points]
    assert max(ranges) == pytest.approx(59 * 1000.0)  # a whole minute of 1 s samples


AGENT = """
import threading, probes
a = probes.start(interval=0.1)
ready = threading.Event()
a.sampler.add_listener(lambda t: a.sampler.ticks >= 20 and ready.set())
ready.wait(30)
print("ready", flush=True)
hold = []
while True:
    hold.append(bytearray(1 << 20))  # leak 1 MiB
    threading.Event().wait(0.01)
"""


@pytest.mark.e2e
def test_sigkill_loses_at_most_the_last_second(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", AGENT], stdout=subprocess.PIPE, text=True,
        env=child_env(DIAG_HISTORY=str(tmp_path)),
    )  # fmt: skip
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(1.5)  # let it leak for a while: the point is to kill it mid-run
        proc.send_signal(signal.SIGKILL)
        killed_at = time.time()
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    run_dir = h.latest_run(str(tmp_path))
    assert run_dir is not None and run_dir.endswith(f"-{proc.pid}")
    run = h.read_run(run_dir)
    assert killed_at - run.last_sample <= 1.0
    kinds = [e["kind"] for e in run.events]
    assert kinds[0] == "start" and "stop" not in kinds  # no stop record: it was killed
    start = run.events[0]
    assert start["pid"] == proc.pid and start["python"] and start["diag"]
    assert start["limits"]["memory_limit_bytes"] > 0 and start["limits"]["source"]
    assert start["settings"]["interval"] == 0.1
    assert all("cut short" in p for p in run.problems)
    rss = run.get("process_resident_memory_bytes")
    assert rss.values[-1] > rss.values[0] + 50 * 2**20
    # And the report, from the same files: killed, its samples up to the last second.
    from reports import postmortem

    report = postmortem.build(run_dir, read_kernel_log=lambda: [])
    assert report.ended["how"] == "killed"
    assert killed_at - report.last_sample <= 1.0
