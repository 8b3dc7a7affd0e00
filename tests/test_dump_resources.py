"""The dump's ``resources``: live files, sockets, threads, tasks and children, grouped by who
holds them and where they were created.

Fast tier: the grouping over real objects of this process (files, socket pairs, threads, asyncio
tasks, pipes nobody wraps), one census before and one after they grow. End to end: real children
under ``diag run`` that leak one kind of resource each, and a pool that fills to its bound; one
``diag dump --window`` each must name the group (holder path and the function that created it).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import socket
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest

from diag.census import take_dump
from diag.resources_census import task_path, thread_path
from probes import creation
from probes.escalation import DumpRequest, Escalation
from reports.dump import render_text

README = Path(__file__).resolve().parent.parent / "README.md"
HERE = __name__

# -- fast tier: this process's own resources ---------------------------------------------------

_FILES: list = []
_POOL_FILES: list = []


class Pool:
    def __init__(self) -> None:
        self._conns: dict[str, socket.socket] = {}


POOL = Pool()


def open_log() -> object:
    return open(__file__, "rb")


def connect() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair()


async def poll(event: asyncio.Event) -> None:
    await event.wait()


def upload(stop: threading.Event) -> None:
    stop.wait()


def start_uploader(stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=upload, args=(stop,), name="uploader", daemon=True)
    thread.start()
    return thread


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


_BUDGET = 120.0

#: Each gc.get_referrers call of the dump: the function that asked, and of how many objects.
_PASSES: list[tuple[str, int]] = []


@pytest.fixture(scope="module")
def grown():
    """A census, then 30 files, 5 socket pairs, 3 threads, 4 tasks and a pipe more, made while
    tracemalloc traces (as in a window), then a second census against the first, 10 s later on
    its clock and 20 requests after."""
    clock = Clock()
    started_tracing = False
    stop = threading.Event()
    loop = asyncio.new_event_loop()
    pipe = os.pipe()
    threads: list[threading.Thread] = []
    pairs: list[socket.socket] = []
    try:
        _POOL_FILES.extend(open_log() for _ in range(4))  # a bounded pool, full already
        # The budget is generous: these tests judge grouping, not speed, and the census walks
        # this whole test session's heap with tracemalloc on (over the 10 s default on a busy
        # CI machine once, which left the paths unfound).
        _, baseline = take_dump(
            top=1, clock=clock, created_at=creation.stack_of, time_budget=_BUDGET
        )
        started_tracing = not tracemalloc.is_tracing()
        if started_tracing:
            tracemalloc.start(16)
        _FILES.extend(open_log() for _ in range(30))
        for index in range(5):
            a, b = connect()
            POOL._conns[f"conn-{index}"] = a
            pairs.append(b)
        threads.extend(start_uploader(stop) for _ in range(3))
        event = asyncio.Event()
        tasks = [loop.create_task(poll(event)) for _ in range(4)]
        loop.run_until_complete(asyncio.sleep(0))  # each task runs up to its await
        clock.t += 10.0
        get_referrers = gc.get_referrers

        def counted(*objects):
            # Who asked: the search's referrers() is called by find_holders (the holder
            # search's sampled passes) or by the path searches.
            # (Counts only: keeping the objects would keep tasks alive for later tests.)
            _PASSES.append((sys._getframe(2).f_code.co_name, len(objects)))
            return get_referrers(*objects)

        gc.get_referrers = counted  # the heap passes the searches make of their own
        try:
            dump, _ = take_dump(
                top=3,
                clock=clock,
                baseline=baseline,
                requests=20,
                created_at=creation.stack_of,
                on_collected=tracemalloc.stop if started_tracing else None,
                time_budget=_BUDGET,
            )
        finally:
            gc.get_referrers = get_referrers
        yield dump.to_json()
    finally:
        if started_tracing and tracemalloc.is_tracing():
            tracemalloc.stop()
        stop.set()
        for thread in threads:
            thread.join(5)
        for task in locals().get("tasks", []):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        for f in itertools.chain(_FILES, _POOL_FILES):
            f.close()
        _FILES.clear()
        _POOL_FILES.clear()
        for s in itertools.chain(POOL._conns.values(), pairs):
            s.close()
        POOL._conns.clear()
        os.close(pipe[0])
        os.close(pipe[1])
        gc.collect()


def _resource(document: dict, name: str) -> dict:
    found = [r for r in document["resources"] if r["resource"] == name]
    assert found, [r["resource"] for r in document["resources"]]
    return found[0]


def _group(resource: dict, path: str | None, kind: str | None = None) -> dict:
    found = [
        g
        for g in resource["groups"]
        if g["holder_path"] == path and (kind is None or g["kind"] == kind)
    ]
    assert found, [(g["kind"], g["holder_path"]) for g in resource["groups"]]
    return found[0]


def test_files_count_once_under_their_holder_with_the_function_that_opened_them(grown):
    fds = _resource(grown, "fds")
    group = _group(fds, f"{HERE}._FILES")
    assert group["kind"] == "file"
    assert group["count"] == 30  # a buffered reader and its raw file: one fd
    assert group["growth_per_second"] == pytest.approx(3.0)
    assert group["growth_per_request"] == pytest.approx(1.5)
    assert group["created_at"][0]["function"] == "open_log"
    assert group["stacks_seen"] == 30


def test_the_holders_of_resources_come_from_the_censuss_own_pass(grown):
    """The census's one pass over the heap lists what refers to a tensor, an array or a
    resource object: the holder searches then make no pass of their own (each
    gc.get_referrers call scans the whole heap: 0.1-0.3 s of pause on a million objects), and
    still place every group. (The paths up from the holders, a level a call, still ask.)"""
    assert _PASSES, "the spy saw no call at all: it would prove nothing"
    assert [count for caller, count in _PASSES if caller == "find_holders"] == []
    fds = _resource(grown, "fds")
    assert _group(fds, f"{HERE}._FILES")["count"] == 30
    assert _group(fds, f"{HERE}.POOL._conns")["count"] == 5


def test_sockets_grouped_by_the_pool_that_holds_them(grown):
    group = _group(_resource(grown, "fds"), f"{HERE}.POOL._conns")
    assert (group["kind"], group["count"]) == ("socket", 5)
    assert group["created_at"][0]["function"] == "connect"


def test_a_pool_at_its_bound_shows_no_growth(grown):
    group = _group(_resource(grown, "fds"), f"{HERE}._POOL_FILES")
    assert group["count"] == 4
    assert group["growth_per_second"] == 0


def test_fds_no_python_object_holds_are_native(grown):
    fds = _resource(grown, "fds")
    pipes = _group(fds, None, "native")
    natives = [g for g in fds["groups"] if g["kind"] == "native"]
    assert any(g["detail"] == "pipe" and g["count"] >= 2 for g in natives), natives
    assert pipes["created_at"] == []
    assert fds["count"] >= sum(g["count"] for g in fds["groups"] if g["kind"] != "native")
    assert fds["growth_per_second"] >= 3.0 + 1.0  # the files, the socket pairs


def test_threads_by_name_with_where_they_were_started(grown):
    threads = _resource(grown, "threads")
    group = _group(threads, "thread 'uploader'")
    assert group["count"] == 3
    assert group["growth_per_second"] == pytest.approx(0.3)
    assert group["created_at"][0]["function"] == "start_uploader"


def test_pending_tasks_by_coroutine_and_what_they_await(grown):
    tasks = _resource(grown, "asyncio_tasks")
    group = _group(tasks, "pending tasks of poll() awaiting Event.wait()")
    assert group["count"] == 4
    assert group["created_at"][0]["function"] == "grown"  # create_task's caller


def test_resources_growing_first_with_growth_per_request(grown):
    resources = grown["resources"]
    rates = [r["growth_per_second"] for r in resources]
    assert rates == sorted(rates, reverse=True)
    assert resources[0]["resource"] == "fds"
    assert resources[0]["growth_per_request"] == pytest.approx(
        resources[0]["growth_per_second"] / 2
    )
    for resource in resources:  # the documented fields, nulls without an agent
        assert {"resource", "count", "limit", "growth_per_second", "seconds_to_exhaustion"} <= set(
            resource
        )
        for group in resource["groups"]:
            assert {"kind", "count", "holder_path", "created_at"} <= set(group)
            for frame in group["created_at"]:
                assert set(frame) == {"file", "line", "function"}


def test_the_tree_has_a_resources_branch(grown):
    text = render_text(grown, width=200)
    assert "resources" in text
    assert f"{HERE}._FILES  30 × file, +1.50 per request, +3.00/s" in text
    assert "created at test_dump_resources.py:" in text and "open_log()" in text
    assert "thread 'uploader'" in text


def test_names_of_threads_and_tasks():
    assert thread_path("uploader") == "thread 'uploader'"
    assert thread_path("Thread-12 (work)") == "thread 'Thread-<n> (work)'"

    async def main() -> str:
        event = asyncio.Event()
        task = asyncio.get_running_loop().create_task(poll(event))
        await asyncio.sleep(0)
        try:
            return task_path(task)
        finally:
            task.cancel()

    assert asyncio.run(main()) == "pending tasks of poll() awaiting Event.wait()"


def test_the_recorder_ties_stacks_to_sockets_threads_and_files():
    creation.window_started()
    try:
        a, b = connect()
        f = open_log()
        stop = threading.Event()
        thread = start_uploader(stop)
    finally:
        creation.window_ended()
    try:
        assert not creation.recording()
        made = [a, f]
        if sys.version_info >= (3, 12):  # 3.11 raises no audit event when a thread starts
            made.append(thread)
        for obj in made:
            stack = creation.stack_of(obj)
            assert stack is not None, obj
            files = [file for file, _ in stack]
            assert __file__ in files
        assert creation.stack_of(object()) is None
    finally:
        stop.set()
        thread.join(5)
        for s in (a, b, f):
            s.close()


def test_the_dump_takes_limits_and_forecasts_from_the_agent():
    escalation = Escalation(
        requests=dict,
        series=lambda name: [],
        resource_context=lambda: {"fds": (1024.0, 3600.0), "shm": (1e9, 5.0)},
        window=0,
    )
    document = escalation.dump(DumpRequest(top=1)).to_json()
    fds = _resource(document, "fds")
    assert (fds["limit"], fds["seconds_to_exhaustion"]) == (1024.0, 3600.0)
    for resource in document["resources"]:
        if resource["resource"] != "fds":  # shm: the agent's is bytes, the census's segments
            assert resource["limit"] is None


def test_the_readme_documents_the_resources_fields():
    text = README.read_text()
    section = text[text.index("## `diag dump`") :]
    section = section[: section.index("\n## ", 1)]
    for word in (
        '"resources"',
        '"resource"',
        '"limit"',
        '"growth_per_second"',
        '"seconds_to_exhaustion"',
        '"groups"',
        '"holder_path"',
        '"created_at"',
        "native",
    ):
        assert word in section, word


# -- end to end: leaking children under diag run ---------------------------------------------

PRELUDE = """
import asyncio, os, socket, subprocess, sys, threading, time

