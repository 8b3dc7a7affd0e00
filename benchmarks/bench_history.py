"""History figures: the recorder's sustained rate with the flush policy that bounds a SIGKILL's
loss to one second, and `diag report` on a week of 1 s samples of 20 series.

Same-run baselines: for the recorder, the naive way (one JSON line per tick, written as it
comes); for the report, reading the same run's bytes from disk (the floor any reader pays).
Targets: recorder >= 50k samples/s; report on a week <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from diag.detect import Verdict
from diag.history import HistoryWriter, _segments
from diag.model import Sample

SERIES = 20  # as many as _tick_samples gives (checked in main); verdict gauges come on top
WEEK = 7 * 86400


def _tick_samples(i: int, rss: float | None = None) -> list[Sample]:
    """What an agent on a two-GPU torch service records: 20 series."""
    rss = rss if rss is not None else 2e9 + (i % 600) * 1000.0
    cuda = []
    for device in ("0", "1"):
        labels = (("device", device),)
        cuda += [
            Sample("cuda_allocated_bytes", 30e9 + (i % 97) * 1e6, labels),
            Sample("cuda_reserved_bytes", 34e9, labels),
            Sample("cuda_allocated_peak_bytes", 32e9, labels),
            Sample("cuda_inactive_split_bytes", 2e8 + (i % 13) * 1e6, labels),
        ]
    gc = [Sample("gc_tracked_objects", 1e5 + g, (("generation", str(g)),)) for g in range(3)]
    return [
        Sample("process_resident_memory_bytes", rss),
        Sample("process_unique_memory_bytes", rss * 0.9),
        Sample("malloc_in_use_bytes", rss * 0.6),
        Sample("malloc_free_retained_bytes", 5e7),
        Sample("python_allocated_blocks", 2e6),
        *gc,
        *cuda,
        Sample("memory_limit_bytes", 16e9),
        Sample("memory_limit_usage_bytes", rss + 1e8),
        Sample("system_memory_available_bytes", 8e9),
        Sample("tick_duration_seconds", 1e-4),
    ]


def bench_recorder(directory: str, seconds: float) -> tuple[float, float]:
    """Samples per second, ours and the naive JSON-lines recorder, for ``seconds`` each."""
    writer = HistoryWriter(os.path.join(directory, "run"), flush_seconds=1.0)
    started = time.perf_counter()
    ticks = 0
    while time.perf_counter() - started < seconds:
        for _ in range(100):
            writer.write_samples(float(ticks), _tick_samples(ticks))
            ticks += 1
    writer.close()
    ours = ticks * SERIES / (time.perf_counter() - started)

    started = time.perf_counter()
    naive_ticks = 0
    with open(os.path.join(directory, "naive.jsonl"), "w", encoding="utf-8") as f:
        while time.perf_counter() - started < seconds:
            for _ in range(100):
                samples = _tick_samples(naive_ticks)
                row = {
                    "t": float(naive_ticks),
                    "samples": [[s.name, s.labels, s.value] for s in samples],
                }
                f.write(json.dumps(row) + "\n")
                naive_ticks += 1
            f.flush()
    naive = naive_ticks * SERIES / (time.perf_counter() - started)
    return ours, naive


def write_week(run_dir: str, seconds: int) -> float:
    """A run of 1 s ticks as the agent writes it, verdicts included (the agent's own detector
    code), with a leak from day 3; returns the write time."""
    from probes.analysis import GrowthAnalyzer

    writer = HistoryWriter(run_dir, flush_seconds=1.0)
    analyzer = GrowthAnalyzer()

    def record_verdict(series: str, previous: Verdict | None, verdict: Verdict) -> None:
        writer.write_event("verdict", verdict.t, series=series, **verdict.fields())

    analyzer.on_change(record_verdict)
    t0 = 1_700_000_000.0
    writer.write_event("start", t0, pid=4242, command=["python", "service.py"])
    started = time.perf_counter()
    for i in range(seconds):
        rss = 2e9 + max(0, i - 3 * 86400) * 20_000.0 + (i % 600) * 1000.0
        samples = _tick_samples(i, rss)
        samples += analyzer.analyze(t0 + i, samples)
        writer.write_samples(t0 + i, samples)
    writer.close()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a day instead of a week")
    args = parser.parse_args(argv)
    from reports import postmortem

    assert len(_tick_samples(0)) == SERIES
    directory = tempfile.mkdtemp(prefix="diag-bench-history-")
    try:
        ours, naive = bench_recorder(directory, 1.0 if args.quick else 3.0)
        print(
            f"recorder: {ours / 1e3:,.0f}k samples/s with a flush at least every second "
            f"(target >= 50k: {'PASS' if ours >= 50_000 else 'FAIL'}); "
            f"naive JSON lines: {naive / 1e3:,.0f}k samples/s; ratio {ours / naive:.1f}x"
        )
        seconds = 86400 if args.quick else WEEK
        run_dir = os.path.join(directory, "20231114T221320Z-4242")
        wrote = write_week(run_dir, seconds)
        size = sum(os.path.getsize(p) for _, p in _segments(run_dir))
        print(
            f"history of {seconds / 86400:.0f} days of 1 s ticks x {SERIES} series: written in "
            f"{wrote:.1f} s, {size / 2**20:.1f} MiB on disk (bounded by rotation and summaries)"
        )
        started = time.perf_counter()
        for _, path in _segments(run_dir):
            with open(path, "rb") as f:
                f.read()
        floor = time.perf_counter() - started
        started = time.perf_counter()
        report = postmortem.build(run_dir, read_kernel_log=lambda: [])
        took = time.perf_counter() - started
        ok = took <= 5.0
        print(
            f"diag report on it: {took:.2f} s (target <= 5 s: {'PASS' if ok else 'FAIL'}); "
            f"{report.samples:,} ticks kept at full detail, {len(report.alerts)} alert(s); "
            f"reading the bytes alone: {floor:.3f} s ({took / max(floor, 1e-9):.0f}x)"
        )
        return 0 if ours >= 50_000 and ok else 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
