"""Roots held from C: objects nothing on the Python heap refers to are named by what keeps
them alive (a thread's context, an atexit callback, a weakref.finalize callback, a pending
asyncio task, a thread's threading.local, a signal handler), never ``<unreachable …>``.

In-process tests hold tensors through each root and ask ``find_holders``/``locate``; the e2e
tests run ``diag dump`` against real children (``tests/apps/c_roots.py``), one per root.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import contextlib
import contextvars
import ctypes
import functools
import gc
import json
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import pytest

from diag.owners import ROOT_KINDS, find_holders, locate, name_objects
from tests.conftest import APPS, DIAG, child_env

torch = pytest.importorskip("torch")


def _holders(size: int) -> list[tuple[str, str, int]]:
    """(path, root, count) of every holder of the live tensors of ``size`` elements."""
    targets = [o for o in gc.get_objects() if type(o) is torch.Tensor and o.shape == (size,)]
    result = find_holders(targets, time_budget=20.0)
    assert result.complete
    return [(h.path, h.root, h.count) for h in result.holders]


@contextlib.contextmanager
def _in_thread(name: str, body: Callable[[], Any]) -> Iterator[None]:
    """``body`` run in a thread called ``name``, which then waits until the block ends."""
    done, stop = threading.Event(), threading.Event()

    def run() -> None:
        body()
        done.set()
        stop.wait()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    done.wait()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def remove_tmp(*paths: Any) -> None:
    """A callback never called."""


request_log: contextvars.ContextVar[Any] = contextvars.ContextVar("request_log")


def test_a_contextvar_set_in_a_thread_is_named_with_its_thread():
    with _in_thread("ctx-worker", lambda: request_log.set([torch.ones(101) for _ in range(5)])):
        assert _holders(101) == [("contextvar request_log in thread 'ctx-worker'", "context", 5)]


def test_a_tensor_set_directly_in_a_contextvar_is_named_by_its_variable():
    def body() -> None:
        request_log.set(torch.ones(102))

    with _in_thread("ctx-worker", body):
        assert _holders(102) == [("contextvar request_log in thread 'ctx-worker'", "context", 1)]


def test_an_atexit_callbacks_partial_is_named_by_its_function():
    callback = functools.partial(remove_tmp, [torch.ones(103) for _ in range(3)])
    atexit.register(callback)
    del callback
    try:
        path = "atexit callback functools.partial(tests.test_c_roots.remove_tmp, …).args[<int>]"
        assert _holders(103) == [(path, "atexit", 3)]
    finally:
        atexit.unregister(remove_tmp)  # no-op: the partial is not equal to it
        for func in _atexit_callbacks():
            if type(func) is functools.partial and func.func is remove_tmp:
                atexit.unregister(func)


def test_the_arguments_atexit_keeps_for_a_callback_are_named():
    atexit.register(remove_tmp, [torch.ones(114) for _ in range(3)])
    try:
        assert _holders(114) == [("atexit callback remove_tmp() args[<int>]", "atexit", 3)]
    finally:
        atexit.unregister(remove_tmp)


def _atexit_callbacks() -> list[Any]:
    from diag.c_roots import CRoots

    return [func for func, _ in CRoots()._atexit()]


def test_listing_atexit_callbacks_removes_none():
    before = atexit._ncallbacks()
    atexit.register(remove_tmp)
    try:
        assert any(func is remove_tmp for func in _atexit_callbacks())
        assert atexit._ncallbacks() == before + 1
    finally:
        atexit.unregister(remove_tmp)


# -- the atexit callbacks' args and kwargs, read from the interpreter state --------------------


def _registered(func: Any) -> list[Any]:
    from diag.c_roots import atexit_callbacks

    callbacks = atexit_callbacks()
    assert callbacks is not None
    return [c for c in callbacks if c.func is func]


def test_atexit_callbacks_are_read_with_the_args_and_kwargs_atexit_keeps():
    chunk, items, tag = bytes(70_000), [bytearray(10)], object()
    before = atexit._ncallbacks()
    atexit.register(remove_tmp, chunk)
    atexit.register(remove_tmp, items, chunk, tag=tag, items=items)
    atexit.register(remove_tmp)
    try:
        first, second, third = _registered(remove_tmp)
        assert first.args[0] is chunk and len(first.args) == 1 and first.kwargs is None
        # A tuple of bytes alone is untracked by a collection: no gc walk could find it.
        gc.collect()
        assert not gc.is_tracked(first.args)
        assert second.args[0] is items and second.args[1] is chunk
        assert second.kwargs is not None and set(second.kwargs) == {"tag", "items"}
        assert second.kwargs["tag"] is tag and second.kwargs["items"] is items
        assert third.args == () and third.kwargs is None
        assert atexit._ncallbacks() == before + 3  # nothing was unregistered
    finally:
        atexit.unregister(remove_tmp)


class _Callable:
    def __call__(self, *args: Any) -> None:
        """Never called."""


class _EqualToAll(_Callable):
    """A callback whose ``==`` answers True to anything: a probe given to
    ``atexit.unregister`` would unregister it."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


