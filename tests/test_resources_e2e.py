"""Real children that leak resources, watched from outside (the watcher behind ``diag watch``)
and from inside (the embedded agent), with the detector's clock sped up (``time_scale``, as the
demo does) so that it decides within seconds: fds appended to a list, sockets left in
CLOSE_WAIT by a real peer, threads blocked forever, Popen without wait (zombies), asyncio tasks
that never finish; and a pool that opens to its bound and stays there, never called a leak.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from probes.watcher import Watcher
from tests.conftest import (
    PYTHON,
    child_cgroup,
    child_env,
    free_port,
    poll,
    read_line,
    scrape,
    spawned,
)

pytestmark = pytest.mark.e2e

#: The detector's clock runs this much faster: warm-up (15 min) in 7.5 s, a young process's
#: 30 min of watching in 15 s.
TIME_SCALE = 120.0
TICK = 0.1

LEAKER = r"""
import os, resource, socket, subprocess, sys, threading, time
args = dict(a.split("=") for a in sys.argv[1:])
nofile = int(args.get("nofile", 1024))
resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
held, threads, children = [], [], []
forever = threading.Event()
for _ in range(int(args.get("closewait", 0))):
    held.append(socket.create_connection(("127.0.0.1", int(args["port"]))))
for _ in range(int(args.get("blocked", 0))):
    t = threading.Thread(target=forever.wait, daemon=True); t.start(); threads.append(t)
for _ in range(int(args.get("pool", 0))):  # a pool opened to its bound, then held
    held.append(open(sys.executable, "rb"))
print("ready", flush=True)
fds, new_threads, zombies = (float(args.get(k, 0)) for k in ("fds", "threads", "zombies"))
started = time.monotonic()
done = {"fds": 0, "threads": 0, "zombies": 0}
while True:
    elapsed = time.monotonic() - started
    while done["fds"] < fds * elapsed:
        held.append(open(sys.executable, "rb")); done["fds"] += 1
    while done["threads"] < new_threads * elapsed:
        t = threading.Thread(target=forever.wait, daemon=True); t.start(); threads.append(t)
        done["threads"] += 1
    while done["zombies"] < zombies * elapsed:
        children.append(subprocess.Popen(["true"])); done["zombies"] += 1
    time.sleep(0.02)
