"""The resource probe's parsers over what /proc really prints, the probe over fixture trees
(a /proc that hides fds, another user's process, a pid that is gone), and the detector's
resource verdicts. No process is started here: the real children are in test_resources_e2e.py.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from pathlib import Path

import pytest

from diag import watched
from diag.model import Sample, labels_of
from diag.testing import FakeClock
from probes import resources
from probes.analysis import GrowthAnalyzer
from probes.base import ProbeUnavailable
from probes.resources import (
    ResourceProbe,
    coroutine_name,
    fd_kind,
    parse_children,
    parse_limits_file,
    parse_net_inet,
    parse_net_unix,
    parse_stat_state,
    parse_threads,
    socket_inode,
    top_with_other,
)

# Lines as a 6.x kernel prints them (header, a listener, a CLOSE_WAIT, a TIME_WAIT), with the
# runs of column padding shortened to one space.
NET_TCP = b"""\
  sl local_address rem_address st tx_queue rx_queue tr tm->when retrnsmt uid timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1001 1 0 100 0
   1: 0100007F:1F90 0100007F:D2F4 08 00000000:00000000 00:00000000 00000000 0 0 1002 1 0 20 4
   2: 0100007F:D2F6 0100007F:1F90 06 00000000:00000000 03:000016C2 00000000 0 0 0 3 0