def leak_forever(step, prefill=20, every=0.1):
    for i in range(prefill):
        step(-i - 1)
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        step(i)
        time.sleep(every)
"""

#: name -> (script after the prelude, resource, holder path, kind, creating function)
CASES = {
    "files": (
        """
        _OPEN_LOGS = []
        def open_log(i):
            return open(__file__, "rb")
        leak_forever(lambda i: _OPEN_LOGS.append(open_log(i)))
        """,
        "fds", "__main__._OPEN_LOGS", "file", "open_log",
    ),
    "sockets": (
        """
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1024)
        PEERS = []
        def serve():
            while True:
                PEERS.append(server.accept()[0])
        threading.Thread(target=serve, name="acceptor", daemon=True).start()
        class Pool:
            def __init__(self):
                self._conns = {}
        POOL = Pool()
        def connect(i):
            return socket.create_connection(server.getsockname())
        def check_out(i):
            POOL._conns[f"conn-{i}"] = connect(i)
        leak_forever(check_out)
        """,
        "fds", "__main__.POOL._conns", "socket", "connect",
    ),
    "threads": (
        """
        _STOP = threading.Event()
        def upload_forever():
            _STOP.wait()
        def spawn_uploader(i):
            threading.Thread(target=upload_forever, name="uploader", daemon=True).start()
        leak_forever(spawn_uploader)
        """,
        "threads", "thread 'uploader'", "thread", "spawn_uploader",
    ),
    "asyncio tasks": (
        """
        async def poll(event):
            await event.wait()
        def start_poll(event):
            return asyncio.get_running_loop().create_task(poll(event))
        async def main():
            event = asyncio.Event()
            for _ in range(20):
                start_poll(event)
            print("ready", flush=True)
            while True:
                start_poll(event)
                await asyncio.sleep(0.1)
        asyncio.run(main())
        """,
        "asyncio_tasks", "pending tasks of poll() awaiting Event.wait()", "task", "start_poll",
    ),
    "children": (
        """
        _JOBS = []
        def run_job(i):
            return subprocess.Popen(["true"])  # never waited for: a zombie once it exits
        leak_forever(lambda i: _JOBS.append(run_job(i)), prefill=5, every=0.25)
        """,
        "children", "__main__._JOBS", "zombie", "run_job",
    ),
}  # fmt: skip

BOUNDED_POOL = """
_POOL = []
def check_out(i):
    if len(_POOL) < 16:
        _POOL.append(open(__file__, "rb"))
    f = _POOL[i % len(_POOL)]
    f.seek(0)
    f.read(16)
