"""Shared test helpers: external tools, free ports, polling of things that cannot signal us;
and the guard that keeps the fast tier (``pytest -m "not e2e"``) free of processes."""

from __future__ import annotations

import _posixsubprocess
import contextlib
import mmap
import os
import select
import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
PYTHON = sys.executable
DIAG = [PYTHON, "-m", "diag"]

pytest_plugins = ["pytester"]  # tests/test_tiers.py runs the guard below on tests of its own

T = TypeVar("T")


def require_tool(name: str) -> str:
    """The path of an external tool. `make test` installs them and sets DIAG_REQUIRE_TOOLS=1,
    so there a missing tool fails the test instead of skipping it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (run `make test`, which installs it)"
        if os.environ.get("DIAG_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(check: Callable[[], T | None], timeout: float = 30.0, every: float = 0.1) -> T:
    """For external processes (Prometheus, a server starting) that cannot signal readiness:
    call ``check`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None  # what the last call returned or raised, for the failure message
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as exc:  # a server not up yet, a scrape not done yet
            last = exc
        else:
            if result:
                return result
            last = result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {check}; last: {last!r}")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: this interpreter's diag importable, no stray DIAG_*."""
    # Keep DIAG_HISTORY (a temporary directory in tests), drop every other DIAG_* setting.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIAG_") or k == "DIAG_HISTORY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


# -- child processes that print a line when they are ready -----------------------------------


@contextlib.contextmanager
def spawned(argv: Sequence[str], log: Path, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A child process with stdout piped (unbuffered) and stderr to ``log``; always ended:
    terminated, then killed, and reaped, whatever the test did."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, bufsize=0, **kwargs)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def read_line(proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> str:
    """The child's first line of stdout: it prints it once it is ready (a signal, not a poll)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no line from the child in {timeout} s; stderr:\n{log_of(log)}")
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(
                    f"the child exited ({proc.wait(10)}) before it was ready; "
                    f"stderr:\n{log_of(log)}"
                )
            data += chunk
    return data.split(b"\n", 1)[0].decode()


def log_of(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"


@contextlib.contextmanager
def child_cgroup(
    controller: str, settings: dict[str, str], name: str = ""
) -> Iterator[Callable[[], None]]:
    """A child cgroup v1 of ours under ``controller`` (memory, pids) with ``settings`` written
    into its files; yields a ``preexec_fn`` that moves a child process into it. Needs root:
    elsewhere the test skips, and under ``make test`` (DIAG_REQUIRE_TOOLS=1) it fails."""
    with open("/proc/self/cgroup") as f:
        path = next(
            (line.split(":", 2)[2].strip() for line in f if f":{controller}:" in line), None
        )
    cgroup = f"/sys/fs/cgroup/{controller}{path}/diag-test-{os.getpid()}{name}" if path else None
    try:
        os.mkdir(cgroup)  # type: ignore[arg-type]
    except (OSError, TypeError) as exc:
        message = f"cannot create a {controller} cgroup here ({exc}); needs root and cgroup v1"
        if os.environ.get("DIAG_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    assert cgroup is not None
    try:
        for file, value in settings.items():
            with open(f"{cgroup}/{file}", "w") as f:
                f.write(value)

        def join() -> None:
            with open(f"{cgroup}/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

        yield join
    finally:
        os.rmdir(cgroup)


def memory_cgroup(
    limit: int, name: str = ""
) -> contextlib.AbstractContextManager[Callable[[], None]]:
    """A memory cgroup with ``limit``, for real OOM kills (see ``child_cgroup``)."""
    return child_cgroup("memory", {"memory.limit_in_bytes": str(limit)}, name)


@contextlib.contextmanager
def small_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real filesystem of ``size`` (a full disk within reach) at ``mount``; needs root, so
    it skips elsewhere, and fails under ``make test`` (DIAG_REQUIRE_TOOLS=1) as a missing tool
    does."""
    mount.mkdir(exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        message = f"cannot mount a tmpfs here ({result.stderr.strip()}); needs root"
        if os.environ.get("DIAG_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture(autouse=True)
def _history_in_tmp(tmp_path_factory, monkeypatch):
    """Agents record a history by default; in tests it goes to a temporary directory."""
    monkeypatch.setenv("DIAG_HISTORY", str(tmp_path_factory.mktemp("history")))


def scrape(url: str, timeout: float = 2.0) -> dict[str, float]:
    """``{"name{labels}": value}`` for every sample at a /metrics URL."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            inner = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{inner}}}" if inner else s.name] = s.value
    return out


# -- the fast tier: a test not marked e2e starts no process -----------------------------------
#
# `pytest -m "not e2e"` (`make test-fast`) must start no process, so a test that starts one must
# say so with @pytest.mark.e2e. An audit hook sees every process start of this interpreter; it
# cannot be removed, so it acts only while `_Guard.where` names something that may start none:
# a test not marked e2e (its setup, call and teardown) or the import of a test module (shared
# by both tiers). It raises at the moment of the start, before any process exists, and records
# it, so a test that swallows the exception (the agent never lets one reach the host) fails too.

#: CPython's audit events raised before a process starts (os.spawn* and pty go through os.fork,
#: os.forkpty or os.exec; os.posix_spawnp raises "os.posix_spawn").
_PROCESS_EVENTS = frozenset(
    {
        "subprocess.Popen",
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.spawn",
        "os.exec",
        "os.system",
        "os.startfile",
        "_posixsubprocess.fork_exec",  # ours, below
    }
)


class StartsAProcess(Exception):
    """Raised into a test not marked e2e when it starts a process."""


class _Guard:
    where: ClassVar[str | None] = None  # what is running now that must start no process
    caught: ClassVar[list[str]] = []  # the starts it refused


def _no_process_here(event: str, args: tuple[Any, ...]) -> None:
    if event not in _PROCESS_EVENTS or _Guard.where is None:
        return
    what = args[1] if event == "subprocess.Popen" else args[:2]  # the command line
    start = f"{event} {str(what)[:200]}" if what else event
    message = (
        f"{_Guard.where} starts a process ({start}): mark it @pytest.mark.e2e; "
        f"`pytest -m 'not e2e'` (make test-fast) starts none"
    )
    stack = "".join(traceback.format_stack(limit=8)[:-1])
    _Guard.caught.append(f"{message}\nat:\n{stack}")
    raise StartsAProcess(message)


sys.addaudithook(_no_process_here)

# multiprocessing's "spawn" and "forkserver" start their processes (and its resource tracker)
# with _posixsubprocess.fork_exec, which raises no audit event in CPython 3.11: give it one.
# (subprocess holds its own reference, and audits "subprocess.Popen" itself.)
_fork_exec = _posixsubprocess.fork_exec


def _audited_fork_exec(*args: Any) -> int:
    sys.audit("_posixsubprocess.fork_exec", args[0], args[1])
    return int(_fork_exec(*args))


_posixsubprocess.fork_exec = _audited_fork_exec


def _guarded(where: str | None) -> Generator[None, Any, tuple[Any, list[str]]]:
    """A hook wrapper's body: guards with ``where`` (None: anything goes) while the wrapped
    hook runs; returns its result and the process starts refused meanwhile."""
    outer = (_Guard.where, _Guard.caught)  # a pytester run inside a test nests
    _Guard.where, _Guard.caught = where, []
    try:
        result = yield
    except BaseException:
        if not _Guard.caught:
            raise
        result = None  # fail with the start refused, not with what it led to
    finally:
        caught = _Guard.caught
        _Guard.where, _Guard.caught = outer
    return result, caught


def _test_phase(item: pytest.Item) -> Generator[None, Any, Any]:
    where = None if item.get_closest_marker("e2e") else f"{item.nodeid} (not marked e2e)"
    result, caught = yield from _guarded(where)
    if caught:
        pytest.fail("\n".join(caught), pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _test_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _test_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _test_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Importing a test module (it happens while collecting it) starts no process either."""
    where = f"importing {collector.nodeid}" if isinstance(collector, pytest.Module) else None
    report, caught = yield from _guarded(where)
    if caught and report is not None:
        report.outcome = "failed"
        report.longrepr = "\n".join(caught)
    return report


def resident_block(size: int) -> mmap.mmap:
    """``size`` bytes of fresh memory, every page written: RSS grows by ``size`` at once, and
    falls by it at ``close()``. A ``bytes`` of that size would come from malloc, which may hand
    back memory the process already holds (freed by an earlier test, never returned), and then
    RSS does not move (seen once in a full run: a 64 MiB ``bytes`` left RSS at 536629248)."""
    block = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 1
    return block