"""
NET_UDP6 = (
    b"  sl local_address remote_address st tx_queue rx_queue tr tm->when retrnsmt uid timeout "
    b"inode ref pointer drops\n"
    b"  100: 00000000000000000000000000000000:14E9 00000000000000000000000000000000:0000 07 "
    b"00000000:00000000 00:00000000 00000000 0 0 2001 2 0000000000000000 0\n"
)
NET_UNIX = b"""\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 3001 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 3002
0000000000000000: 00000002 00000000 00000000 0002 01 3003 @abstract
"""
LIMITS = b"""\
Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max processes             96365                96365                processes
Max open files            1024                 524288               files
Max locked memory         8388608              8388608              bytes
"""
STATUS = b"Name:\tpython\nState:\tS (sleeping)\nPid:\t4242\nThreads:\t7\nVmRSS:\t 1024 kB\n"


def test_fd_link_targets_are_sorted_into_kinds():
    assert fd_kind("/var/log/app.log") == "file"
    assert fd_kind("/tmp/x (deleted)") == "file"
    assert fd_kind("/memfd:weights (deleted)") == "file"
    assert fd_kind("/dev/shm/torch_123") == "file"
    assert fd_kind("/dev/shm") == "file"  # the directory, held open to read its usage
    assert fd_kind("socket:[1002]") == "socket"
    assert fd_kind("pipe:[77]") == "pipe"
    for anon in ("eventfd", "eventpoll", "signalfd", "timerfd", "io_uring"):
        assert fd_kind(f"anon_inode:[{anon}]") == "anon"
    assert fd_kind("anon_inode:inotify") == "anon"
    assert fd_kind("/dev/null") == fd_kind("/dev/pts/3") == fd_kind("/dev/nvidia0") == "device"
    assert fd_kind("net:[4026531840]") == "other"
    assert socket_inode("socket:[1002]") == 1002
    assert socket_inode("pipe:[1]") is None and socket_inode("socket:[x]") is None


def test_own_fds_are_sorted_by_fstat_as_their_links_sort_them():
    """Inside the process the kinds come from one fstat per fd (2.5x cheaper than readlink):
    the same kinds and socket inodes as the links give, on real files, sockets, pipes, a
    device, an epoll and a directory."""
    import select

    held = [
        open(__file__, "rb"),  # noqa: SIM115
        open(os.devnull, "rb"),  # noqa: SIM115
        *socket.socketpair(),
        select.epoll(),
    ]
    raw = [*os.pipe(), os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)]
    probe = ResourceProbe()
    dir_fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        # Only this test's own: what other tests left open may link anywhere.
        names = [str(item.fileno()) for item in held] + [str(fd) for fd in raw]
        by_fstat = probe._kinds_by_fstat(names, dir_fd)
        by_link = probe._kinds_by_readlink(names, dir_fd)
    finally:
        os.close(dir_fd)
        for item in held:
            item.close()
        for fd in raw:
            os.close(fd)
        probe.close()
    assert by_fstat[0] == by_link[0]
    assert sorted(by_fstat[1]) == sorted(by_link[1])
    assert {"file", "socket", "pipe", "device", "anon"} <= set(by_fstat[0])


def test_socket_tables_give_each_inode_its_kernel_state():
    assert parse_net_inet(NET_TCP) == {1001: "LISTEN", 1002: "CLOSE_WAIT", 0: "TIME_WAIT"}
    assert parse_net_inet(NET_UDP6) == {2001: "CLOSE"}
    assert parse_net_unix(NET_UNIX) == {3001: "LISTEN", 3002: "CONNECTED", 3003: "UNCONNECTED"}
    assert parse_net_inet(b"header only\n") == {}


def test_limits_status_stat_and_children_files():
    assert parse_limits_file(LIMITS) == 1024
    assert parse_limits_file(LIMITS, b"Max processes") == 96365
    assert parse_limits_file(LIMITS, b"Max cpu time") is None
    with pytest.raises(ValueError):
        parse_limits_file(b"Limit Soft Hard\n")
    assert parse_threads(STATUS) == 7
    with pytest.raises(ValueError):
        parse_threads(b"Name:\tx\n")
    assert parse_stat_state(b"4243 (worker (1)) Z 4242 4243 0 0") == "zombie"
    assert parse_stat_state(b"4244 (python) S 4242") == "sleeping"
    assert parse_children(b"4243 4244 ") == [4243, 4244]
    assert parse_children(b"") == []


def test_top_n_with_the_rest_as_other():
    from collections import Counter

    counts = Counter({"a": 5, "b": 3, "c": 1, "d": 1})
    assert top_with_other(counts, 2) == {"a": 5, "b": 3, "other": 2}
    assert top_with_other(Counter({"a": 1}), 2) == {"a": 1}


# -- the probe over a fixture tree ------------------------------------------------------------


def make_tree(root: Path, pid: int = 4242, *, fds: dict[str, str] | None = None) -> Path:
    """A /proc with one process: its status, limits, fds (symlinks to the targets given), net
    tables, maps, a thread with two children (one a zombie), and the kernel's limits."""
    proc = root / "proc"
    me = proc / str(pid)
    (me / "fd").mkdir(parents=True)
    (me / "status").write_bytes(STATUS)
    (me / "limits").write_bytes(LIMITS)
    (me / "maps").write_bytes(b"00400000-00401000 r-xp 0 08:01 1 /bin/x\n" * 5)
    (me / "cgroup").write_text("0::/\n")
    (me / "mountinfo").write_text("")
    (me / "net").mkdir()
    (me / "net" / "tcp").write_bytes(NET_TCP)
    (me / "net" / "udp6").write_bytes(NET_UDP6)
    (me / "net" / "unix").write_bytes(NET_UNIX)
    (me / "task" / str(pid)).mkdir(parents=True)
    (me / "task" / str(pid) / "children").write_bytes(b"4243 4244")
    (proc / "4243").mkdir()
    (proc / "4243" / "stat").write_bytes(b"4243 (worker) Z 4242 1 1")
    (proc / "4244").mkdir()
    (proc / "4244" / "stat").write_bytes(b"4244 (worker) S 4242 1 1")
    (proc / "sys" / "kernel").mkdir(parents=True)
    (proc / "sys" / "kernel" / "threads-max").write_text("100000\n")
    (proc / "sys" / "vm").mkdir(parents=True)
    (proc / "sys" / "vm" / "max_map_count").write_text("65530\n")
    targets = fds if fds is not None else {
        "0": "/dev/null",
        "1": "/var/log/app.log",
        "2": "pipe:[9]",
        "3": "socket:[1001]",
        "4": "socket:[1002]",
        "5": "socket:[1002]",  # dup'ed: two fds (open_fds), one socket (sockets)
        "6": "socket:[3002]",
        "7": "socket:[2001]",
        "8": "anon_inode:[eventpoll]",
        "9": "net:[4026531840]",
    }  # fmt: skip
    for name, target in targets.items():
        os.symlink(target, me / "fd" / name)
    (root / "shm").mkdir()
    return proc


