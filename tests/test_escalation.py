"""The escalation window in-process: triggered by a verdict, rate-limited, recorded, and its
allocation sites kept as bounded gauges; CUDA stacks joined to tensors by storage address."""

import threading
import time

import pytest

from diag.census import Census, Frame, cuda_block_stacks
from diag.detect import Verdict
from probes.escalation import DumpRequest, Escalation

torch = pytest.importorskip("torch")

_CACHE: dict[int, object] = {}


def synthesize(i):
    return torch.zeros(1024)


def make_escalation(findings, window=0.6):
    return Escalation(
        requests=lambda: {"/talk": 0},
        series=lambda name: [],
        record=findings.append,
        window=window,
        interval=3600.0,
        top_sites=3,
    )


def verdict(state):
    return Verdict(time.time(), state, "test")


def test_a_verdict_turning_to_leak_starts_one_traced_window(monkeypatch):
    findings = []
    escalation = make_escalation(findings)
    stop = threading.Event()

    def leak():
        i = 0
        while not stop.is_set():
            _CACHE[i] = synthesize(i)
            i += 1
            time.sleep(0.002)

    leaker = threading.Thread(target=leak, daemon=True)
    leaker.start()
    try:
        escalation.on_verdict("process_resident_memory_bytes", verdict("steady"), verdict("leak"))
        # A second change within the interval starts nothing more.
        escalation.on_verdict("malloc_in_use_bytes", verdict("steady"), verdict("growing"))
        deadline = time.monotonic() + 60
        while escalation.last is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        leaker.join()
        _CACHE.clear()
    assert escalation.windows == 1
    assert (
        len(findings) == 1 and findings[0]["reason"] == "process_resident_memory_bytes turned leak"
    )
    first = escalation.last.owners[0]
    assert first.path == "tests.test_escalation._CACHE"
    assert first.growth_bytes_per_second > 0
    assert first.allocation_stacks[0].frames[0].function == "synthesize"
    sites = {dict(s.labels)["site"]: s.value for s in escalation.samples() if s.labels}
    assert "other" in sites and len(sites) <= 4  # top 3 and the rest: bounded labels
    counters = {s.name: s.value for s in escalation.samples() if not s.labels}
    assert counters["escalations_total"] == 1 and counters["dumps_total"] == 1
    assert counters["dump_active"] == 0


def test_a_dump_without_a_window_borrows_the_last_windows_growth():
    findings = []
    escalation = make_escalation(findings)
    for i in range(200):
        _CACHE[i] = synthesize(i)
    try:
        timer = threading.Timer(0.2, lambda: _CACHE.update({-i: synthesize(i) for i in range(300)}))
        timer.start()
        escalation.dump(DumpRequest(window=0.5))
        now = escalation.dump(DumpRequest())
    finally:
        _CACHE.clear()
    first = now.owners[0]
    assert first.path == "tests.test_escalation._CACHE"
    assert first.growth_bytes_per_second > 0
    assert any("traced window" in note for note in now.notes)


def test_cuda_blocks_join_tensors_by_storage_address():
    """Shaped like ``torch.cuda.memory._snapshot()`` with history recorded (no GPU here: the
    snapshot is written out by hand from the documented layout)."""
    snapshot = {
        "segments": [
            {
                "device": 0,
                "address": 0x7F0000000000,
                "total_size": 2 * 1024 * 1024,
                "stream": 0,
                "segment_type": "large",
                "blocks": [
                    {
                        "address": 0x7F0000000000,
                        "size": 1024 * 1024,
                        "requested_size": 1000000,
                        "state": "active_allocated",
                        "frames": [
                            {"filename": "/venv/site-packages/torch/nn/functional.py",
                             "line": 10, "name": "linear"},
                            {"filename": "/srv/tts_service.py", "line": 42, "name": "synthesize"},
                            {"filename": "/srv/app.py", "line": 88, "name": "talk"},
                        ],
                    },
                    {"address": 0x7F0000100000, "size": 1024 * 1024, "state": "inactive",
                     "frames": []},
                ],
            }
        ],
        "device_traces": [[]],
    }  # fmt: skip
    stacks = cuda_block_stacks(snapshot, user_only=True)
    assert list(stacks) == [0x7F0000000000]  # active blocks only
    assert stacks[0x7F0000000000] == (
        Frame("/srv/tts_service.py", 42, "synthesize"),
        Frame("/srv/app.py", 88, "talk"),
    )
    census = Census(time_budget=1.0, cuda_stacks=stacks)
    key = ("cuda:0", 0x7F0000000000, 1024 * 1024)
    assert census._stack(object(), "cuda:0", key) == stacks[0x7F0000000000]
    assert census._stack(object(), "cpu", ("cpu", 0x7F0000000000, 1)) is None


def test_a_child_forked_during_a_window_starts_clean():
    import os
    import tracemalloc

    escalation = make_escalation([], window=5.0)
    thread = threading.Thread(target=escalation.dump, args=(DumpRequest(window=5.0),))
    thread.start()
    deadline = time.monotonic() + 30
    while not escalation.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert escalation.active and tracemalloc.is_tracing()
    pid = os.fork()
    if pid == 0:  # the child: no window thread, so no lock holder and no tracing of its own
        escalation.reset_after_fork()
        ok = escalation._lock.acquire(timeout=1) and not tracemalloc.is_tracing()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    escalation.close()
    thread.join()
    assert os.waitstatus_to_exitcode(status) == 0
