"""Multi-worker servers under ``diag run``: one /metrics port, every worker in it by slot.

Real processes only: gunicorn with forked sync workers, a bare ``os.fork``, and uvicorn with
spawned workers. Every process group is started in its own session and killed at the end.
Which process holds which slot is read from the kernel (``/proc/locks``: who took the flock on
each ``slot-N.lock``), never from the agent's own account of itself.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import APPS, DIAG, PYTHON, REPO, child_env, free_port, poll, scrape

RSS = "diag_process_resident_memory_bytes"
_WORKER_LABEL = re.compile(r"[{,]worker=([^,}]*)")
_SLOT_LOCK = re.compile(r"slot-(\d+)\.lock")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="worker slots are flocks read from /proc/locks"
)


# -- helpers -------------------------------------------------------------------------------


def two_free_ports() -> tuple[int, int]:
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


def worker_labels(metrics: dict[str, float]) -> set[str]:
    return {m.group(1) for key in metrics if (m := _WORKER_LABEL.search(key))}


class Scraper:
    """Scrapes one /metrics URL and remembers every ``worker`` label it ever saw."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, float]:
        metrics = scrape(self.url)
        labels = worker_labels(metrics)
        with self._lock:
            self.seen |= labels
        return metrics

    def until(
        self, condition: Callable[[dict[str, float]], bool], timeout: float = 20.0
    ) -> dict[str, float]:
        def check() -> dict[str, float] | None:
            metrics = self()
            return metrics if condition(metrics) else None

        return poll(check, timeout=timeout)


def has_rss(*workers: str, master: bool = True) -> Callable[[dict[str, float]], bool]:
    wanted = [f"{RSS}{{worker={w}}}" for w in workers] + ([RSS] if master else [])
    return lambda metrics: all(key in metrics for key in wanted)


def slot_locks(directory: Path) -> dict[int, int]:
    """{slot: pid} from the kernel: which process took the flock on each ``slot-N.lock``.

    An flock belongs to an open file description, so a copy inherited at fork keeps it, and
    /proc/locks still names the process that took it."""
    slots: dict[tuple[int, int, int], int] = {}
    for path in directory.glob("slot-*.lock"):
        m = _SLOT_LOCK.fullmatch(path.name)
        if m is None:
            continue
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            slots[(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)] = int(m.group(1))
    out: dict[int, int] = {}
    for line in Path("/proc/locks").read_text().splitlines():
        # "1: FLOCK  ADVISORY  WRITE 4825 fe:00:2147185 0 EOF"; waiters say "1: -> FLOCK ..."
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        major, minor, inode = fields[5].split(":")
        slot = slots.get((int(major, 16), int(minor, 16), int(inode)))
        if slot is not None:
            out[slot] = int(fields[4])
    return out


def holds_no_slot(directory: Path, pid: int) -> bool:
    return pid not in slot_locks(directory).values()


def children(pid: int) -> set[int]:
    return {child.pid for child in psutil.Process(pid).children()}


def exactly(pids: set[int], count: int) -> set[int] | None:
    return pids if len(pids) == count else None


def locked_by(directory: Path, workers: set[int]) -> dict[int, int] | None:
    """The slot locks once every one of ``workers`` (and at least one process) holds one."""
    locks = slot_locks(directory)
    return locks if workers and workers <= set(locks.values()) else None


def lock_files(pids: Iterable[int]) -> dict[int, list[str]]:
    """Every slot lock each process has open, inherited copies included."""
    out: dict[int, list[str]] = {}
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            out[pid] = [
                f"fd {f.fd}: {os.path.basename(f.path)}"
                for f in psutil.Process(pid).open_files()
                if _SLOT_LOCK.fullmatch(os.path.basename(f.path))
            ]
    return out


def describe(pids: Iterable[int]) -> str:
    out = []
    for pid in pids:
        try:
            out.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline())}")
        except psutil.NoSuchProcess:
            out.append(f"{pid}: (gone)")
    return "; ".join(out)


def listens_on(pid: int, port: int) -> bool:
    return any(
        c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
        for c in psutil.Process(pid).net_connections(kind="inet")
    )


def holds_socket_on(pid: int, port: int) -> bool:
    return any(
        c.laddr and c.laddr.port == port for c in psutil.Process(pid).net_connections(kind="inet")
    )