def by_key(samples: list[Sample]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, s.labels): s.value for s in samples}


def test_the_probe_over_a_fixture_tree_reads_every_resource(tmp_path):
    proc = make_tree(tmp_path)
    probe = ResourceProbe(4242, proc_root=str(proc), shm_path=str(tmp_path / "shm"))
    got = by_key(probe.sample())
    kind = {k: got[("open_fds", labels_of(kind=k))] for k in resources.FD_KINDS}
    assert kind == {"file": 1, "socket": 5, "pipe": 1, "anon": 1, "device": 1, "other": 1}
    assert got[("sockets", labels_of(type="tcp", state="LISTEN"))] == 1
    assert got[("sockets", labels_of(type="tcp", state="CLOSE_WAIT"))] == 1
    assert got[("sockets", labels_of(type="udp6", state="CLOSE"))] == 1
    assert got[("sockets", labels_of(type="unix", state="CONNECTED"))] == 1
    assert got[("threads", labels_of(kind="os"))] == 7
    assert ("threads", labels_of(kind="python")) not in got  # outside: the kernel's count only
    assert got[("child_processes", labels_of(state="zombie"))] == 1
    assert got[("child_processes", labels_of(state="sleeping"))] == 1
    assert got[("child_processes", labels_of(state="running"))] == 0
    assert got[("memory_maps", ())] == 5
    usage = {dict(k[1])["resource"]: v for k, v in got.items() if k[0] == "resource_usage"}
    limit = {dict(k[1])["resource"]: v for k, v in got.items() if k[0] == "resource_limit"}
    # A fixture directory's st_size is no count: the listing counts (the kernel's stat is
    # checked against a listing the same way, and trusted only when they agree).
    assert usage == {"fds": 10, "threads": 7, "memory_maps": 5, "shm": usage["shm"], "children": 2}
    assert limit == {"fds": 1024, "threads": 100000, "memory_maps": 65530, "shm": limit["shm"]}
    assert "asyncio_tasks" not in usage  # only inside the process
    assert probe.notes == ("fds: this kernel gives no fd count in stat(); counted by listing",)
    for sample in probe.sample():
        assert watched.limit_for(sample.name, sample.labels, sample.value, got) == (
            limit.get(dict(sample.labels)["resource"]) if sample.name == "resource_usage" else None
        )