"""


@contextlib.contextmanager
def leaker(tmp_path: Path, name: str, **args: object) -> Iterator[int]:
    argv = [PYTHON, "-c", LEAKER, *(f"{k}={v}" for k, v in args.items())]
    with spawned(argv, tmp_path / f"{name}.log", env=child_env()) as proc:
        assert read_line(proc, tmp_path / f"{name}.log") == "ready"
        yield proc.pid


def pids_cgroup(limit: int) -> contextlib.AbstractContextManager[Callable[[], None]]:
    """A pids cgroup with ``limit``: threads count against it (see ``child_cgroup``)."""
    return child_cgroup("pids", {"pids.max": str(limit)})


def watch_until(
    watchers: list[Watcher], done: Callable[[list[dict]], bool], timeout: float = 60.0
) -> list[dict]:
    """Tick every watcher each ``TICK`` until ``done(last rows)``; the last rows."""
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = [w.tick(time.time()) for w in watchers]
        assert all(rows), "a watched child died"
        if done(rows):
            return rows
        time.sleep(TICK)
    raise AssertionError(f"timed out; last rows: {rows}")


def resource(row: dict, name: str) -> dict:
    return row["resources"][name]


def test_fds_closewait_sockets_and_zombies_from_outside(tmp_path):
    server = socket.create_server(("127.0.0.1", 0), backlog=16)
    port = server.getsockname()[1]
    with leaker(tmp_path, "fds", port=port, closewait=5, blocked=3, fds=15, zombies=2) as pid:
        for _ in range(5):  # the peer closes; the child never does: CLOSE_WAIT on its side
            conn, _ = server.accept()
            conn.close()
        watcher = Watcher(pid, "off", time_scale=TIME_SCALE, interval=TICK)
        started = time.monotonic()
        (row,) = watch_until([watcher], lambda rows: resource(rows[0], "fds")["verdict"] == "leak")
        seen_after = time.monotonic() - started
        # The children are counted on their budgeted pass, real seconds apart, while the
        # detector's clock runs 120x faster: on a loaded machine (longer passes, so sparser)
        # the count may have risen in one step when the fds are called, and one step is no
        # trend. More passes show the growth (in a few steps: bounded_growth; or a trend).
        (later,) = watch_until(
            [watcher],
            lambda rows: (
                resource(rows[0], "children")["verdict"] in ("growing", "leak", "bounded_growth")
            ),
        )
        watcher.close()
    server.close()
    fds = resource(row, "fds")
    assert fds["limit"] == 1024
    assert fds["growth_per_second"] == pytest.approx(15, rel=0.25)
    assert fds["seconds_to_exhaustion"] is not None
    # The truth: (limit - open now) / rate; the forecast is judged in the benchmark, here
    # only its order of magnitude.
    truth = (1024 - fds["usage"]) / 15
    assert truth / 2 < fds["seconds_to_exhaustion"] < truth * 2, (fds, truth, seen_after)
    breakdown = row["breakdown"]
    assert breakdown["sockets"].get("tcp CLOSE_WAIT") == 5
    assert breakdown["open_fds"]["socket"] == 5
    assert breakdown["open_fds"]["file"] >= 15
    assert breakdown["threads"]["os"] >= 4  # main + 3 blocked forever
    assert breakdown["child_processes"]["zombie"] >= 10
    children = resource(row, "children")
    assert children["limit"] is None and children["usage"] >= 10
    assert resource(later, "children")["usage"] >= children["usage"]


def test_a_thread_leak_under_a_pids_limit_and_a_pool_at_its_bound(tmp_path):
    with (
        pids_cgroup(400) as join,
        spawned(
            [PYTHON, "-c", LEAKER, "threads=5"],
            tmp_path / "threads.log",
            env=child_env(),
            preexec_fn=join,
        ) as threads_child,
        leaker(tmp_path, "pool", pool=300) as pool_pid,
    ):
        assert read_line(threads_child, tmp_path / "threads.log") == "ready"
        threads = Watcher(threads_child.pid, "off", time_scale=TIME_SCALE, interval=TICK)
        pool = Watcher(pool_pid, "off", time_scale=TIME_SCALE, interval=TICK)
        rows = watch_until(
            [threads, pool], lambda rows: resource(rows[0], "threads")["verdict"] == "leak"
        )
        # The pool has been watched as long as the leak, well past the warm-up: not a leak.
        threads.close()
        pool.close()
    leaking, bounded = (resource(row, "threads") for row in rows)
    assert leaking["limit"] == 400
    assert leaking["seconds_to_exhaustion"] is not None
    assert resource(rows[1], "fds")["usage"] >= 300
    assert resource(rows[1], "fds")["verdict"] not in ("leak", "growing")
    assert bounded["verdict"] != "leak"


def test_asyncio_tasks_that_never_finish_inside_the_embedded_agent(tmp_path):
    port = free_port()
    code = f"""
import asyncio, probes
probes.start(interval={TICK}, time_scale={TIME_SCALE}, port={port}, history="off")

async def stuck(event):
    await event.wait()

async def main():
    event, tasks = asyncio.Event(), []
    print("ready", flush=True)
    while True:
        tasks.append(asyncio.create_task(stuck(event)))
        await asyncio.sleep(0.05)

asyncio.run(main())
"""
    with spawned([PYTHON, "-c", code], tmp_path / "inside.log", env=child_env()):
        url = f"http://127.0.0.1:{port}/metrics"
        leak = "diag_leak_suspected{resource=asyncio_tasks,series=resource_usage}"
        got = poll(lambda: (m := scrape(url)).get(leak) == 1.0 and m, timeout=60)
        # The census by coroutine is a budgeted pass (it walks every task), seconds apart,
        # while the count the leak is called on is read every tick: on a busy machine the
        # census may not have reached 100 yet when the call comes (98 once in CI). Awaited
        # on its own, while the tasks keep piling up.
        stuck = "diag_asyncio_tasks{coroutine=stuck}"
        poll(lambda: scrape(url).get(stuck, 0.0) >= 100, timeout=60)
    assert got["diag_resource_usage{resource=asyncio_tasks}"] >= 100
    assert got["diag_threads{kind=python}"] >= 2  # main and the sampler
    assert got["diag_growth_per_second{resource=asyncio_tasks,series=resource_usage}"] > 10
    assert "diag_seconds_to_exhaustion{resource=asyncio_tasks,series=resource_usage}" not in got
    fds = "diag_leak_suspected{resource=fds,series=resource_usage}"
    assert got[fds] == 0.0
