"""diag.check without pytest: ``with diag.check.no_leaks(...) as check: for _ in check: ...``
over real leaks (module lists, threads, fds, tensors, arrays, asyncio tasks) and real warm-up
traps. No process is started here (the plugin's own tests, tests/test_pytest_plugin.py, run
pytest itself)."""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import functools
import io
import os
import queue
import re
import subprocess
import threading

import pytest

import diag
from diag import check
from diag.check import LeakCheck, LeakReport, allow_growth, no_leaks
from diag.malloc import mallinfo2

_KEPT: list[object] = []
_CACHE: dict[str, object] = {}
_TENSORS: list[object] = []
_ARRAYS: list[object] = []
_FDS: list[int] = []
_SEEN: set[str] = set()
_counter = iter(range(10**9))


class Record:
    def __init__(self) -> None:
        self.payload = [0] * 8


def keep_record() -> None:
    _KEPT.append(Record())


@functools.lru_cache(maxsize=16)
def _squares(n: int) -> list[int]:
    return [i * i for i in range(n)]


@pytest.fixture(autouse=True)
def _empty():
    yield
    _KEPT.clear()
    _CACHE.clear()
    _TENSORS.clear()
    _ARRAYS.clear()
    _SEEN.clear()
    while _FDS:
        os.close(_FDS.pop())


def test_clean_code_with_warm_up_traps_passes():
    pattern = r"(?P<key>\w+)=(?P<value>\d+)"
    with no_leaks() as check:
        for _ in check:
            _CACHE.setdefault("config", {"values": list(range(100))})  # filled once
            _squares(40)  # lru_cache with a maxsize, same argument
            assert re.match(pattern, "a=1")  # regex cache
            [str(i) for i in range(1000)]  # garbage, freed
    assert check.report.finished
    assert not check.report.leaked
    assert check.report.format().endswith("no leak in 3 runs after 2 warm-up")


def test_a_leak_raises_leak_error_naming_its_owner_first():
    with pytest.raises(diag.LeakError) as caught, no_leaks(name="handler") as check:
        for _ in check:
            keep_record()
    error = caught.value
    assert isinstance(error, diag.DiagError) and error.exit_code == 1
    report = error.report
    assert isinstance(report, LeakReport) and report is check.report
    assert report.owners[0].path == "tests.test_check._KEPT"
    assert "Record" in report.owners[0].what
    assert report.owners[0].stack[0].function == "keep_record"  # where it was allocated
    text = str(error).splitlines()
    assert (
        text[0]
        == "handler leaks: it keeps more after every run (3 runs checked after 2 warm-up runs)"
    )
    assert any(line.startswith("  Python objects") for line in text)
    assert "  1. tests.test_check._KEPT  (list) +1 per run" in "\n".join(text)
    assert '  diag.allow_growth("tests.test_check._KEPT")   (at import, or in a with block)' in text


def test_the_report_without_raising_and_the_call_form():
    report = LeakCheck(name="calls").call(keep_record)
    assert report.leaked and report.owners[0].path == "tests.test_check._KEPT"
    assert {g.measure for g in report.leaks} >= {"objects"}


def test_strings_kept_in_a_set_are_found_by_their_container():
    """Untracked values (str) show as container entries, exactly, whatever their size."""

    def see() -> None:
        _SEEN.add(f"user-{next(_counter)}")

    report = LeakCheck().call(see)
    assert [g.measure for g in report.leaks] == ["entries"], [
        (g.measure, g.values) for g in report.growth
    ]
    assert report.owners[0].path == "tests.test_check._SEEN"


def test_allow_growth_by_object_by_path_and_for_a_block():
    with allow_growth(_KEPT):
        assert not LeakCheck().call(keep_record).leaked
    assert LeakCheck().call(keep_record).leaked  # withdrawn with the block
    allowance = allow_growth("tests.test_check._KEPT", reason="an audit log, kept on purpose")
    try:
        report = LeakCheck().call(keep_record)
        assert not report.leaked
        assert report.owners[0].allowed
        assert any("allow_growth" in note for note in report.notes)
    finally:
        allowance.withdraw()
    with pytest.raises(diag.UsageError):
        allow_growth()


def test_a_tolerance_silences_a_deliberate_cache():
    def cache_two_records() -> None:
        keep_record()
        keep_record()

    assert LeakCheck().call(cache_two_records).leaked
    # Objects and container entries: two records, their payload lists and those lists' items.
    report = LeakCheck(objects_per_iteration=32, bytes_per_iteration=4096).call(cache_two_records)
    assert not report.leaked


def test_usage_errors():
    with pytest.raises(diag.UsageError, match="loop over it"), no_leaks():
        pass
    with pytest.raises(diag.UsageError, match="iterations"):
        no_leaks(iterations=1)
    with pytest.raises(diag.UsageError, match="warmup"):
        no_leaks(warmup=-1)
    with pytest.raises(diag.UsageError, match="unknown resources"):
        no_leaks(resources=["gpus"])