def test_a_callback_whose_eq_answers_true_to_anything_is_read_and_never_unregistered():
    from diag.c_roots import CRoots

    greedy, plain, chunk = _EqualToAll(), _Callable(), bytes(1000)
    before = atexit._ncallbacks()
    atexit.register(greedy, chunk)
    atexit.register(plain, chunk)
    atexit.register(remove_tmp, chunk)
    try:
        assert [c.args[0] for c in _registered(greedy)] == [chunk]
        assert [c.args[0] for c in _registered(plain)] == [chunk]
        found = [root.text for obj, root in CRoots()._atexit() if type(obj) is tuple and obj]
        found = [text for text in found if text.endswith(" args")]
        assert "atexit callback tests.test_c_roots._EqualToAll args" in found
        assert atexit._ncallbacks() == before + 3
        assert len(_registered(greedy)) == 1 and len(_registered(remove_tmp)) == 1
    finally:
        atexit.unregister(remove_tmp)
        # Never atexit.unregister(greedy): its == would take every other callback with it.
        atexit.unregister(plain)  # plain, and greedy (greedy == plain)
        assert not _registered(greedy) and not _registered(plain)


def test_the_atexit_roots_own_the_args_and_kwargs_by_their_callback():
    from diag.c_roots import held_from_c

    chunks = [bytes(50_000) for _ in range(3)]
    for chunk in chunks:
        atexit.register(remove_tmp, chunk, label=str(len(chunk)))
    try:
        (entries,) = [entries for kind, _, entries in held_from_c() if kind == "atexit"]
        by_path = dict(entries)
        # One source per path: the three callbacks' args tuples, as one list.
        args = by_path["atexit callback remove_tmp() args"]
        assert [a[0] for a in args] == chunks and all(type(a) is tuple for a in args)
        kwargs = by_path["atexit callback remove_tmp() kwargs"]
        assert [k["label"] for k in kwargs] == ["50000"] * 3
    finally:
        atexit.unregister(remove_tmp)


def test_atexit_callbacks_are_read_while_another_thread_registers_and_unregisters():
    from diag.c_roots import atexit_callbacks

    stop = threading.Event()

    def churn() -> None:
        count = 0
        while not stop.is_set():
            atexit.register(remove_tmp, bytes(100), n=[count])
            count += 1
            if count % 3 == 0:
                atexit.unregister(remove_tmp)

    worker = threading.Thread(target=churn, daemon=True)
    worker.start()
    read = 0
    try:
        for _ in range(300):
            callbacks = atexit_callbacks()
            if callbacks is not None:
                read += 1
                for callback in callbacks:
                    assert type(callback.args) is tuple
                    assert callback.kwargs is None or type(callback.kwargs) is dict
    finally:
        stop.set()
        worker.join()
        atexit.unregister(remove_tmp)
    assert read > 0


#: Run in a child: reads its own callbacks, then exits normally (so they run).
ATEXIT_CHILD = """
import atexit, gc, sys
from pathlib import Path
from diag.c_roots import CRoots, atexit_callbacks, held_from_c

assert atexit._ncallbacks() == 0, atexit._ncallbacks()
assert atexit_callbacks() == [] and list(CRoots()._atexit()) == []
assert [kind for kind, _, entries in held_from_c() if kind == "atexit" and entries] == []

def write(path, text, *, mode):
    Path(path).write_text(text + mode)

def remove_tmp(*paths):
    pass

chunk, items = bytes(100_000), [b"x"] * 3
atexit.register(write, sys.argv[1], "ran", mode=" at exit")
atexit.register(remove_tmp, chunk, items)
atexit.register(remove_tmp, *[bytes(10)] * 4, key=items)
atexit.unregister(len)  # no-op
count = atexit._ncallbacks()
found = atexit_callbacks()
assert [c.func for c in found] == [write, remove_tmp, remove_tmp], found
assert found[0].args[0] == sys.argv[1] and found[0].kwargs == {"mode": " at exit"}
assert found[1].args[0] is chunk and found[1].args[1] is items and found[1].kwargs is None
assert found[2].kwargs["key"] is items and len(found[2].args) == 4
assert list(CRoots()._atexit()) and atexit._ncallbacks() == count
del found
gc.collect()
print("read", flush=True)
"""


