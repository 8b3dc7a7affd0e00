"""A run that dies of a resource: the agent sees it (an unhandled EMFILE, a thread dying of one,
its own operations failing so) and ``diag report`` says so, with each resource's curve against
its limit, in counts. Fast tier: real hooks, real threads, real EMFILE under a lowered
RLIMIT_NOFILE in this process, histories written here. e2e: real children under ``diag run``."""

from __future__ import annotations

import errno
import json
import os
import resource
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from diag import watched
from diag.cli import main
from diag.control import private_directory
from diag.history import HistoryWriter, find_runs, read_run
from diag.model import Sample
from probes import exhaustion
from probes.control import ControlServer
from probes.endings import EndRecorder
from reports import html, markdown, postmortem, text

T0 = 1_700_000_000.0
EMFILE_MESSAGE = "[Errno 24] Too many open files"


@pytest.fixture(autouse=True)
def resource_rows(monkeypatch):
    """The catalogue's resource row as the detector's owner adds it (``resource_usage`` judged
    against ``resource_limit`` of the same labels, read by the report), where it is not yet."""
    if "resource_usage" in watched.BY_NAME:
        assert "report" in watched.BY_NAME["resource_usage"].readers
        return
    row = watched.Watched(
        "resource_usage", "resource usage", "device", frozenset({"report"}), total="resource_limit"
    )
    monkeypatch.setattr(watched, "CATALOGUE", (*watched.CATALOGUE, row))
    monkeypatch.setitem(watched.BY_NAME, "resource_usage", row)


class Calls:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self.seen = threading.Event()

    def record(self, kind, **fields):
        self.events.append((kind, fields))
        self.seen.set()

    def end(self, reason, **fields):
        self.events.append(("stop", {"reason": reason, **fields}))

    def of(self, kind):
        return [fields for k, fields in self.events if k == kind]


@pytest.fixture
def endings():
    calls = Calls()
    recorder = EndRecorder(calls.record, calls.end)
    yield recorder, calls
    recorder.uninstall()
    assert sys.excepthook != recorder._excepthook
    assert threading.excepthook != recorder._threading_excepthook
    assert exhaustion.active() is None


def _raised(exc: BaseException, function=None) -> BaseException:
    """``exc`` with a real traceback, raised from ``function`` (named as a fork or an mmap)."""
    try:
        if function is not None:
            function(exc)
        raise exc
    except BaseException as caught:
        return caught


def fork(exc):
    raise exc


def mmap(exc):
    raise exc


