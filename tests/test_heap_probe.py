import gc

from probes.base import Cadence
from probes.heap import HeapProbe, load_mallinfo2

MiB = 1024 * 1024


def _values(probe):
    return {(s.name, s.labels): s.value for s in probe.sample()}


def test_gc_and_python_allocator_readings():
    # Both readings on every call: by default they skip ticks when the heap is large enough
    # that walking it would cost more than their budget (this test process's heap often is).
    probe = HeapProbe(cadence=Cadence(0.0, budget=1.0), blocks_cadence=Cadence(0.0, budget=1.0))
    before = _values(probe)
    junk = [[i] for i in range(100_000)]  # lists are always gc-tracked (small dicts may not be)
    gc.collect()  # moves them to the oldest generation
    after = _values(probe)
    tracked = ("gc_tracked_objects", (("generation", "2"),))
    assert after[tracked] - before[tracked] >= 90_000  # less what gc.collect() freed
    blocks = ("python_allocated_blocks", ())
    assert after[blocks] - before[blocks] >= 90_000
    collections = ("gc_collections_total", (("generation", "2"),))
    assert after[collections] >= before[collections] + 1
    del junk


def test_glibc_malloc_in_use_and_retained():
    func, reason = load_mallinfo2()
    assert func is not None, reason  # this machine runs glibc >= 2.33
    probe = HeapProbe()
    before = _values(probe)
    chunks = [b"%05d" % i * 820 for i in range(10_000)]  # ~40 MiB of small malloc()s, in arenas
    during = _values(probe)
    assert during[("malloc_in_use_bytes", ())] - before[("malloc_in_use_bytes", ())] > 30 * MiB
    del chunks
    after = _values(probe)
    assert after[("malloc_in_use_bytes", ())] < during[("malloc_in_use_bytes", ())] - 30 * MiB


def test_without_glibc_it_says_why_and_keeps_the_python_readings(monkeypatch):
    import probes.heap as heap

    monkeypatch.setattr(heap.sys, "platform", "darwin")
    func, reason = heap.load_mallinfo2()
    assert func is None
    assert reason == "malloc: glibc mallinfo2 is Linux-only (this is darwin)"
    monkeypatch.setattr(heap, "load_mallinfo2", lambda: (None, reason))
    probe = heap.HeapProbe()
    names = {name for name, _ in _values(probe)}
    assert "malloc_in_use_bytes" not in names
    assert "python_allocated_blocks" in names
    assert probe.notes == (reason,)


def test_allocated_blocks_skip_ticks_once_their_walk_is_costly():
    clock = [0.0]

    def monotonic():
        return clock[0]

    class CostlyCadence(Cadence):
        def run(self, reading):
            def costly():  # a 5 ms arena walk on this fake clock
                reading()
                clock[0] += 0.005

            super().run(costly)

    probe = HeapProbe(blocks_cadence=CostlyCadence(0.0, budget=0.001, monotonic=monotonic))
    first = _values(probe)[("python_allocated_blocks", ())]
    junk = [[i] for i in range(50_000)]
    clock[0] += 1.0  # 1 s later: a 5 ms walk may run at most every 5 s
    assert _values(probe)[("python_allocated_blocks", ())] == first  # the held reading
    clock[0] += 4.0
    assert _values(probe)[("python_allocated_blocks", ())] >= first + 40_000
    del junk