def test_a_pile_of_children_is_counted_whole_and_their_states_read_a_bounded_few_a_pass(
    tmp_path,
):
    """A zombie leak must not make the children's pass (and so its spacing) grow with it: every
    child is counted each pass, at most CHILD_STATS_PER_PASS states are read, the unread count
    as ``unknown`` and are read first next time, and a reaped child drops out."""
    proc = make_tree(tmp_path)
    children = list(range(5000, 5000 + 150))
    (proc / "4242" / "task" / "4242" / "children").write_text(" ".join(map(str, children)))
    for pid in children:
        (proc / str(pid)).mkdir()
        (proc / str(pid) / "stat").write_bytes(b"%d (worker) Z 4242 1 1" % pid)
    probe = ResourceProbe(4242, proc_root=str(proc), shm_path=str(tmp_path / "shm"))
    per_pass = resources.CHILD_STATS_PER_PASS
    assert per_pass < len(children)
    opened = []
    real_open = open

    def counting(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    for passes in (1, 2, 3):
        opened.clear()
        resources.open = counting  # the module's open: the stats it reads
        try:
            probe._refresh_children()
        finally:
            del resources.open
        assert sum(path.endswith("/stat") for path in opened) == per_pass
        read = min(passes * per_pass, len(children))
        assert probe._children == {
            "running": 0, "sleeping": 0, "zombie": read, **({"unknown": len(children) - read}
                                                            if read < len(children) else {}),
        }  # fmt: skip
    # Reaped: gone from the children file, gone from the count, before its stat is read again.
    (proc / "4242" / "task" / "4242" / "children").write_text(" ".join(map(str, children[10:])))
    probe._refresh_children()
    assert sum(probe._children.values()) == len(children) - 10
    probe.close()


def test_the_tightest_pids_cgroup_limits_the_threads(tmp_path):
    proc = make_tree(tmp_path)
    me = proc / "4242"
    (me / "cgroup").write_text("12:pids:/app/worker\n0::/\n")
    (me / "mountinfo").write_text(
        "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
    )
    pids = tmp_path / "sys" / "fs" / "cgroup" / "pids"
    (pids / "app" / "worker").mkdir(parents=True)
    (pids / "app" / "pids.max").write_text("512\n")
    (pids / "app" / "worker" / "pids.max").write_text("max\n")
    probe = ResourceProbe(4242, proc_root=str(proc), fs_root=str(tmp_path), shm_path=str(tmp_path))
    got = by_key(probe.sample())
    assert got[("resource_limit", labels_of(resource="threads"))] == 512


def test_another_users_process_says_permission_denied_once(tmp_path, monkeypatch):
    """Tests run as root, which mode bits do not stop: the kernel's EACCES is injected for the
    fd directory, as /proc answers a non-root reader of another user's process."""
    proc = make_tree(tmp_path)
    fd_dir = f"{proc}/4242/fd"
    real_stat, real_open = os.stat, os.open

    def denied_stat(path, *args, **kwargs):
        if str(path) == fd_dir:
            raise PermissionError(13, "Permission denied", fd_dir)
        return real_stat(path, *args, **kwargs)

    def denied_open(path, *args, **kwargs):
        if str(path) == fd_dir:
            raise PermissionError(13, "Permission denied", fd_dir)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(resources.os, "stat", denied_stat)
    monkeypatch.setattr(resources.os, "open", denied_open)
    probe = ResourceProbe(4242, proc_root=str(proc), shm_path=str(tmp_path))
    for _ in range(2):
        got = by_key(probe.sample())
    assert ("resource_usage", labels_of(resource="fds")) not in got
    assert not any(name == "open_fds" for name, _ in got)
    assert got[("resource_usage", labels_of(resource="threads"))] == 7  # the rest goes on
    assert probe.notes == (
        f"fds: permission denied reading {fd_dir}: run as the process's user or root",
    )


def test_fds_whose_links_cannot_be_read_are_still_counted(tmp_path, monkeypatch):
    """The fd directory lists, but some links are not ours to read (ptrace access: a
    sandbox's init reads so even to root). They were skipped as if closed meanwhile, and a
    process with 274 open fds read as 0. Tests run as root, which links do not refuse: the
    kernel's EACCES is injected for three of them."""
    proc = make_tree(tmp_path)
    fd_dir = f"{proc}/4242/fd"
    real_readlink = os.readlink

    def denied(path, *args, dir_fd=None, **kwargs):
        if path in ("3", "4", "7"):  # three of the sockets
            raise PermissionError(13, "Permission denied", path)
        return real_readlink(path, *args, dir_fd=dir_fd, **kwargs)

    monkeypatch.setattr(resources.os, "readlink", denied)
    probe = ResourceProbe(4242, proc_root=str(proc), shm_path=str(tmp_path / "shm"))
    got = by_key(probe.sample())
    assert got[("resource_usage", labels_of(resource="fds"))] == 10
    kind = {k: got[("open_fds", labels_of(kind=k))] for k in resources.FD_KINDS}
    assert kind == {"file": 1, "socket": 2, "pipe": 1, "anon": 1, "device": 1, "other": 1}
    assert (
        f"fd links: 3 of the 10 fds in {fd_dir} cannot be read (permission denied: run as the "
        "process's user, or with ptrace access): counted, their kinds unknown"
    ) in probe.notes
    probe.close()


def test_a_proc_that_hides_fds_says_so_in_one_line(tmp_path):
    proc = make_tree(tmp_path, fds={})
    os.rmdir(proc / "4242" / "fd")
    probe = ResourceProbe(4242, proc_root=str(proc), shm_path=str(tmp_path))
    got = by_key(probe.sample())
    assert ("resource_usage", labels_of(resource="fds")) not in got
    assert probe.notes == (
        f"fds: {proc}/4242/fd is not shown by this /proc (hidepid, or a sandbox)",
    )


def test_a_pid_that_is_gone_is_one_clear_reason(tmp_path):
    proc = make_tree(tmp_path)
    probe = ResourceProbe(999999, proc_root=str(proc))
    with pytest.raises(ProbeUnavailable, match="no such process: 999999") as caught:
        probe.sample()
    assert caught.value.permanent


def test_inside_the_process_python_threads_and_the_real_kernel_count(tmp_path):
    probe = ResourceProbe(shm_path=str(tmp_path))
    probe.sample()  # the first opens the directories the probe holds (counted from then on)
    got = by_key(probe.sample())
    assert got[("threads", labels_of(kind="python"))] >= 1
    assert got[("threads", labels_of(kind="os"))] >= 1
    fds = got[("resource_usage", labels_of(resource="fds"))]
    assert abs(fds - len(os.listdir("/proc/self/fd"))) <= 2
    assert got[("resource_limit", labels_of(resource="fds"))] > 0
    probe.close()


def test_asyncio_tasks_are_counted_by_coroutine_inside_only_when_asyncio_is_loaded(tmp_path):
    async def stuck(event: asyncio.Event) -> None:
        await event.wait()

    async def main() -> dict:
        event = asyncio.Event()
        tasks = [asyncio.create_task(stuck(event)) for _ in range(3)]
        await asyncio.sleep(0)
        got = by_key(ResourceProbe(shm_path=str(tmp_path), top=1).sample())
        event.set()
        await asyncio.gather(*tasks)
        return got

    got = asyncio.run(main())
    name = "test_asyncio_tasks_are_counted_by_coroutine_inside_only_when_asyncio_is_loaded"
    assert got[("asyncio_tasks", labels_of(coroutine=f"{name}.<locals>.stuck"))] == 3
    assert got[("asyncio_tasks", labels_of(coroutine="other"))] == 1  # main() itself
    assert got[("resource_usage", labels_of(resource="asyncio_tasks"))] == 4


def test_asyncio_is_never_imported_by_the_probe(monkeypatch, tmp_path):
    monkeypatch.delitem(__import__("sys").modules, "asyncio.tasks")
    got = by_key(ResourceProbe(shm_path=str(tmp_path)).sample())
    assert ("resource_usage", labels_of(resource="asyncio_tasks")) not in got
    assert "asyncio.tasks" not in __import__("sys").modules


def test_coroutine_names():
    class Task:
        def __init__(self, coro):
            self._coro = coro

        def get_coro(self):
            return self._coro

    async def handler():
        pass

    coro = handler()
    assert coroutine_name(Task(coro)).endswith("test_coroutine_names.<locals>.handler")
    coro.close()
    assert coroutine_name(Task(None)) == "other"


def test_expensive_readings_are_spaced_by_their_budget(tmp_path):
    """A pass that cost more than the per-tick budget waits cost/budget ticks' worth of time."""
    proc = make_tree(tmp_path)
    now = [0.0]

    def monotonic() -> float:  # each reading of the clock takes a millisecond
        now[0] += 0.001
        return now[0]

    probe = ResourceProbe(
        4242, proc_root=str(proc), shm_path=str(tmp_path), interval=1.0,
        tick_budget=1e-6, monotonic=monotonic,
    )  # fmt: skip
    probe.sample()
    os.symlink("/var/log/other.log", proc / "4242" / "fd" / "10")
    now[0] += 5.0
    got = by_key(probe.sample())
    assert got[("open_fds", labels_of(kind="file"))] == 1  # the first pass, repeated
    generous = ResourceProbe(4242, proc_root=str(proc), shm_path=str(tmp_path), tick_budget=1.0)
    assert by_key(generous.sample())[("open_fds", labels_of(kind="file"))] == 2


# -- the detector on resource series -----------------------------------------------------------


def run_analyzer(values: list[float], limit: float, every: float = 30.0) -> tuple[list, dict]:
    analyzer = GrowthAnalyzer()
    clock = FakeClock(0.0)
    fds = labels_of(resource="fds")
    out: list[Sample] = []
    for value in values:
        out = analyzer.analyze(
            clock(), [Sample("resource_usage", value, fds), Sample("resource_limit", limit, fds)]
        )
        clock.advance(every)
    return out, analyzer.verdicts


def test_a_leaking_resource_is_judged_against_its_limit_with_a_time_to_exhaustion():
    # 2 fds a minute for 3 h, against RLIMIT_NOFILE 1024: about 4.7 h left at the end.
    values = [100 + i for i in range(360)]
    out, verdicts = run_analyzer(values, 1024.0)
    verdict = verdicts["resource_usage{resource=fds}"]
    assert verdict.state == "leak", verdict
    names = {s.name: s for s in out}
    assert set(names) == {
        "leak_suspected",
        "growth_per_second",
        "seconds_to_exhaustion",
        "seconds_to_exhaustion_low",
        "seconds_to_exhaustion_high",
    }
    assert names["leak_suspected"].value == 1.0
    assert names["leak_suspected"].labels == (("resource", "fds"), ("series", "resource_usage"))
    assert names["growth_per_second"].value == pytest.approx(1 / 30, rel=0.05)
    true_left = (1024 - values[-1]) * 30
    assert names["seconds_to_exhaustion"].value == pytest.approx(true_left, rel=0.1)


def test_a_pool_that_opens_to_its_bound_and_stays_there_is_not_a_leak():
    # A connection pool filling to 200 over its first 20 minutes, then 3 h at its bound.
    values = [min(20 + i * 3, 200) + (i % 3) for i in range(400)]
    _, verdicts = run_analyzer(values, 1024.0)
    assert verdicts["resource_usage{resource=fds}"].state != "leak"


def test_memory_verdicts_keep_their_names():
    analyzer = GrowthAnalyzer()
    out = analyzer.analyze(0.0, [Sample("process_resident_memory_bytes", 1e9)])
    assert {s.name for s in out} == {"leak_suspected", "growth_bytes_per_second"}


# -- the every-tick readings: held directories, samples repeated while nothing moves -------------


def test_every_tick_readings_follow_opened_fds_and_started_threads(tmp_path):
    import threading

    probe = ResourceProbe(shm_path=str(tmp_path), tick_budget=1.0)  # passes on every tick
    probe.sample()  # the first opens the files the probe keeps open (one more fd after it)
    first = probe.sample()
    assert by_key(probe.sample()) == by_key(first)  # nothing moved: the same readings
    release = threading.Event()
    worker = threading.Thread(target=release.wait, name="held")
    worker.start()
    files = [open(os.devnull, "rb") for _ in range(5)]  # noqa: SIM115
    try:
        got = by_key(probe.sample())
        before = by_key(first)
        for kind in ("os", "python"):
            key = ("threads", labels_of(kind=kind))
            assert got[key] == before[key] + 1
        fds = ("resource_usage", labels_of(resource="fds"))
        assert got[fds] == before[fds] + 5
        assert got[("open_fds", labels_of(kind="device"))] >= 5  # the breakdown's pass too
    finally:
        release.set()
        worker.join()
        for f in files:
            f.close()
    # All closed and ended: back as they were. The kernel thread outlives join() by a moment
    # (join waits for Python's part of the thread), so its end is waited for, briefly.
    keys = (("threads", labels_of(kind="os")), fds)
    before = by_key(first)
    deadline = time.monotonic() + 5.0
    while True:
        after = by_key(probe.sample())
        if all(after[key] == before[key] for key in keys) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    for key in keys:
        assert after[key] == before[key]
    probe.close()
    assert probe._held == {}


def test_the_quick_way_follows_what_the_long_way_reads():
    """Between passes a tick reads three held descriptors (``_quick_readings``) and hands the
    last samples out again when they are unchanged: fds opened, a thread started and shared
    memory written must still show on the very next tick, as the long way reads them."""
    import threading

    # Each reading of this clock is 1 ms on: every pass seems to take 1 ms, so its budget
    # spaces the next one minutes away, far beyond this test.
    clock = itertools.count(step=0.001)
    probe = ResourceProbe(monotonic=lambda: next(clock))  # the real /dev/shm: tmpfs counts
    probe.sample()
    probe.sample()
    assert probe._quick_readings() is not None  # no pass due
    first = by_key(probe.sample())
    long_way = probe._sample
    assert by_key(long_way()) == first
    release = threading.Event()
    worker = threading.Thread(target=release.wait, name="held")
    files = [open(os.devnull, "rb") for _ in range(5)]  # noqa: SIM115
    shm = f"/dev/shm/diag-test-{os.getpid()}"
    try:
        worker.start()
        with open(shm, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, 1 << 20)
        got = by_key(probe.sample())
        assert got == by_key(long_way())
        for kind in ("os", "python"):
            key = ("threads", labels_of(kind=kind))
            assert got[key] == first[key] + 1
        fds = ("resource_usage", labels_of(resource="fds"))
        assert got[fds] == first[fds] + 5
        assert got[("shm_bytes", ())] >= first[("shm_bytes", ())] + (1 << 19)
        assert probe._quick_readings() is not None  # and the quick way again from here
    finally:
        release.set()
        worker.join()
        for f in files:
            f.close()
        os.unlink(shm)
    probe.close()
    assert probe._quick is None  # closed: nothing read through closed descriptors


def test_after_fork_the_held_directories_are_reopened(tmp_path, monkeypatch):
    """The fd, task and shm directories are held open, and /proc/self resolved at open names the
    parent: a child (a new pid) reopens them before reading, even before the sampler's
    reset_after_fork has run."""
    probe = ResourceProbe(shm_path=str(tmp_path))
    probe.sample()
    held = dict(probe._held)
    assert set(held) == {"/proc/self/fd", "/proc/self/task", str(tmp_path)}  # tmp_path: shm
    parent = os.getpid()
    monkeypatch.setattr(resources.os, "getpid", lambda: parent + 1)  # as in a forked child
    got = by_key(probe.sample())
    assert got[("threads", labels_of(kind="os"))] >= 1
    assert probe._held_pid == parent + 1
    for fd in held.values():  # the parent's were closed (the new ones may reuse numbers)
        assert fd in probe._held.values() or not os.path.exists(f"/proc/self/fd/{fd}")
    probe.close()
    assert probe._held == {}


def test_a_watched_process_that_is_gone_is_said_to_have_exited(tmp_path):
    """Its task directory, held open, counts no thread once the process is gone: the path
    is asked again, and its absence says the process has exited."""
    proc = make_tree(tmp_path)
    me = proc / "4242"
    (me / "status").write_bytes(STATUS.replace(b"Threads:\t7", b"Threads:\t1"))
    probe = ResourceProbe(4242, proc_root=str(proc), shm_path=str(tmp_path))
    assert by_key(probe.sample())[("threads", labels_of(kind="os"))] == 1  # by the link count
    assert probe._nlink_trusted and f"{me}/task" in probe._held
    import shutil

    shutil.rmtree(me)
    with pytest.raises(ProbeUnavailable, match="process 4242 has exited") as caught:
        probe.sample()
    assert caught.value.permanent
    probe.close()
