"""diag watch --pid: a real process watched from outside until it dies, and what it records."""

import itertools
import json
import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from diag.cli import main
from diag.history import find_runs, read_run
from tests.conftest import DIAG, child_env, memory_cgroup

LEAKER = """
import sys, threading
print("ready", flush=True)
hold, ev = [], threading.Event()
while True:
    hold.append(bytearray(b"x" * (256 << 10)))
    ev.wait(0.01)
"""


@pytest.fixture
def leaker():
    proc = subprocess.Popen([sys.executable, "-c", LEAKER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stdout.close()


@pytest.mark.e2e
def test_watch_json_lines_until_the_target_is_killed(tmp_path, leaker):
    watcher = subprocess.Popen(
        [*DIAG, "watch", "--pid", str(leaker.pid), "--interval", "0.1", "--json",
         "--history", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    rows = []
    try:
        for line in watcher.stdout:
            rows.append(json.loads(line))
            if len(rows) == 10:
                # Kill it and leave it unreaped (a zombie), as a parent busy elsewhere would.
                os.kill(leaker.pid, signal.SIGKILL)
        stderr = watcher.stderr.read()
        assert watcher.wait(30) == 1  # the target died: a finding
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        watcher.stdout.close()
        watcher.stderr.close()
    ticks, end = rows[:-1], rows[-1]
    assert len(ticks) >= 10
    for row in ticks:
        assert {"t", "pid", "rss_bytes", "growth_bytes_per_second", "verdict",
                "seconds_to_oom"} <= set(row)  # fmt: skip
        assert row["pid"] == leaker.pid
    assert ticks[-1]["rss_bytes"] > ticks[0]["rss_bytes"]
    assert end["event"] == "exit" and end["pid"] == leaker.pid
    assert end["how"] == "killed" and end["signal"] == signal.SIGKILL
    assert "diag report " in stderr
    (run_dir,) = find_runs(str(tmp_path))
    assert run_dir.endswith(f"-{leaker.pid}-watch")
    run = read_run(run_dir)
    assert run.ticks == len(ticks)
    (exit_event,) = run.events_of("exit")
    assert exit_event["how"] == "killed"
    report = CliRunner().invoke(main, ["report", run_dir, "--json"])
    assert json.loads(report.stdout)["ended"]["how"] == "killed"


@pytest.mark.e2e
def test_watch_stops_after_its_duration_with_the_target_alive(tmp_path, leaker):
    result = subprocess.run(
        [*DIAG, "watch", "--pid", str(leaker.pid), "--interval", "0.1", "--duration", "0.5",
         "--history", "off"],
        capture_output=True, text=True, timeout=60, env=child_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) >= 3
    assert f"pid {leaker.pid} RSS" in lines[0]
    assert leaker.poll() is None


@pytest.mark.e2e
def test_an_output_that_fails_is_one_line_and_the_history_keeps_every_tick(tmp_path, leaker):
    """Standard output on a full disk (/dev/full), closed, or a pipe whose reader left: one
    line (or none for the pipe), no traceback; the history holds the ticks and the watch's
    own stop record, and the report calls the target running, not "exited cleanly"."""
    history = tmp_path / "history"
    watch = [*DIAG, "watch", "--pid", str(leaker.pid), "--interval", "0.1", "--duration", "1"]
    with open("/dev/full", "w") as full:
        result = subprocess.run([*watch, "--history", str(history)], stdout=full, text=True,
                                stderr=subprocess.PIPE, timeout=60, env=child_env())  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == "diag: cannot write the output: No space left on device\n"
    (run_dir,) = find_runs(str(history))
    run = read_run(run_dir)
    assert run.events_of("stop")[-1]["reason"] == "watch ended" and run.ticks >= 1
    report = CliRunner().invoke(main, ["report", run_dir, "--json"])
    assert json.loads(report.stdout)["ended"]["how"] == "running"
    closed = subprocess.run([*watch, "--history", "off"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, timeout=60, env=child_env(),
                            preexec_fn=lambda: os.close(1))  # fmt: skip
    assert "Traceback" not in closed.stderr
    piped = subprocess.run(f"{' '.join(watch)} --history off | head -1", shell=True,
                           capture_output=True, text=True, timeout=60, env=child_env())  # fmt: skip
    assert piped.stdout.count("\n") == 1 and piped.stderr == ""


def test_a_history_directory_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(
        main, ["watch", "--pid", str(os.getpid()), "--history", str(tmp_path / "file")]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(f"diag: cannot keep the history in {tmp_path / 'file'}/")
    assert result.stderr.endswith(
        ": Not a directory; give --history a writable directory, or --history off\n"
    )


@pytest.mark.e2e
def test_bad_pids_are_one_line_and_exit_2():
    runner = CliRunner()
    result = runner.invoke(main, ["watch", "--pid", str(2**22 + 4321)])
    assert result.exit_code == 2
    assert result.stderr == f"diag: no process with pid {2**22 + 4321}; check the pid (ps -ef)\n"
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, left unreaped
    try:
        result = runner.invoke(main, ["watch", "--pid", str(zombie.pid)])
        assert result.exit_code == 2
        assert "has exited (a zombie, not yet reaped)" in result.stderr
    finally:
        zombie.wait()


def test_a_kernel_thread_is_one_line_not_a_process_that_ended(tmp_path):
    """kthreadd's stat, as read on this machine (flags 2129984: PF_KTHREAD among them); where
    the machine's own pid 2 is one (no pid namespace of its own), it is refused too. Watched
    before, it read as a process that ended at once: "pid 2 ended: unknown"."""
    from diag.errors import UsageError
    from diag.procfs import PF_KTHREAD, check_target

    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "stat").write_bytes(
        b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 31 0 0 "
        b"18446744073709551615 0 0 0 0 0 0 0 2147483647 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0"
    )
    for what in ("watch", "dump", "attach to"):
        with pytest.raises(UsageError) as refused:
            check_target(2, what, proc_root=str(tmp_path))
        assert str(refused.value) == f"pid 2 is a kernel thread (kthreadd); nothing to {what}"
    check_target(os.getpid())  # a user process: its flags lack PF_KTHREAD
    try:
        with open("/proc/2/stat", "rb") as f:
            real_kernel_thread = int(f.read().rsplit(b")", 1)[1].split()[6]) & PF_KTHREAD
    except FileNotFoundError:  # a pid namespace of its own: its pid 2, if any, is no thread
        real_kernel_thread = 0
    if real_kernel_thread:
        result = CliRunner().invoke(main, ["watch", "--pid", "2"])
        assert result.exit_code == 2
        assert result.stderr.startswith("diag: pid 2 is a kernel thread (")


def watch_to_oom(
    leaker: str, limit: int, options: list[str], timeout: float
) -> tuple[int, subprocess.CompletedProcess[str]]:
    """A real leaker in a memory cgroup of ``limit`` bytes, watched with ``diag watch --json``
    (and ``options``) until the kernel kills it: its pid and what watch printed."""
    with memory_cgroup(limit) as join:
        target = subprocess.Popen([sys.executable, "-c", leaker], stdout=subprocess.PIPE,
                                  text=True, preexec_fn=join)  # fmt: skip
        try:
            assert target.stdout.readline() == "ready\n"
            result = subprocess.run(
                [*DIAG, "watch", "--pid", str(target.pid), "--interval", "0.05", "--json",
                 *options],
                capture_output=True, text=True, timeout=timeout, env=child_env(),
            )  # fmt: skip
        finally:
            if target.poll() is None:
                target.kill()
            target.wait()
            target.stdout.close()
    return target.pid, result


@pytest.mark.e2e
def test_watch_sees_a_real_oom_kill(tmp_path):
    pid, result = watch_to_oom(LEAKER, 120 * 1024 * 1024, ["--history", str(tmp_path)], 120)
    assert result.returncode == 1, result.stderr
    end = json.loads(result.stdout.splitlines()[-1])
    assert end["how"] == "oom-kill", end
    assert end["oom_kills_after"] == end["oom_kills_before"] + 1 or end["kernel_log"]
    assert any(f"{pid}" in line for line in end["kernel_log"])


@pytest.mark.e2e
def test_a_constant_leak_keeps_its_verdict_once_called(tmp_path):
    """A constant 6 MB/s leak watched to its OOM kill with the detector's clock 60 times faster
    (an hour a minute): once "leak" is called, the verdict stays there."""
    steady_leaker = LEAKER.replace("256 << 10", "128 << 10").replace("0.01", "0.02")
    options = ["--time-scale", "60", "--history", "off"]
    _, result = watch_to_oom(steady_leaker, 400 * 1024 * 1024, options, 180)
    assert result.returncode == 1, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    states = [row["verdict"] for row in rows if "verdict" in row]
    assert "leak" in states, sorted(set(states))
    after = states[states.index("leak") :]
    changes = sum(a != b for a, b in itertools.pairwise(after))
    assert changes <= 1, after
    assert rows[-1]["how"] == "oom-kill"


@pytest.mark.e2e
def test_the_live_view_in_a_real_terminal(tmp_path, leaker):
    from tests.conftest import PYTHON, REPO, poll, require_tool

    tmux = require_tool("tmux")
    session = f"diag-watch-{os.getpid()}"
    command = (f"cd {REPO} && DIAG_HISTORY={tmp_path} PYTHONPATH={REPO} {PYTHON} -m diag watch "
               f"--pid {leaker.pid} --interval 0.2")  # fmt: skip
    subprocess.run([tmux, "new-session", "-d", "-s", session, "-x", "120", "-y", "20", command],
                   check=True)  # fmt: skip
    try:

        def screen():
            shown = subprocess.run([tmux, "capture-pane", "-p", "-t", session],
                                   capture_output=True, text=True, check=True).stdout  # fmt: skip
            return shown if "verdict" in shown and "growth" in shown else None

        shown = poll(screen, timeout=30)
        assert f"diag watch: pid {leaker.pid}" in shown
        assert "memory" in shown and "last minute" in shown
        assert any(ch in shown for ch in "▁▂▃▄▅▆▇█")
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], check=False)
