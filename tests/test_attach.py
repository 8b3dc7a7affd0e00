"""diag attach on real targets: a busy allocating one, one blocked in a wait, one blocked in a
read and one asleep (their system calls must restart as after any signal). On x86-64 Linux it
injects with ptrace alone, so these run with no gdb on the PATH; elsewhere through the real gdb."""

import ctypes
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from diag._attach import ptrace_inject
from diag.attach import Target, _inject_with_gdb, check_can_attach, inspect_target, ptrace_scope
from diag.cli import main
from diag.errors import DiagError, ProcessError
from diag.procfs import check_target, command_name, process_state
from diag.testing import BUSY_ALLOCATING_SCRIPT, CONTENDED_SCRIPT, IDLE_WAITING_SCRIPT
from tests.conftest import child_env, poll, require_tool, scrape

BUSY = BUSY_ALLOCATING_SCRIPT
IDLE = IDLE_WAITING_SCRIPT
CONTENDED = CONTENDED_SCRIPT


@pytest.fixture(params=["busy", "idle", "contended"])
def target(request, tmp_path):
    # A bare interpreter: no diag on its path, so attach must bring ours (same version).
    env = {k: v for k, v in child_env().items() if k != "PYTHONPATH"}
    env["DIAG_HISTORY"] = str(tmp_path / "history")
    code = {"busy": BUSY, "idle": IDLE, "contended": CONTENDED}[request.param]
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    assert proc.stdout.readline() == "ready\n"
    yield proc
    proc.kill()
    proc.wait()
    proc.stdout.close()


def attach_env() -> dict[str, str]:
    """Where attach needs no gdb, none is on the PATH: proof that it does without."""
    if ptrace_inject.supported():
        return child_env(PATH="/nonexistent")
    require_tool("gdb")
    return child_env()


def run_attach(pid: int) -> int:
    """``diag attach`` on ``pid``; the port its agent serves on."""
    result = subprocess.run(
        [sys.executable, "-m", "diag", "attach", "--pid", str(pid), "--port", "0",
         "--interval", "0.2"],
        capture_output=True, text=True, timeout=120, env=attach_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"agent started in pid {pid} (python ")
    return int(result.stdout.rsplit("port ", 1)[1].rstrip(")\n"))


@pytest.mark.e2e
def test_attach_starts_a_serving_agent_in_a_running_process(target):
    port = run_attach(target.pid)
    metrics = poll(lambda: scrape(f"http://127.0.0.1:{port}/metrics"), timeout=30)
    assert metrics["diag_process_resident_memory_bytes"] > 0
    assert target.poll() is None  # alive and well


#: Blocked in read(): after the attach the read must go on (restarted), and the float sums its
#: main thread makes must come out right (its vector registers given back as they were).
READING = """
import sys
print("ready", flush=True)
for line in sys.stdin:
    total = 0.0
    for i in range(100_000):
        total += i * 0.5
    print(line.strip(), total, flush=True)
"""
#: Asleep in clock_nanosleep (a restart through restart_syscall): it must keep its beat.
SLEEPING = """
import time
print("ready", flush=True)
while True:
    time.sleep(0.05)
    print("tick", flush=True)
"""


@pytest.mark.e2e
def test_a_blocked_read_goes_on_after_the_attach(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", READING], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env=child_env(DIAG_HISTORY=str(tmp_path)))  # fmt: skip
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.3)  # in its read() by now
        port = run_attach(proc.pid)
        for word in ("one", "two"):
            proc.stdin.write(word + "\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == f"{word} 2499975000.0\n"
        assert scrape(f"http://127.0.0.1:{port}/metrics")["diag_process_resident_memory_bytes"]
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


@pytest.mark.e2e
def test_a_sleeping_loop_keeps_its_beat_after_the_attach(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SLEEPING], stdout=subprocess.PIPE, text=True,
                            env=child_env(DIAG_HISTORY=str(tmp_path)))  # fmt: skip
    try:
        assert proc.stdout.readline() == "ready\n"
        run_attach(proc.pid)
        started = time.monotonic()
        for _ in range(10):
            assert proc.stdout.readline() == "tick\n"
        assert time.monotonic() - started < 5  # still sleeping 50 ms, not stuck or spinning
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_symbols_resolve_where_the_loader_put_them():
    """The injector's ELF reading against the dynamic loader's own answers, in this process."""
    libc = ctypes.CDLL(None)
    want = {"mmap", "PyRun_SimpleString", "Py_AddPendingCall", "PyGILState_Ensure"}
    found = ptrace_inject.resolve(os.getpid(), want)
    assert found["mmap"][0] == ctypes.cast(libc.mmap, ctypes.c_void_p).value
    for name in want - {"mmap"}:
        assert found[name][0] == ctypes.cast(getattr(ctypes.pythonapi, name), ctypes.c_void_p).value
    runtime, size = ptrace_inject.resolve(os.getpid(), {"_PyRuntime"})["_PyRuntime"]
    assert runtime == ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))
    assert size > 1000