def worker_directory(tmp_path: Path, master_pid: int) -> Path:
    """The master's private worker directory: children get TMPDIR=tmp_path."""
    found = list(tmp_path.glob(f"diag-workers-{master_pid}-*"))
    assert len(found) == 1, f"expected one worker directory for {master_pid}, found {found}"
    assert found[0].stat().st_mode & 0o777 == 0o700
    return found[0]


def published_pid(directory: Path, slot: int) -> int | None:
    try:
        return int(json.loads((directory / f"slot-{slot}.json").read_text())["pid"])
    except (FileNotFoundError, ValueError):
        return None


def http_get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


@contextlib.contextmanager
def started(command: list[str], tmp_path: Path, *, stdout: int | None = None) -> Iterator[Any]:
    """Start ``command`` in its own session from the repo root; kill its whole group at the end.

    Its stderr (and stdout unless ``stdout`` is given) goes to a log printed when the test fails.
    """
    log_path = tmp_path / "server.log"
    env = child_env(TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log if stdout is None else stdout,
            stderr=log,
            start_new_session=True,
        )
        try:
            yield proc
        except BaseException:
            print(f"--- {' '.join(command)} (pid {proc.pid}) ---")
            print(log_path.read_text(errors="replace"))
            raise
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


class Lines:
    """JSON lines from a child's stdout pipe, each awaited for a bounded time."""

    def __init__(self, stream: Any) -> None:
        self._fd = stream.fileno()
        self._buffer = b""

    def next(self, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line within {timeout} s; so far {self._buffer!r}")
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if ready:
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    raise AssertionError(f"the process closed its output; so far {self._buffer!r}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return dict(json.loads(line))


def no_control_socket() -> list[str]:
    """gunicorn >= 25.1 opens a control socket in $HOME by default: keep tests apart from it."""
    import gunicorn.config

    return ["--no-control-socket"] if hasattr(gunicorn.config, "ControlSocketDisable") else []


# -- gunicorn: forked workers ------------------------------------------------------------------


def gunicorn_command(port: int, app_port: int, workers: int = 2) -> list[str]:
    pytest.importorskip("gunicorn")
    return [
        *DIAG, "run", "--port", str(port), "--interval", "0.2", "--",
        PYTHON, "-m", "gunicorn", "-w", str(workers), "--bind", f"127.0.0.1:{app_port}",
        "--chdir", str(REPO), *no_control_socket(), "tests.apps.workers_wsgi:app",
    ]  # fmt: skip


@pytest.mark.e2e
def test_gunicorn_workers_are_exported_by_slot_and_a_killed_worker_is_replaced_in_it(tmp_path):
    port, app_port = two_free_ports()
    metrics = Scraper(port)
    with started(gunicorn_command(port, app_port), tmp_path) as master:
        metrics.until(has_rss("0", "1"))
        directory = worker_directory(tmp_path, master.pid)  # diag run exec'd: same pid
        workers = poll(lambda: exactly(children(master.pid), 2))
        before = poll(lambda: locked_by(directory, workers))
        assert before.keys() == {0, 1} and set(before.values()) == workers, before

        # One listener: the master's. The workers closed their copy of its socket at fork.
        assert listens_on(master.pid, port)
        for pid in workers:
            assert not holds_socket_on(pid, port), f"worker {pid} holds the /metrics socket"

        victim = int(poll(lambda: http_get(app_port)))
        (slot,) = (s for s, pid in before.items() if pid == victim)
        os.kill(victim, signal.SIGKILL)

        def replaced() -> dict[int, int] | None:
            now = children(master.pid) - {victim}
            return locked_by(directory, now) if len(now) == 2 else None

        after = poll(replaced)
        assert after.keys() == {0, 1}, f"slot locks {after}, workers {describe(after.values())}"
        assert after[1 - slot] == before[1 - slot]
        newcomer = after[slot]  # gunicorn's replacement took the slot the victim freed
        assert newcomer not in before.values()
        # The series under the reused slot are now the newcomer's.
        poll(lambda: published_pid(directory, slot) == newcomer)
        metrics.until(has_rss("0", "1"))
        assert metrics.seen == {"0", "1"}, "the worker label must stay bounded by -w"

        master.send_signal(signal.SIGTERM)
        assert master.wait(20) == 0
        assert not directory.exists(), "the master left its worker directory behind"
        assert not any(psutil.pid_exists(pid) for pid in after.values()), describe(after.values())


@pytest.mark.e2e
def test_gunicorn_worker_label_stays_bounded_when_workers_die_during_scrapes(tmp_path):
    """Workers SIGKILLed one after the other while /metrics is scraped without pause: the
    master's check of a dead slot then runs while gunicorn forks the replacement, which must
    still get a slot in {0, 1}. (A race, so this is a loop: it reproduced in a few dozen kills.)"""
    port, app_port = two_free_ports()
    metrics = Scraper(port)
    stop = threading.Event()
    failures: list[BaseException] = []

    def scrape_without_pause() -> None:
        while not stop.is_set():
            try:
                metrics()
            except OSError as exc:  # the master is gone: the main thread reports that
                failures.append(exc)
                return

    with started(gunicorn_command(port, app_port), tmp_path) as master:
        metrics.until(has_rss("0", "1"))
        directory = worker_directory(tmp_path, master.pid)
        scrapers = [threading.Thread(target=scrape_without_pause) for _ in range(4)]
        for thread in scrapers:
            thread.start()

        def both_workers_locked() -> tuple[set[int], dict[int, int]] | None:
            workers = children(master.pid)
            locks = locked_by(directory, workers) if len(workers) == 2 else None
            return (workers, locks) if locks else None

        try:
            deadline = time.monotonic() + 12
            kills, wrong = 0, ""
            while kills < 120 and time.monotonic() < deadline:
                workers, locks = poll(both_workers_locked, every=0.005)
                if locks.keys() != {0, 1} or not metrics.seen <= {"0", "1"}:
                    wrong = (
                        f"slot locks {locks} (master {master.pid}, workers {sorted(workers)});"
                        f" slot lock files open: {lock_files(workers)}"
                    )
                    break
                victim = locks[kills % 2]
                os.kill(victim, signal.SIGKILL)
                kills += 1
                poll(functools.partial(holds_no_slot, directory, victim), every=0.005)
        finally:
            stop.set()
            for thread in scrapers:
                thread.join(10)
        assert not failures, failures
        assert not wrong and metrics.seen == {"0", "1"}, (
            f"after {kills} kills the worker label took {sorted(metrics.seen)}; {wrong}"
        )


# -- a bare os.fork ----------------------------------------------------------------------------


def fork_command(port: int) -> list[str]:
    return [*DIAG, "run", "--port", str(port), "--interval", "0.2", "--",
            PYTHON, str(APPS / "workers_fork.py")]  # fmt: skip


def first_reports(lines: Lines) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parent's and the child's reports, in whichever order they came."""
    reports = {r["who"]: r for r in (lines.next(), lines.next())}
    return reports["parent"], reports["child"]


@pytest.mark.e2e
def test_a_forked_child_gets_its_own_sampler_and_publishes_without_serving(tmp_path):
    port = free_port()
    metrics = Scraper(port)
    with started(fork_command(port), tmp_path, stdout=subprocess.PIPE) as parent:
        lines = Lines(parent.stdout)
        mine, child = first_reports(lines)
        assert mine["pid"] == parent.pid
        assert child["pid"] == mine["child"]
        assert mine["threads"].count("diag-sampler") == 1, mine["threads"]
        assert child["threads"].count("diag-sampler") == 1, child["threads"]
        # Its own sampler and its own control socket, nothing inherited twice.
        assert sorted(child["threads"]) == ["MainThread", "diag-control", "diag-sampler"], child[
            "threads"
        ]
        assert (mine["role"], mine["port"]) == ("server", port)
        assert (child["role"], child["port"], child["slot"]) == ("worker", None, 0)

        scraped = metrics.until(has_rss("0"))
        assert metrics.seen == {"0"}
        assert scraped[f"{RSS}{{worker=0}}"] > 0
        directory = worker_directory(tmp_path, parent.pid)
        assert slot_locks(directory) == {0: child["pid"]}
        assert published_pid(directory, 0) == child["pid"]
        assert listens_on(parent.pid, port)
        assert not holds_socket_on(child["pid"], port), "the child kept the /metrics socket"

        # SIGKILL runs no exit handler: the kernel releases the slot's flock, and the next
        # scrape drops the child's series and its file.
        os.kill(child["pid"], signal.SIGKILL)
        assert lines.next()["child_status"] == signal.SIGKILL
        after = metrics.until(lambda m: not worker_labels(m))
        assert RSS in after, "the parent's own series went with the child's"
        assert not (directory / "slot-0.json").exists()

        parent.send_signal(signal.SIGTERM)
        assert parent.wait(15) == 0
        assert not directory.exists(), "the parent left its worker directory behind"


@pytest.mark.e2e
def test_a_forked_child_closes_its_copies_of_the_parents_probe_files(tmp_path):
    """The probes' files stay open between ticks; after fork the child reopens its own (its
    /proc/self and its cgroup may differ) and must close the copies it inherited."""
    port = free_port()
    with started(fork_command(port), tmp_path, stdout=subprocess.PIPE) as parent:
        _, child = first_reports(Lines(parent.stdout))
        directory = poll(lambda: list(tmp_path.glob(f"diag-workers-{parent.pid}-*")))[0]
        poll(lambda: published_pid(directory, 0) == child["pid"])  # the child has ticked
        files = [f for f in psutil.Process(child["pid"]).open_files() if f.fd > 2]
        paths = [f.path for f in files]
        twice = sorted({f"fd {f.fd}: {f.path}" for f in files if paths.count(f.path) > 1})
        assert not twice, f"the child holds these files twice: {twice}"


# -- uvicorn: spawned workers ------------------------------------------------------------------


@pytest.mark.e2e
def test_uvicorn_spawned_workers_are_the_only_slot_holders(tmp_path):
    pytest.importorskip("uvicorn")
    port, app_port = two_free_ports()
    command = [
        *DIAG, "run", "--port", str(port), "--interval", "0.2", "--",
        PYTHON, "-m", "uvicorn", "--workers", "2", "--host", "127.0.0.1",
        "--port", str(app_port), "--no-access-log", "tests.apps.workers_asgi:app",
    ]  # fmt: skip
    metrics = Scraper(port)
    with started(command, tmp_path) as master:

        def uvicorn_workers() -> set[int]:
            return {
                child.pid
                for child in psutil.Process(master.pid).children()
                if "spawn_main" in " ".join(child.cmdline())
            }

        directory = poll(lambda: list(tmp_path.glob(f"diag-workers-{master.pid}-*")))[0]

        def both_workers_locked() -> dict[int, int] | None:
            workers = exactly(uvicorn_workers(), 2)
            return locked_by(directory, workers) if workers else None

        locks = poll(both_workers_locked)
        for slot, pid in locks.items():

            def published(slot: int = slot, pid: int = pid) -> bool:
                return published_pid(directory, slot) == pid

            poll(published)
        metrics.until(has_rss("0", "1"))
        assert int(poll(lambda: http_get(app_port))) in uvicorn_workers()

        metrics()
        locks = slot_locks(directory)  # again: every process that has joined by now
        strays = set(locks.values()) - uvicorn_workers()
        assert not strays, f"processes that are not uvicorn workers hold slots: {describe(strays)}"
        assert locks.keys() == {0, 1}
        assert metrics.seen == {"0", "1"}, "the worker label must stay bounded by --workers"
        for pid in locks.values():
            assert not holds_socket_on(pid, port), f"worker {pid} holds the /metrics socket"

        master.send_signal(signal.SIGTERM)
        assert master.wait(20) == 0
        assert not directory.exists(), "the master left its worker directory behind"


@pytest.mark.e2e
def test_directories_of_dead_masters_are_removed(tmp_path, monkeypatch):
    import subprocess
    import sys

    from probes import workers

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    orphan = tmp_path / f"diag-workers-{dead.stdout.strip()}-abc123"
    orphan.mkdir()
    (orphan / "slot-0.json").write_text("{}")
    live = tmp_path / f"diag-workers-{os.getpid()}-def456"
    live.mkdir()
    monkeypatch.setattr(workers.tempfile, "tempdir", str(tmp_path))
    created = workers.create_worker_directory()
    assert not orphan.exists()
    assert live.exists()
    assert os.path.dirname(created) == str(tmp_path)
