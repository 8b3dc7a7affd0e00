"""How real processes end, and what ``diag report`` says of it.

Each case runs a real process twice, without the agent and with it (``diag run``, or the agent
embedded where the host's handler must come first), ends both the same real way (a signal, a
segfault, an exception, ``os._exit``, SIGKILL after a grace period) and checks that the exit
status is the same, then that the report names the end with its evidence.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from diag.cli import main
from diag.history import find_runs, read_run
from reports import text
from tests.conftest import DIAG, PYTHON, REPO, child_env, free_port, poll
from tests.test_workers import no_control_socket

pytestmark = pytest.mark.e2e

Ready = Callable[[subprocess.Popen[bytes], int], None]


def printed_ready(proc: subprocess.Popen[bytes], port: int) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == b"ready", line


def serving(proc: subprocess.Popen[bytes], port: int) -> None:
    def accepts() -> bool | None:
        assert proc.poll() is None, "the server ended before it served"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return None

    poll(accepts, timeout=60)


def end_with(proc: subprocess.Popen[bytes], action: str) -> int:
    if action == "term_then_kill":
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)  # the grace period an orchestrator gives
        proc.kill()
    elif action != "none":
        proc.send_signal(getattr(signal, action))
    return proc.wait(timeout=60)


def run_case(
    tmp_path: Path, argv: list[str], ready: Ready, action: str, agent: str, port: int
) -> tuple[int, dict[str, Any] | None]:
    """``agent``: "none", "run" (diag run) or "embedded" (the program starts it itself)."""
    history = tmp_path / f"history-{agent}"
    env = child_env(DIAG_HISTORY=str(history), ENDINGS_EMBED="1" if agent == "embedded" else "0")
    command = [*DIAG, "run", "--interval", "0.2", "--", *argv] if agent == "run" else argv
    stderr = tmp_path / f"stderr-{agent}"
    with (
        stderr.open("wb") as errors,
        subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=errors) as proc,
    ):
        try:
            ready(proc, port)
            time.sleep(1.0)  # ticks: the agent notes the handlers the host installed
            status = end_with(proc, action)
        finally:
            if proc.poll() is None:
                proc.kill()
    if agent == "none":
        return status, None
    # What the host prints as it ends (Ctrl-C's traceback) shows none of the agent's frames.
    assert "/probes/" not in stderr.read_text(errors="replace"), stderr.read_text()
    runs = [run for run in find_runs(str(history)) if run.endswith(f"-{proc.pid}")]
    assert runs, f"no history of pid {proc.pid} in {history}"
    result = CliRunner().invoke(main, ["report", runs[0], "--json"])
    document = json.loads(result.stdout)
    return status, {**document["ended"], "_text": text.ending(document["ended"])}


def program(mode: str) -> list[str]:
    return [PYTHON, "-m", "tests.apps.endings", mode]


def uvicorn(port: int) -> list[str]:
    return [PYTHON, "-m", "uvicorn", "tests.apps.workers_asgi:app", "--port", str(port),
            "--log-level", "warning"]  # fmt: skip


def gunicorn(port: int, worker: str) -> list[str]:
    pytest.importorskip("gunicorn")
    return [PYTHON, "-m", "gunicorn", "-w", "2", "-k", worker, "--bind", f"127.0.0.1:{port}",
            *no_control_socket(), "tests.apps.workers_wsgi:app"
            if worker == "sync" else "tests.apps.workers_asgi:app"]  # fmt: skip


CASES = [
    # name, argv(port), ready, action, how the agent runs, expected status, check of `ended`
    ("plain SIGTERM", lambda p: program("sleep"), printed_ready, "SIGTERM", "run", -15,
     lambda e: e["how"] == "signal" and e["signal"] == "SIGTERM"
     and "after_host_handler" not in e and "default action" in e["_text"]),
    ("plain SIGINT", lambda p: program("sleep"), printed_ready, "SIGINT", "run", -2,
     lambda e: e["how"] == "exception" and e["exception"]["type"].endswith("KeyboardInterrupt")
     and "stopped by SIGINT" in e["_text"]),
    ("uvicorn SIGTERM", uvicorn, serving, "SIGTERM", "run", -15,
     lambda e: e["how"] == "signal" and "uvicorn" in e["after_host_handler"]
     and "after a clean shutdown" in e["_text"]),
    ("uvicorn SIGINT", uvicorn, serving, "SIGINT", "run", None,
     lambda e: e["how"] in ("signal", "exit", "exception") and "SIGINT" in json.dumps(e)),
    ("gunicorn sync SIGTERM", lambda p: gunicorn(p, "sync"), serving, "SIGTERM", "run", 0,
     lambda e: e["how"] == "exit" and e["reason"] == "exit"),
    ("gunicorn sync SIGINT", lambda p: gunicorn(p, "sync"), serving, "SIGINT", "run", 0,
     lambda e: e["how"] == "exit"),
    ("gunicorn uvicorn-workers SIGTERM", lambda p: gunicorn(p, "uvicorn.workers.UvicornWorker"),
     serving, "SIGTERM", "run", 0, lambda e: e["how"] == "exit"),
    ("gunicorn uvicorn-workers SIGINT", lambda p: gunicorn(p, "uvicorn.workers.UvicornWorker"),
     serving, "SIGINT", "run", 0, lambda e: e["how"] == "exit"),
    ("SIGTERM to a handler set after the agent, then SIGKILL", lambda p: program("stubborn"),
     printed_ready, "term_then_kill", "run", -9,
     lambda e: e["how"] == "killed" and e["after_signal"]["signal"] == "SIGTERM"
     and "<lambda>" in e["after_signal"]["handled_by"] and "grace period" in e["_text"]),
    ("SIGTERM to a handler set before the agent, then SIGKILL", lambda p: program("stubborn"),
     printed_ready, "term_then_kill", "embedded", -9,
     lambda e: e["how"] == "killed" and e["after_signal"]["signal"] == "SIGTERM"
     and "grace period" in e["_text"]),
    ("segfault through ctypes", lambda p: program("segfault"), printed_ready, "none", "run", -11,
     lambda e: e["how"] == "crash" and e["fault"]["signal"] == "SIGSEGV"
     and any("endings.py" in line and "in main" in line for line in
             e["fault"]["crashing_thread"]) and "crashed in native code" in e["_text"]),
    ("abort() in C", lambda p: program("abort"), printed_ready, "none", "run", -6,
     lambda e: e["how"] == "crash" and e["fault"]["signal"] == "SIGABRT"
     and any("in main" in line for line in e["fault"]["crashing_thread"])),
    ("unhandled exception", lambda p: program("raise"), printed_ready, "none", "run", 1,
     lambda e: e["how"] == "exception" and e["exception"]["type"] == "builtins.RuntimeError"
     and any("in synthesize" in frame for frame in e["exception"]["stack"])
     and "unhandled RuntimeError" in e["_text"]),
    ("os._exit(3)", lambda p: program("os_exit"), printed_ready, "none", "run", 3,
     lambda e: e["how"] == "os-exit" and e["status"] == 3 and "os._exit(3)" in e["_text"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "ready", "action", "agent", "expected", "check"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_each_real_end_is_reported_and_the_exit_status_is_unchanged(
    tmp_path, argv, ready, action, agent, expected, check
):
    port = free_port()
    bare, _ = run_case(tmp_path, argv(port), ready, action, "none", port)
    port = free_port()
    status, ended = run_case(tmp_path, argv(port), ready, action, agent, port)
    assert status == bare, f"the agent changed the exit status: {bare} without, {status} with"
    if expected is not None:
        assert status == expected
    assert ended is not None and check(ended), ended


def test_a_gunicorn_worker_past_its_timeout_is_told_apart_from_its_masters_end(tmp_path):
    """The master aborts a worker stuck past ``--timeout`` (SIGABRT: gunicorn's handler calls
    sys.exit(1), the sync worker catches it and exits 0); the master's own end comes later."""
    pytest.importorskip("gunicorn")
    history = tmp_path / "history"
    port = free_port()
    argv = [*DIAG, "run", "--interval", "0.2", "--", PYTHON, "-m", "gunicorn", "-w", "1",
            "--timeout", "2", "--bind", f"127.0.0.1:{port}", *no_control_socket(),
            "tests.apps.slow_wsgi:app"]  # fmt: skip
    with subprocess.Popen(
        argv, cwd=REPO, env=child_env(DIAG_HISTORY=str(history)), stderr=subprocess.DEVNULL
    ) as master:
        try:
            serving(master, port)
            worker = int(urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read())
            threading.Thread(target=_ask_slowly, args=(port,), daemon=True).start()

            def worker_ended() -> str | None:
                runs = [r for r in find_runs(str(history)) if r.endswith(f"-{worker}")]
                return runs[0] if runs and read_run(runs[0]).events_of("stop") else None

            worker_run = poll(worker_ended, timeout=60)
            master.send_signal(signal.SIGTERM)
            assert master.wait(timeout=60) == 0
        finally:
            if master.poll() is None:
                master.kill()
    worker_end = json.loads(CliRunner().invoke(main, ["report", worker_run, "--json"]).stdout)
    ended = worker_end["ended"]
    assert ended["in_signal_handler"]["signal"] == "SIGABRT", ended
    assert ended["in_signal_handler"]["status"] == 1
    assert "past its --timeout" in text.ending(ended)
    (master_run,) = [r for r in find_runs(str(history)) if r.endswith(f"-{master.pid}")]
    master_end = json.loads(CliRunner().invoke(main, ["report", master_run, "--json"]).stdout)
    assert master_end["ended"]["how"] == "exit" and "in_signal_handler" not in master_end["ended"]


def _ask_slowly(port: int) -> None:
    with contextlib.suppress(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/slow", timeout=20).read()