def test_entry_point_is_the_executables():
    entry = ptrace_inject.entry_point(os.getpid())
    with open("/proc/self/maps") as f:
        spans = [line.split()[0].split("-") for line in f if line.split()[-1] == os.path.realpath(
            "/proc/self/exe")]  # fmt: skip
    assert any(int(low, 16) <= entry < int(high, 16) for low, high in spans)


def test_checks_before_any_ptrace():
    with pytest.raises(ProcessError, match="is not a Python process"):
        check_can_attach(Target(1, 0, None, "/usr/bin/sleep"), None, euid=0)
    python = Target(42, 1000, (3, 11), "/usr/bin/python3.11")
    with pytest.raises(ProcessError, match="belongs to uid 1000; attach as that user or as root"):
        check_can_attach(python, None, euid=1001)
    with pytest.raises(ProcessError, match="ptrace_scope=1"):
        check_can_attach(python, 1, euid=1000)
    with pytest.raises(ProcessError, match="ptrace_scope=3"):
        check_can_attach(python, 3, euid=0)
    check_can_attach(python, 1, euid=0)  # root may


def test_ptrace_scope_reads_yama(tmp_path):
    (tmp_path / "scope").write_text("2\n")
    assert ptrace_scope(str(tmp_path / "scope")) == 2
    assert ptrace_scope(str(tmp_path / "missing")) is None  # no Yama: classic rules


@pytest.mark.e2e
def test_bad_targets_are_one_line_each(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["attach", "--pid", str(2**22 + 99)])
    assert result.exit_code == 2
    assert result.stderr == f"diag: no process with pid {2**22 + 99}; check the pid (ps -ef)\n"
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        result = runner.invoke(main, ["attach", "--pid", str(sleeper.pid)])
        assert result.exit_code == 1
        assert "is not a Python process" in result.stderr
        assert inspect_target(sleeper.pid).python is None
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.e2e
def test_a_stopped_process_is_refused_before_any_ptrace(tmp_path):
    """Stopped (SIGSTOP, Ctrl-Z, a debugger), a Python process runs no injected call: the
    attach would wait a minute, give up, and the service would crash on resume. Said at
    once; watching it from outside still works (it is only idle)."""
    python = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)
        os.kill(python.pid, signal.SIGSTOP)
        poll(lambda: process_state(python.pid) == "T", timeout=10)
        result = CliRunner().invoke(main, ["attach", "--pid", str(python.pid)])
        assert result.exit_code == 2
        name = command_name(python.pid)
        assert result.stderr == (
            f"diag: pid {python.pid} ({name}) is stopped (SIGSTOP, Ctrl-Z or a debugger); "
            f"resume it (kill -CONT {python.pid}) and try again\n"
        )
        check_target(python.pid)  # watch: no objection
        os.kill(python.pid, signal.SIGCONT)
        assert python.poll() is None  # untouched, still running
    finally:
        python.kill()
        python.wait()


def test_a_memory_map_not_ours_to_read_is_no_verdict_on_python(monkeypatch):
    """Another user's process seen without CAP_SYS_PTRACE: its exe link and maps cannot be
    read, so whether it runs Python is unknown; it is not called "not a Python process"."""
    real_open = open

    def denied(path, *args, **kwargs):
        if str(path).endswith("/maps"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(ProcessError, match=r"may not be inspected by this user .*as root$"):
        inspect_target(os.getpid())


def test_no_gdb_says_how_to_get_it(monkeypatch):
    """Where gdb is the way in (not x86-64), its absence is one line with the fix."""
    monkeypatch.setenv("PATH", "/nonexistent")
    target = Target(os.getpid(), os.getuid(), sys.version_info[:2], sys.executable)
    with pytest.raises(
        DiagError, match=r"^gdb is not installed: install it \(apt-get install gdb\) to attach$"
    ):
        _inject_with_gdb(target, "/nonexistent/payload.py", None)
