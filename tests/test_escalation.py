"""The escalation window in-process: triggered by a verdict, rate-limited, recorded, and its
allocation sites kept as bounded gauges; CUDA stacks joined to tensors by storage address.

A window's wait is played, not slept through: the test's ``wait`` runs the service's traffic and
moves fake clocks by the window's length, and an automatic window runs on the caller's thread.
"""

import threading
import time

import pytest

from diag.census import Frame, cuda_block_stacks, take_dump
from diag.detect import Verdict
from diag.testing import FakeClock
from probes.escalation import DumpRequest, Escalation

torch = pytest.importorskip("torch")

_CACHE: dict[int, object] = {}


def synthesize(i):
    return torch.zeros(1024)


def make_escalation(findings, window=0.6, **timing):
    return Escalation(
        requests=lambda: {"/talk": 0},
        series=lambda name: [],
        record=findings.append,
        window=window,
        interval=3600.0,
        top_sites=3,
        **timing,
    )


def played(traffic):
    """Timing for an escalation whose windows take no real time: its ``wait`` runs
    ``traffic`` (what the service does meanwhile, traced) and moves both clocks by the window's
    length; an automatic window runs at once, on the caller's thread."""
    clock, monotonic = FakeClock(), FakeClock(0.0)

    def wait(seconds):
        traffic()
        clock.advance(seconds)
        monotonic.advance(seconds)
        return False  # not closed meanwhile

    return {"clock": clock, "monotonic": monotonic, "wait": wait, "spawn": lambda work: work()}


def leak(entries):
    start = len(_CACHE)
    for i in range(start, start + entries):
        _CACHE[i] = synthesize(i)


def verdict(state):
    return Verdict(time.time(), state, "test")


def test_a_verdict_turning_to_leak_starts_one_traced_window():
    findings = []
    escalation = make_escalation(findings, **played(lambda: leak(500)))
    try:
        escalation.on_verdict("process_resident_memory_bytes", verdict("steady"), verdict("leak"))
        # A second change within the interval starts nothing more.
        escalation.on_verdict("malloc_in_use_bytes", verdict("steady"), verdict("growing"))
    finally:
        _CACHE.clear()
    assert escalation.windows == 1
    assert (
        len(findings) == 1 and findings[0]["reason"] == "process_resident_memory_bytes turned leak"
    )
    # Recorded with its cause, which `diag report` says (it was recorded empty before).
    assert findings[0]["cause"] == escalation.last.cause and findings[0]["cause"]["kind"]
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
    escalation = make_escalation(findings, **played(lambda: leak(300)))
    leak(200)
    try:
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
    # A census joins them to the tensors whose storage is at that address, on that device only.
    _ON_GPU.append(placed("cuda:0", 0x7F0000000000))
    _ON_CPU.append(placed("cpu", 0x7F0000000000))
    try:
        dump, _ = take_dump(top=1000, cuda_stacks=stacks)
    finally:
        _ON_GPU.clear()
        _ON_CPU.clear()
    owners = {o.path: o for o in dump.owners}
    on_gpu = owners["tests.test_escalation._ON_GPU"]
    assert [tuple(s.frames) for s in on_gpu.allocation_stacks] == [stacks[0x7F0000000000]]
    assert owners["tests.test_escalation._ON_CPU"].allocation_stacks == []


_ON_GPU: list[object] = []
_ON_CPU: list[object] = []


class _Storage:
    def __init__(self, address, size):
        self.address, self.size = address, size

    def nbytes(self):
        return self.size

    def data_ptr(self):
        return self.address


class _Placed(torch.Tensor):
    """A tensor whose storage says it lies at a given address on a given device: what a CUDA
    tensor shows the census, on a machine without a GPU."""

    placed_device = "cpu"
    placed_address = 0

    @property
    def device(self):
        return torch.device(self.placed_device)

    def untyped_storage(self):
        return _Storage(self.placed_address, 1024 * 1024)


def placed(device, address):
    tensor = torch.zeros(4).as_subclass(_Placed)
    tensor.placed_device, tensor.placed_address = device, address
    return tensor


@pytest.mark.e2e
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
        ok = not escalation.dumping and not tracemalloc.is_tracing()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    escalation.close()
    thread.join()
    assert os.waitstatus_to_exitcode(status) == 0


def test_tracing_the_host_starts_during_a_window_is_left_on():
    """The host calls tracemalloc.start() while a window traces (a no-op then): from its side
    tracing is its own, and its take_snapshot() must keep working after the window."""
    import tracemalloc

    def host_starts_tracing():
        leak(50)
        tracemalloc.start(5)

    escalation = make_escalation([], **played(host_starts_tracing))
    try:
        assert not tracemalloc.is_tracing()
        # (Its census then runs under the host's tracing: slow, so kept short.)
        escalation.dump(DumpRequest(window=0.5, time_budget=0.5))
        assert tracemalloc.is_tracing()
        tracemalloc.take_snapshot()
    finally:
        _CACHE.clear()
        if tracemalloc.is_tracing():
            tracemalloc.stop()


# -- the cause agrees with the detector, and accounts for the growth --------------------------

MiB = 1024 * 1024


def growing_heap(clock):
    """The agent's series: RSS and malloc in use growing 1 MiB/s over the last five minutes."""
    points = [(clock() - 300 + t, 100 * MiB + MiB * t) for t in range(0, 301, 5)]
    return lambda name: points if name in ("process_resident_memory_bytes",
                                           "malloc_in_use_bytes") else []  # fmt: skip


def judged(state):
    return {"process_resident_memory_bytes": verdict(state), "malloc_in_use_bytes": verdict(state)}