def _too_many_files() -> OSError:
    """A real EMFILE: this process's descriptor limit lowered to what it has open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
    try:
        open(os.devnull, "rb").close()
    except OSError as exc:
        return exc
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    raise AssertionError("open() did not run out of descriptors")


# -- which exceptions say a resource ran out ------------------------------------------------


def test_each_way_of_running_out_is_told_apart():
    real = _too_many_files()
    assert real.errno == errno.EMFILE
    assert exhaustion.classify(real) == ("fds", "EMFILE")
    assert exhaustion.classify(OSError(errno.ENFILE, "Too many open files in system")) == (
        "fds", "ENFILE",
    )  # fmt: skip
    assert exhaustion.classify(RuntimeError("can't start new thread")) == (
        "threads", "can't start new thread",
    )  # fmt: skip
    eagain = OSError(errno.EAGAIN, "Resource temporarily unavailable")
    assert exhaustion.classify(_raised(eagain, fork)) == ("children", "EAGAIN")
    enomem = OSError(errno.ENOMEM, "Cannot allocate memory")
    assert exhaustion.classify(_raised(enomem, mmap)) == ("memory_maps", "ENOMEM")
    # Not a resource running out: a non-blocking socket's EAGAIN, other errors, other kinds.
    assert exhaustion.classify(_raised(BlockingIOError(errno.EAGAIN, "try again"))) is None
    assert exhaustion.classify(OSError(errno.ENOENT, "No such file")) is None
    assert exhaustion.classify(RuntimeError("boom")) is None
    assert exhaustion.classify(MemoryError()) is None


def test_events_are_bounded_to_a_few_a_minute_and_say_how_many_were_left_out():
    now = [0.0]
    written = []
    recorder = exhaustion.ExhaustionRecorder(
        lambda kind, **fields: written.append(fields), monotonic=lambda: now[0]
    )
    emfile = OSError(errno.EMFILE, "Too many open files")
    for _ in range(10):
        assert recorder.exception(emfile, how="agent", where="diag probe x")
    assert len(written) == exhaustion.MAX_EVENTS_PER_MINUTE
    assert recorder.exception(emfile, how="unhandled", force=True)  # the end is always written
    assert len(written) == exhaustion.MAX_EVENTS_PER_MINUTE + 1
    assert written[-1]["left_out_before"] == 10 - exhaustion.MAX_EVENTS_PER_MINUTE
    recorder.exception(emfile, how="agent", where="diag probe x")
    assert len(written) == exhaustion.MAX_EVENTS_PER_MINUTE + 1  # still within the minute
    now[0] = 61.0
    recorder.exception(emfile, how="agent", where="diag probe x")
    assert written[-1]["left_out_before"] == 1
    assert not recorder.exception(OSError(errno.ENOENT, "no"), how="agent")


# -- the hooks -------------------------------------------------------------------------------


def test_an_unhandled_emfile_writes_the_exception_and_the_resource(endings, monkeypatch):
    recorder, calls = endings
    printed = []
    monkeypatch.setattr(sys, "excepthook", lambda *args: printed.append(args))
    recorder.install(None)
    exc = _raised(_too_many_files())
    sys.excepthook(type(exc), exc, exc.__traceback__)
    assert printed and printed[0][1] is exc  # the host's hook still prints it
    assert calls.of("exception")[0]["message"].startswith(EMFILE_MESSAGE)
    (event,) = calls.of("resource-exhausted")
    assert event["resource"] == "fds" and event["error"] == "EMFILE"
    assert event["how"] == "unhandled" and event["message"].startswith(EMFILE_MESSAGE)
    assert "in _too_many_files" in event["where"]


def test_a_thread_dying_of_emfile_is_written_and_the_hook_chains(endings, monkeypatch):
    recorder, calls = endings
    printed = []
    monkeypatch.setattr(threading, "excepthook", lambda args: printed.append(args.exc_value))
    recorder.install(None)

    def serve() -> None:
        raise _too_many_files()

    worker = threading.Thread(target=serve, name="request-worker")
    worker.start()
    worker.join()
    assert len(printed) == 1 and printed[0].errno == errno.EMFILE
    (event,) = calls.of("resource-exhausted")
    assert event["how"] == "thread" and event["thread"] == "request-worker"
    assert any("in serve" in frame for frame in event["stack"])
    # A thread's other exceptions are the host's business: printed, not recorded.
    other = threading.Thread(target=lambda: 1 / 0)
    other.start()
    other.join()
    assert len(calls.of("resource-exhausted")) == 1 and len(printed) == 2


def test_a_probe_failing_with_emfile_is_written(endings):
    from probes.sampler import Sampler

    recorder, calls = endings
    recorder.install(None)

    class ProcReader:
        name = "proc"

        def sample(self):
            raise _too_many_files()

    sampler = Sampler([ProcReader()], interval=1.0, clock=lambda: T0)
    sampler.tick()
    (event,) = calls.of("resource-exhausted")
    assert event["how"] == "agent" and event["where"] == "diag probe proc"


def test_the_control_socket_out_of_descriptors_says_so_and_serves_again(
    endings, tmp_path, monkeypatch
):
    recorder, calls = endings
    recorder.install(None)
    monkeypatch.setattr("probes.control.ACCEPT_RETRY_SECONDS", 0.05)
    path = os.path.join(private_directory(str(tmp_path / "sock")), "1.sock")
    server = ControlServer(lambda message: {"pong": True}, path)
    server.start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    first, second = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
    try:
        first.settimeout(10)
        resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
        try:
            # An accept() already blocked holds the descriptor it will return: that one
            # connection is served, and the next accept() finds none free.
            first.connect(path)
            first.sendall(b'{"op": "ping"}\n')
            assert calls.seen.wait(10), "accept() did not fail"
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert json.loads(first.recv(4096)) == {"pong": True}
        assert _ping(second, path) == {"pong": True}  # served again once some are free
    finally:
        first.close()
        second.close()
        server.stop()
    event = calls.of("resource-exhausted")[0]
    assert event["where"] == "diag control socket accept" and event["error"] == "EMFILE"


def _ping(client: socket.socket, path: str) -> dict:
    client.settimeout(10)
    client.connect(path)
    client.sendall(b'{"op": "ping"}\n')
    return dict(json.loads(client.recv(4096)))


def test_the_history_writer_out_of_descriptors_writes_it_when_it_can(tmp_path):
    writer = HistoryWriter(str(tmp_path / "run"), flush_seconds=0.0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
    try:
        writer.write_event("start", T0, pid=1)  # the first segment cannot be opened
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert writer.stats.write_errors == 1
    writer.write_event("stop", T0 + 1, reason="exit")
    writer.close()
    (event,) = read_run(str(tmp_path / "run")).events_of("resource-exhausted")
    assert event["resource"] == "fds" and event["error"] == "EMFILE"
    assert event["where"] == "diag history writer: opening a segment"


# -- the report ------------------------------------------------------------------------------


def fds_run(run_dir: Path, *, thread: bool = False, limit: float = 1024.0) -> None:
    """Descriptors climbing 40 -> 1,024 under a limit of 1,024 in two minutes, then an unhandled
    EMFILE ends the process (or, ``thread``: a worker thread dies of it, the process sheds its
    descriptors and exits cleanly). Threads stay flat at 12 of 30,000."""
    writer = HistoryWriter(str(run_dir), flush_seconds=0.0)
    writer.write_event("start", T0, pid=4245, command=["python", "server.py"])
    steps = 121
    for i in range(steps):
        fds = min(40 + i * 9, 1024.0)
        if thread and i == steps - 1:
            fds = 40.0
        writer.write_samples(T0 + i, [
            Sample("resource_usage", round(fds), (("resource", "fds"),)),
            Sample("resource_limit", limit, (("resource", "fds"),)),
            Sample("resource_usage", 12.0, (("resource", "threads"),)),
            Sample("resource_limit", 30000.0, (("resource", "threads"),)),
            Sample("process_resident_memory_bytes", 80e6 + i * 1e4),
        ])  # fmt: skip
    end = T0 + steps - 1
    stack = ["/srv/server.py:40 in main", "/srv/server.py:22 in accept_connections"]
    common = {"resource": "fds", "error": "EMFILE", "type": "builtins.OSError",
              "message": EMFILE_MESSAGE, "stack": stack,
              "where": "/srv/server.py:22 in accept_connections"}  # fmt: skip
    if thread:
        writer.write_event(
            "resource-exhausted", end - 1, how="thread", thread="request-worker", **common
        )
        writer.write_event("stop", end + 0.5, reason="exit")
    else:
        writer.write_event("exception", end + 0.2, type="builtins.OSError",
                           message=EMFILE_MESSAGE, stack=stack)  # fmt: skip
        writer.write_event("resource-exhausted", end + 0.2, how="unhandled", **common)
        writer.write_event("stop", end + 0.3, reason="exit")
    writer.close()


def _built(tmp_path: Path, **kwargs) -> postmortem.PostMortem:
    run_dir = tmp_path / "20231114T221320Z-4245"
    fds_run(run_dir, **kwargs)
    return postmortem.build(str(run_dir), read_kernel_log=lambda: [])


def test_a_run_that_died_of_emfile_says_so_with_its_count_against_its_limit(tmp_path):
    report = _built(tmp_path)
    ended = report.ended
    assert ended["how"] == "exception"
    assert ended["resource"]["resource"] == "fds" and ended["resource"]["error"] == "EMFILE"
    assert ended["resource"]["usage"] == 1024 and ended["resource"]["limit"] == 1024
    assert text.ending(ended) == (
        "ended by an unhandled OSError: [Errno 24] Too many open files — it ran out of file "
        "descriptors (1,024 of 1,024)"
    )
    evidence = text.evidence_lines(report)
    assert any(line.startswith("ran out of file descriptors at ") for line in evidence)
    assert (
        "file descriptors at the sample nearest that moment: 1,024 of 1,024 (in use of its limit)"
        in evidence
    )
    document = report.to_json()
    assert json.loads(json.dumps(document))["ended"]["resource"]["error"] == "EMFILE"
    fds = next(r for r in document["resources"] if r["resource"] == "fds")
    assert (fds["first"], fds["last"], fds["limit"]) == (40, 1024, 1024)
    assert [m["series"] for m in document["memory"]] == ["process_resident_memory_bytes"]


def test_a_thread_that_died_of_emfile_while_the_process_went_on(tmp_path):
    report = _built(tmp_path, thread=True)
    assert report.ended["how"] == "exit"
    words = text.ending(report.ended)
    assert words.startswith("exited cleanly; it ran out of file descriptors (1,024 of 1,024)")
    assert words.endswith("its thread request-worker died of EMFILE")
    evidence = text.evidence_lines(report)
    assert "  /srv/server.py:22 in accept_connections" in evidence  # the thread's stack


def test_resource_curves_are_counts_named_by_their_resource(tmp_path):
    report = _built(tmp_path, limit=1036.0)
    fds = next(s for s in report.series if s.resource == "fds")
    assert fds.title == "open file descriptors" and fds.unit == "count"
    threads = next(s for s in report.series if s.resource == "threads")
    assert threads.title == "threads"
    assert "open file descriptors: 40 -> 1,024 (+984)" in text.memory_lines(report)
    assert "threads stayed flat (12 -> 12)" in text.verdict_line(report)
    page = html.render(report)
    assert "limit 1,036, 12 above the last value" in page
    assert "40 → 1,024 (+984 in 2 min)" in page
    assert "limit 30,000, 29,988 above the last value ↑" in page
    assert "<h2>open file descriptors</h2>" in page and "Memory and resources" in page
    axis = html.y_axis(fds)
    assert axis.unit_name == "" and all(float(t).is_integer() for t in axis.ticks)
    assert all(html._tick_label(t, axis).replace(",", "").isdigit() for t in axis.ticks)
    flat = html.y_axis(threads)  # 12 threads all along: a few threads tall, not a MiB
    assert flat.high - flat.low < 10 and flat.flat
    md = markdown.render(report)
    assert "| open file descriptors | 40 -> 1,024 (+984) |" in md
    assert "KiB" not in md.split("| memory and resources |")[1].split("RSS")[0]


def test_the_terminal_says_it_too(tmp_path):
    from rich.console import Console

    from reports import terminal

    console = Console(record=True, width=200)
    terminal.render(_built(tmp_path), console)
    out = console.export_text()
    assert "it ran out of file descriptors (1,024 of 1,024)" in out
    assert "open file descriptors: 40 -> 1,024 (+984)" in out


# -- real children under diag run -------------------------------------------------------------


def _run_out(tmp_path: Path, mode: str, nofile: int = 96) -> tuple[int, str, dict]:
    from tests.conftest import DIAG, PYTHON, REPO, child_env

    history = tmp_path / "history"

    def low_limit() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    argv = [*DIAG, "run", "--interval", "0.2", "--", PYTHON, "-m", "tests.apps.resources", mode]
    proc = subprocess.run(
        argv, cwd=REPO, env=child_env(DIAG_HISTORY=str(history)), preexec_fn=low_limit,
        capture_output=True, timeout=120,
    )  # fmt: skip
    (run,) = find_runs(str(history))
    result = CliRunner().invoke(main, ["report", run, "--json"])
    assert result.exit_code in (0, 1), result.output
    return proc.returncode, proc.stderr.decode(errors="replace"), json.loads(result.stdout)


@pytest.mark.e2e
def test_a_real_process_that_dies_of_emfile_is_reported_so(tmp_path):
    status, stderr, document = _run_out(tmp_path, "emfile")
    assert status == 1 and "Too many open files" in stderr  # the host's traceback, as before
    ended = document["ended"]
    assert ended["how"] == "exception", ended
    assert ended["resource"]["error"] == "EMFILE" and ended["resource"]["how"] == "unhandled"
    assert any("in accept_connections" in frame for frame in ended["resource"]["stack"])
    words = text.ending(ended)
    assert words.startswith("ended by an unhandled OSError: [Errno 24] Too many open files"), words
    assert "— it ran out of file descriptors" in words
    if "limit" in ended["resource"]:  # the resource probes are sampling
        assert ended["resource"]["limit"] == 96


@pytest.mark.e2e
def test_a_real_thread_that_dies_of_emfile_while_the_process_goes_on(tmp_path):
    status, stderr, document = _run_out(tmp_path, "thread_emfile")
    assert status == 0 and "request-worker" in stderr
    ended = document["ended"]
    assert ended["how"] == "exit", ended
    resource_ = ended["resource"]
    assert resource_["error"] == "EMFILE" and resource_["how"] == "thread"
    assert resource_["thread"] == "request-worker"
    assert "its thread request-worker died of EMFILE" in text.ending(ended)


@pytest.mark.e2e
def test_a_resource_curve_in_chromium(tmp_path, monkeypatch):
    from tests import test_report_page

    monkeypatch.setitem(test_report_page.RUNS, "fds", lambda run_dir: fds_run(run_dir))
    dom, measures = test_report_page._in_chromium(tmp_path, "fds")
    words = test_report_page._text_of(dom)
    assert "it ran out of file descriptors (1,024 of 1,024)" in words
    assert "limit 1,024, reached at the last sample" in words
    assert "40 → 1,024 (+984 in 2 min)" in words
    for measure in measures:  # RSS, then descriptors: the climb fills its plot
        assert measure["charts"][1]["series"] > 0.6, measure