def test_an_exception_in_the_body_is_the_error_seen():
    with pytest.raises(ZeroDivisionError), no_leaks() as check:
        for _ in check:
            1 / 0  # noqa: B018


def test_threads_that_outlive_each_run():
    stop = threading.Event()
    try:

        def start_forever() -> None:
            threading.Thread(target=stop.wait, name="leaky-worker", daemon=True).start()

        report = LeakCheck().call(start_forever)
        assert "threads" in [g.measure for g in report.leaks]
        assert report.owners[0].path == "thread 'leaky-worker'"
        # A thread that ends a moment after each run is no leak.
        report = LeakCheck().call(lambda: threading.Timer(0.01, lambda: None).start())
        assert not report.leaked, report.format()
    finally:
        stop.set()


def test_file_descriptors_without_python_objects():
    before = set(os.listdir("/proc/self/fd"))
    try:
        report = LeakCheck().call(lambda: os.open(os.devnull, os.O_RDONLY))
        assert [g.measure for g in report.leaks] == ["fds"]
        assert report.owners[0].path == "fds no Python object holds (file)"
        assert report.owners[0].resource == "fds"
        unchecked = LeakCheck(resources=["threads"]).call(lambda: os.open(os.devnull, os.O_RDONLY))
        assert not unchecked.leaked
    finally:
        for fd in set(os.listdir("/proc/self/fd")) - before:
            with contextlib.suppress(OSError):
                os.close(int(fd))


def test_tensors_and_arrays():
    torch = pytest.importorskip("torch")
    numpy = pytest.importorskip("numpy")
    report = LeakCheck().call(lambda: _TENSORS.append(torch.zeros(1024)))
    assert {"tensors", "tensor_bytes"} <= {g.measure for g in report.leaks}
    assert report.owners[0].path == "tests.test_check._TENSORS"
    assert report.owners[0].what == "torch.Tensor float32 (cpu)"
    report = LeakCheck().call(lambda: _ARRAYS.append(numpy.ones(512)))
    assert {"arrays", "array_bytes"} <= {g.measure for g in report.leaks}
    assert report.owners[0].path == "tests.test_check._ARRAYS"
    # An array's own size holds its data (not twice); a small view keeps its big base alive.
    assert report.owners[0].bytes_per_iteration == pytest.approx(512 * 8, rel=0.1)
    _ARRAYS.clear()
    report = LeakCheck().call(lambda: _ARRAYS.append(numpy.ones(100_000)[:4]))
    assert report.owners[0].path == "tests.test_check._ARRAYS"
    assert report.owners[0].bytes_per_iteration == pytest.approx(800_000, rel=0.1)
    # Made and dropped: no leak, after torch's first-call set-up in the warm-up.
    assert not LeakCheck().call(lambda: torch.randn(64, 64) @ torch.randn(64, 64)).leaked


def test_native_memory_kept_by_c_code():
    """A real ``malloc`` through ctypes, never freed: no Python object grows, only what malloc
    handed out. Memory Python, numpy or torch account for is not counted again as native."""
    if mallinfo2() is None:
        pytest.skip("glibc's mallinfo2 is not here (musl, macOS, glibc before 2.33)")
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # The pointers go into slots made beforehand: no Python container grows.
    kept = (ctypes.c_void_p * 64)()
    slots = iter(range(64))

    def keep(size: int) -> None:
        kept[next(slots)] = libc.malloc(size)

    try:
        report = LeakCheck().call(keep, 1 << 20)
        native = {g.measure: g for g in report.growth}["native_bytes"]
        assert [g.measure for g in report.leaks] == ["native_bytes"]
        assert native.per_iteration == pytest.approx(1 << 20, rel=0.1)
        assert any("memray run --native" in note for note in report.notes)
        assert not any("no holder was found" in note for note in report.notes)
        assert "resources=['tensors', 'cuda', 'arrays', 'fds'" in report.format()
        assert "no_leaks(native_bytes_per_iteration=" in report.format()
        # Under the default tolerance (native caches keyed by shape fill by up to ~180 KiB a
        # run), and caught with a tolerance for checking one's own C code.
        assert not LeakCheck().call(keep, 64 * 1024).leaked
        strict = LeakCheck(native_bytes_per_iteration=16 * 1024).call(keep, 64 * 1024)
        assert [g.measure for g in strict.leaks] == ["native_bytes"]
        # Allocated and freed: no leak. Not checked: not measured.
        assert not LeakCheck().call(lambda: libc.free(libc.malloc(1 << 20))).leaked
        unchecked = LeakCheck(resources=["fds"]).call(keep, 1 << 20)
        assert "native_bytes" not in {g.measure for g in unchecked.growth}
    finally:
        for pointer in kept:
            libc.free(pointer)  # free(NULL) does nothing
    # Python's own large blocks, numpy's data and torch's CPU tensors are malloc's too, and
    # each is measured where it belongs.
    big = LeakCheck().call(lambda: _KEPT.append(bytearray(256 * 1024)))
    assert "native_bytes" not in {g.measure for g in big.leaks}
    torch = pytest.importorskip("torch")
    numpy = pytest.importorskip("numpy")
    tensors = LeakCheck().call(lambda: _TENSORS.append(torch.zeros(64 * 1024)))
    assert "tensor_bytes" in {g.measure for g in tensors.leaks}
    assert "native_bytes" not in {g.measure for g in tensors.leaks}
    arrays = LeakCheck().call(lambda: _ARRAYS.append(numpy.ones(32 * 1024)))
    assert "array_bytes" in {g.measure for g in arrays.leaks}
    assert "native_bytes" not in {g.measure for g in arrays.leaks}