def test_a_plain_dump_follows_the_detector_while_it_warms_up():
    clock = FakeClock()
    state = {"now": judged("warming_up")}
    escalation = Escalation(requests=lambda: {}, series=growing_heap(clock), clock=clock,
                            verdicts=lambda: state["now"])  # fmt: skip
    cause = escalation.dump(DumpRequest()).cause
    assert cause["kind"] == "warming_up", cause
    growth = cause["growth_accounting"]
    assert growth["source"] == "series"
    assert growth["rss_bytes_per_second"] == pytest.approx(MiB)
    state["now"] = judged("leak")  # the detector called it: the series speak again
    assert escalation.dump(DumpRequest()).cause["kind"] == "leak"
    # Without a detector (a replay, a test), the series alone.
    alone = Escalation(requests=lambda: {}, series=growing_heap(clock), clock=clock)
    assert alone.dump(DumpRequest()).cause["kind"] == "leak"


def test_a_window_accounts_for_its_growth_by_owner():
    findings = []
    timing = played(lambda: leak(500))
    state = {"now": judged("warming_up")}
    escalation = make_escalation(findings, verdicts=lambda: state["now"], **timing)
    try:
        found = escalation.dump(DumpRequest(window=0.6))
        state["now"] = judged("steady")
        steady = escalation.dump(DumpRequest(window=0.6))
    finally:
        _CACHE.clear()
    cause = found.cause
    growth = cause["growth_accounting"]
    assert growth["source"] == "window" and growth["span_seconds"] == pytest.approx(0.6)
    first = growth["by_owner"][0]
    assert first["path"] == "tests.test_escalation._CACHE"
    assert first["bytes_per_second"] == pytest.approx(500 * 4096 / 0.6, rel=0.2)
    parts = sum(growth[k] for k in ("owners_bytes_per_second",
                                    "allocator_retention_bytes_per_second",
                                    "cuda_reserve_bytes_per_second", "native_bytes_per_second",
                                    "unexplained_bytes_per_second"))  # fmt: skip
    assert parts == pytest.approx(growth["total_bytes_per_second"])
    assert growth["python_heap_bytes_per_second"] is not None  # tracemalloc measured it
    # Measured growing in a window while the detector warms up: evidence, not yet a leak.
    assert cause["kind"] == "warming_up", cause
    assert any("tests.test_escalation._CACHE grew" in line for line in cause["evidence"]), cause
    # Once the detector has watched long enough to say steady, a window's growth is no leak;
    # nor is it "not growing" when the window measured it fast: too soon to tell.
    assert steady.cause["kind"] == "unexplained", steady.cause
    assert "too soon to tell" in steady.cause["summary"]


def test_the_agent_gives_its_escalation_the_detectors_verdicts():
    from diag.settings import Settings
    from probes.agent import Agent

    agent = Agent(Settings(interval=3600, history="off"), probes=[])
    agent.analyzer.verdicts["process_resident_memory_bytes"] = verdict("steady")
    agent.analyzer.verdicts["resource_usage{resource=fds}"] = verdict("leak")  # not memory
    agent.analyzer.verdicts["cuda_allocated_bytes{device=0}"] = verdict("warming_up")
    assert agent.escalation._memory_verdicts() == {
        "process_resident_memory_bytes": agent.analyzer.verdicts["process_resident_memory_bytes"],
        "cuda_allocated_bytes{device=0}": agent.analyzer.verdicts["cuda_allocated_bytes{device=0}"],
    }


class _Engine:
    """Per-session state kept in eight containers of its own: each an eighth of a leak."""

    def __init__(self):
        self.kv, self.logits, self.audio, self.mask = ({} for _ in range(4))
        self.embeddings, self.prompts, self.speakers, self.alignments = ({} for _ in range(4))


_ENGINE = _Engine()


def test_a_leak_spread_over_holders_beneath_one_root_names_that_root(monkeypatch):
    import probes.escalation
    from diag.cause import classify

    given = {}

    def classify_as_given(series, growth, **kwargs):
        given.update(kwargs, growth=growth)
        return classify(series, growth, **kwargs)

    monkeypatch.setattr(probes.escalation, "classify", classify_as_given)

    def serve():
        for container in vars(_ENGINE).values():
            start = len(container)
            for i in range(start, start + 200):
                container[i] = torch.zeros(1024)

    findings = []
    escalation = make_escalation(findings, verdicts=lambda: judged("leak"), **played(serve))
    try:
        escalation.dump(DumpRequest(window=0.6))
    finally:
        for container in vars(_ENGINE).values():
            container.clear()
    # The escalation gives the cause each holder's chain: the census's real ones, each of the
    # eight beneath the engine's global.
    growth, steps = given["growth"], given["owner_steps"]
    engine = [(path, rate) for path, rate in growth if path.startswith(f"{__name__}._ENGINE.")]
    assert len(engine) == 8, growth
    assert all(steps[path][:2] == [__name__, "._ENGINE"] for path, _ in engine), steps
    # With RSS growing as the holders did (a window's own RSS in a test process that freed
    # memory before reads whatever the allocator reuses), each is an eighth and the engine
    # all of it: the cause names the engine, not its biggest eighth.
    total = sum(rate for _, rate in engine)
    rising = [(float(t), 1e9 + total * t) for t in range(0, 601, 10)]
    series = {"process_resident_memory_bytes": rising, "malloc_in_use_bytes": rising}
    cause = classify(series, growth, owner_steps=steps)
    assert cause.kind == "leak", cause
    assert cause.culprit is not None
    assert (cause.culprit["path"], cause.culprit["holders"]) == (f"{__name__}._ENGINE", 8)
    assert cause.summary.endswith(f"under {__name__}._ENGINE, in 8 holders beneath it")