@pytest.mark.e2e
def test_reading_the_atexit_callbacks_of_a_child_unregisters_none(tmp_path):
    marker = tmp_path / "ran"
    done = subprocess.run(
        [sys.executable, "-c", ATEXIT_CHILD, str(marker)],
        capture_output=True, text=True, timeout=60, env=child_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "read\n"
    assert marker.read_text() == "ran at exit"  # its callbacks still ran at exit


@pytest.mark.e2e
def test_a_callback_unregistered_leaves_a_hole_that_reads_as_none_or_nothing(tmp_path):
    script = """
import atexit
from diag.c_roots import CRoots, atexit_callbacks

def f(*args):
    pass

atexit.register(f, b"x")
atexit.unregister(f)  # its entry is NULL now, the count still 1
assert atexit._ncallbacks() == 1
assert atexit_callbacks() in (None, []) and list(CRoots()._atexit()) == []
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        env=child_env(),
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


def test_a_weakref_finalize_callback_is_named():
    class Session:
        pass

    session = Session()
    finalizer = weakref.finalize(session, remove_tmp, [torch.ones(104) for _ in range(4)])
    try:
        assert _holders(104) == [
            ("weakref.finalize callback remove_tmp().args[<int>]", "finalize", 4)
        ]
    finally:
        finalizer.detach()


def _make_handler() -> Callable[[int, Any], None]:
    kept = [torch.ones(105) for _ in range(2)]

    def on_usr1(signum: int, frame: Any) -> None:
        kept.clear()

    return on_usr1


def test_a_signal_handlers_closure_is_named():
    previous = signal.signal(signal.SIGUSR1, _make_handler())
    try:
        function = "_make_handler.<locals>.on_usr1()"
        assert _holders(105) == [
            (f"signal handler {function} for SIGUSR1 › kept (closure of {function})", "signal", 2)
        ]
    finally:
        signal.signal(signal.SIGUSR1, previous)


_tls = threading.local()


def test_a_threading_local_is_named_with_its_thread():
    def fill() -> None:
        _tls.chunks = [torch.ones(106) for _ in range(3)]

    with _in_thread("worker-3", fill):
        path = "tests.test_c_roots._tls (threading.local of thread 'worker-3').chunks"
        assert _holders(106) == [(path, "thread", 3)]


STOP: asyncio.Event | None = None


async def push_chunks() -> None:
    assert STOP is not None
    chunks = [torch.ones(107) for _ in range(2)]
    await STOP.wait()
    chunks.clear()


def test_pending_tasks_are_grouped_by_coroutine_and_what_they_await():
    loop = asyncio.new_event_loop()
    tasks: list[Any] = []

    async def start() -> None:
        global STOP
        STOP = asyncio.Event()
        tasks.extend(asyncio.create_task(push_chunks()) for _ in range(5))
        await asyncio.sleep(0)

    loop.run_until_complete(start())  # the tasks wait on STOP; the loop is not running
    try:
        path = (
            "pending asyncio tasks of push_chunks() awaiting tests.test_c_roots.STOP"
            " › push_chunks() › chunks"
        )
        assert _holders(107) == [(path, "task", 10)]
    finally:
        assert STOP is not None
        STOP.set()
        loop.run_until_complete(asyncio.gather(*tasks))
        loop.close()


async def _sleeper() -> None:
    await asyncio.sleep(3600)


async def _never_started() -> None:
    return None


def test_task_entries_group_pending_tasks_by_coroutine_and_what_they_await():
    from diag.c_roots import task_entries

    loop = asyncio.new_event_loop()
    tasks: list[Any] = []

    async def start() -> None:
        global STOP
        STOP = asyncio.Event()
        for _ in range(3):
            tasks.append(asyncio.create_task(push_chunks()))
            tasks.append(asyncio.create_task(_sleeper()))
        await asyncio.sleep(0)

    loop.run_until_complete(start())
    # The loop is not running: this one has not started.
    tasks.append(loop.create_task(_never_started()))
    try:
        texts: dict[str, int] = {}
        for text, task in task_entries():
            assert not task.done()
            texts[text] = texts.get(text, 0) + 1
        assert texts == {
            "pending asyncio tasks of push_chunks() awaiting tests.test_c_roots.STOP": 3,
            "pending asyncio tasks of _sleeper() awaiting sleep()": 3,
            "pending asyncio tasks of _never_started()": 1,
        }
    finally:
        assert STOP is not None
        STOP.set()
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()


def test_a_contextvar_set_in_a_pending_task_is_named_by_task_and_variable():
    loop = asyncio.new_event_loop()
    tasks: list[Any] = []

    async def handle() -> None:
        assert STOP is not None
        request_log.set(torch.ones(110))
        await STOP.wait()

    async def start() -> None:
        global STOP
        STOP = asyncio.Event()
        tasks.append(asyncio.create_task(handle()))
        await asyncio.sleep(0)

    loop.run_until_complete(start())
    try:
        path = (
            "pending asyncio tasks of test_a_contextvar_set_in_a_pending_task_is_named_by_task"
            "_and_variable.<locals>.handle() awaiting tests.test_c_roots.STOP"
            " › contextvar request_log"
        )
        assert _holders(110) == [(path, "task", 1)]
    finally:
        assert STOP is not None
        STOP.set()
        loop.run_until_complete(asyncio.gather(*tasks))
        loop.close()


def _make_hook() -> Callable[[str, Any], None]:
    kept = [torch.ones(111) for _ in range(2)]

    def on_event(event: str, args: Any) -> None:
        if event == "tests.c_roots.release":
            kept.clear()

    return on_event


def test_an_audit_hooks_closure_is_named():
    # An audit hook stays for good: this one lets its tensors go when it hears an event.
    sys.addaudithook(_make_hook())
    try:
        function = "_make_hook.<locals>.on_event()"
        path = f"sys.addaudithook hooks {function} › kept (closure of {function})"
        assert _holders(111) == [(path, "audit", 2)]
    finally:
        sys.audit("tests.c_roots.release")


def _make_search() -> Callable[[str], None]:
    kept = [torch.ones(112) for _ in range(2)]

    def search(name: str) -> None:
        kept.clear() if name == "never" else None

    return search


def test_a_codec_search_functions_closure_is_named():
    search = _make_search()
    codecs.register(search)
    del search
    try:
        function = "_make_search.<locals>.search()"
        path = f"codecs.register search functions[<int>] › kept (closure of {function})"
        assert _holders(112) == [(path, "codec", 2)]
    finally:
        for func in [
            f for f in _codec_search_functions() if getattr(f, "__name__", "") == "search"
        ]:
            codecs.unregister(func)


def _codec_search_functions() -> list[Any]:
    from diag.c_roots import _interpreter_fields

    for held, root in _interpreter_fields().values():
        if root.text == "codecs.register search functions":
            return list(held)
    return []


def test_an_object_only_c_holds_is_described_never_unreachable():
    held = functools.partial(remove_tmp, [torch.ones(108) for _ in range(2)])
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(held))  # a reference only C code has
    address = id(held)
    del held
    try:
        path = (
            "held from C code (no Python referrer): "
            "functools.partial(tests.test_c_roots.remove_tmp, …).args[<int>]"
        )
        assert _holders(108) == [(path, "c", 2)]
    finally:
        ctypes.pythonapi.Py_DecRef(ctypes.c_void_p(address))


def test_diags_own_objects_that_only_a_running_frame_keeps_are_never_holders():
    # An earlier census's result, kept by a frame of diag's (here: a reference from C).
    from diag.owners import Holder

    kept = Holder("earlier", "list", [torch.ones(113) for _ in range(3)])
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(kept))
    address = id(kept)
    del kept
    try:
        targets = [o for o in gc.get_objects() if type(o) is torch.Tensor and o.shape == (113,)]
        result = find_holders(targets, time_budget=20.0)
        assert result.holders == [] and result.orphans == 3
        del targets
    finally:
        ctypes.pythonapi.Py_DecRef(ctypes.c_void_p(address))


def test_locate_says_each_roots_kind_and_name_objects_keeps_its_shape():
    holder = {"audio": torch.ones(1)}
    _HELD.append(holder)
    try:
        (named,), in_time = locate([holder], time_budget=10.0)
        assert in_time
        assert (named.path, named.root) == ("tests.test_c_roots._HELD[<int>]", "module")
        assert named.chain[0].step == "tests.test_c_roots"
        names, in_time = name_objects([holder], time_budget=10.0)
        assert names == [(named.path, named.chain)] and in_time
        (named,), _ = locate([Shelf.kept], time_budget=10.0)
        assert (named.path, named.root) == ("tests.test_c_roots.Shelf.kept", "class")
        assert set(ROOT_KINDS) >= {"module", "class", "thread", "context", "atexit", "task", "c"}
    finally:
        _HELD.clear()


_HELD: list[Any] = []


class Shelf:
    kept: ClassVar[list[Any]] = []


def _hold_a_cycle() -> None:
    first: dict[str, Any] = {"audio": torch.ones(109)}
    second: dict[str, Any] = {"first": first}
    first["second"] = second
    _HELD.append(second)


def test_a_chain_around_a_cycle_finds_the_way_out():
    # Two dicts that refer to each other, one also held by a global's list: the walk must not
    # go round the cycle (a dict is preferred to a list) until its depth runs out.
    _hold_a_cycle()
    try:
        assert _holders(109) == [("tests.test_c_roots._HELD[<int>][<str>]", "module", 1)]
    finally:
        _HELD[0]["first"].clear()
        _HELD.clear()


def _drop_a_cycle() -> None:
    first: dict[str, Any] = {"audio": torch.ones(115)}
    second: dict[str, Any] = {"first": first}
    first["second"] = second


def test_a_cycle_nothing_roots_is_said_to_be_one():
    # Garbage the collector has not freed yet: the walk goes round once, then says so.
    gc.disable()
    try:
        _drop_a_cycle()
        path = "held from C code or by a reference cycle (no root): dict of 1 entry[<str>]"
        assert _holders(115) == [(path, "c", 1)]
    finally:
        gc.enable()
        gc.collect()


# -- real children, one per root -------------------------------------------------------------

#: mode -> the path its tensors' holder must have, and the root kind
CASES = {
    "context": ("contextvar request_log in thread 'ctx-worker'", "context"),
    "atexit": ("atexit callback functools.partial(__main__.remove_tmp, …).args[<int>]", "atexit"),
    "atexit_args": ("atexit callback remove_tmp() args[<int>]", "atexit"),
    "finalize": ("weakref.finalize callback remove_tmp().args[<int>]", "finalize"),
    "tasks": (
        "pending asyncio tasks of push_chunks() awaiting __main__.STOP › push_chunks() › chunks",
        "task",
    ),
    "thread_local": ("__main__._tls (threading.local of thread 'worker-3').chunks", "thread"),
    "signal": (
        "signal handler make_handler.<locals>.on_usr1() for SIGUSR1"
        " › kept (closure of make_handler.<locals>.on_usr1())",
        "signal",
    ),
    "c": (
        "held from C code (no Python referrer): functools.partial(__main__.remove_tmp, …)"
        ".args[<int>]",
        "c",
    ),
}


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """Every child started at once, then one ``diag dump --json`` of each, in parallel."""
    tmp = tmp_path_factory.mktemp("c_roots")
    env = child_env(XDG_RUNTIME_DIR=str(tmp), DIAG_HISTORY=str(tmp / "h"), OMP_NUM_THREADS="1")
    children = {}
    try:
        for mode in CASES:
            children[mode] = subprocess.Popen(
                [*DIAG, "run", "--", sys.executable, str(APPS / "c_roots.py"), mode],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            )  # fmt: skip
        for mode, child in children.items():
            line = child.stdout.readline()
            assert line == "ready\n", f"{mode}: {line!r} {child.stderr.read() if not line else ''}"

        def dump(mode: str) -> dict[str, Any]:
            done = subprocess.run(
                [*DIAG, "dump", "--pid", str(children[mode].pid), "--json", "--budget", "60"],
                capture_output=True, text=True, timeout=300, env=env,
            )  # fmt: skip
            assert done.returncode == 0, f"{mode}: {done.stderr}"
            return dict(json.loads(done.stdout))

        with ThreadPoolExecutor(max_workers=3) as pool:
            yield dict(zip(CASES, pool.map(dump, CASES), strict=True))
    finally:
        for child in children.values():
            child.kill()
            child.wait()
            child.stdout.close()
            child.stderr.close()


@pytest.mark.e2e
@pytest.mark.parametrize("mode", list(CASES))
def test_a_root_held_from_c_is_named_in_a_dump(dumps, mode):
    path, _ = CASES[mode]
    owners = dumps[mode]["owners"]
    paths = [o["path"] for o in owners]
    assert not any("<unreachable" in p for p in paths), paths
    first = owners[0]
    assert first["path"] == path, paths
    assert first["retained_bytes"] >= 200 * 4096 * 4


@pytest.mark.e2e
@pytest.mark.parametrize("mode", list(CASES))
def test_each_owner_in_a_dump_says_its_root_kind(dumps, mode):
    _, root = CASES[mode]
    assert dumps[mode]["owners"][0]["root"] == root