_SPOOL = io.BytesIO()
_PCM = bytearray()
_SAMPLES = array.array("f")
# Session id -> PCM: a dict of bytearrays only, which the gc does not track (nor its holder).
_SESSIONS = {"calls": {"a1f3": bytearray()}}


def test_buffers_that_grow_in_place_are_named():
    """A BytesIO, a bytearray and an array gain bytes, not entries or objects: they were
    "no holder was found". Each is named by what its size gained in the holder run, a
    bytearray in dicts the gc does not track too (no pass over the gc's objects sees it)."""
    for buffer, gained, body in (
        ("tests.test_check._SPOOL", 20_000, lambda: _SPOOL.write(b"x" * 20_000)),
        ("tests.test_check._PCM", 8_000, lambda: _PCM.extend(b"\0" * 8_000)),
        ("tests.test_check._SAMPLES", 16_000, lambda: _SAMPLES.extend([0.0] * 4_000)),
        (
            "tests.test_check._SESSIONS[<str>][<str>]",
            8_000,
            lambda: _SESSIONS["calls"]["a1f3"].extend(b"\0" * 8_000),
        ),
    ):
        report = LeakCheck().call(body)
        assert "bytes" in {g.measure for g in report.leaks}, buffer
        owner = report.owners[0]
        assert (owner.path, owner.what) == (buffer, "its buffer grew")
        # A BytesIO's allocated size moves in steps (1/8 ahead): about what was written.
        assert owner.bytes_per_iteration == pytest.approx(gained, rel=0.15), owner
        assert f"  1. {buffer}  ({owner.kind}) +" in report.format()
        allow_growth(buffer)
        try:
            assert not LeakCheck().call(body).leaked
        finally:
            check._ALLOWED.clear()


def test_pending_asyncio_tasks():
    async def forever(event: asyncio.Event) -> None:
        await event.wait()

    async def main() -> LeakReport:
        event = asyncio.Event()
        with pytest.raises(diag.LeakError) as caught, no_leaks() as check:
            for _ in check:
                asyncio.get_running_loop().create_task(forever(event))
                await asyncio.sleep(0)
        event.set()
        await asyncio.sleep(0)
        return caught.value.report

    report = asyncio.run(main())
    assert "asyncio_tasks" in [g.measure for g in report.leaks]
    assert report.owners[0].path.startswith("pending tasks of ")
    assert "forever()" in report.owners[0].path


def test_current_thread_only_ignores_what_other_threads_allocate():
    requests: queue.Queue[object] = queue.Queue()
    done: queue.Queue[object] = queue.Queue()
    kept: list[str] = []

    def worker() -> None:
        while requests.get() is not None:
            kept.append("x" * 4096 + str(len(kept)))
            done.put(True)

    thread = threading.Thread(target=worker, name="background", daemon=True)
    thread.start()
    try:

        def poke() -> None:
            requests.put(True)
            done.get()

        assert LeakCheck().call(poke).leaked
        report = LeakCheck(current_thread_only=True).call(poke)
        assert not report.leaked, report.format()
    finally:
        requests.put(None)
        thread.join()


def test_diag_exports_the_checks_lazily():
    assert diag.check.no_leaks is no_leaks
    assert diag.allow_growth is allow_growth
    assert diag.LeakError.__mro__[1] is diag.DiagError


@pytest.mark.e2e
def test_children_are_counted_where_the_kernel_has_no_children_file(monkeypatch):
    """Without /proc/self/task/<tid>/children (a kernel built without it), the children are
    found by every process's parent in /proc/<pid>/stat: the same count."""
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    real_open = open

    def without_children_file(path, *args, **kwargs):
        if str(path).endswith("/children"):
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_open(path, *args, **kwargs)

    try:
        direct = check._children()
        monkeypatch.setattr("builtins.open", without_children_file)
        scanned = check._children()
        monkeypatch.undo()
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
    assert direct is not None and direct >= 3
    assert scanned == direct