leak_forever(check_out)
"""


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    from tests.test_dump_holders import dumped  # its children and dumps; needs torch there

    scripts = {name: case[0] for name, case in CASES.items()}
    scripts["bounded pool"] = BOUNDED_POOL
    with dumped(tmp_path_factory.mktemp("resources"), scripts, prelude=PRELUDE) as documents:
        yield documents


@pytest.mark.e2e
@pytest.mark.parametrize("case", list(CASES))
def test_the_leaking_group_is_named_with_its_creating_function(dumps, case):
    _, resource_name, path, kind, function = CASES[case]
    document = dumps[case]
    first = document["resources"][0]
    assert first["resource"] == resource_name, [
        (r["resource"], r["growth_per_second"]) for r in document["resources"]
    ]
    assert first["growth_per_second"] > 1.0  # ~10 a second (children: ~4)
    group = _group(first, path, kind)
    assert group["growth_per_second"] > 1.0
    assert group["created_at"], f"no creation stack for {path}"
    assert group["created_at"][0]["function"] == function
    assert all("site-packages" not in f["file"] for f in group["created_at"])  # user code only


@pytest.mark.e2e
def test_a_pool_at_its_bound_does_not_grow(dumps):
    document = dumps["bounded pool"]
    group = _group(_resource(document, "fds"), "__main__._POOL", "file")
    assert group["count"] == 16
    assert group["growth_per_second"] == 0
    assert all((r["growth_per_second"] or 0) < 1.0 for r in document["resources"])


def test_the_setting_turns_the_recorder_on_between_windows_and_stop_turns_it_off():
    """DIAG_CREATION_STACKS=1: sampled stacks without a window (one creation in ALWAYS_EVERY)."""
    from diag.settings import Settings
    from probes.agent import Agent

    agent = Agent(Settings(creation_stacks=True, history="off", interval=60.0)).start()
    sockets = []
    try:
        assert creation.recording()
        sockets = [socket.socket() for _ in range(2 * creation.ALWAYS_EVERY)]
        assert any(creation.stack_of(s) is not None for s in sockets)
    finally:
        agent.stop()
        for s in sockets:
            s.close()
    assert not creation.recording()
