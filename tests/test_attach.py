"""diag attach with the real gdb, on a busy allocating target and on one blocked in a wait."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from diag.attach import Target, check_can_attach, inspect_target, ptrace_scope
from diag.cli import main
from diag.errors import ProcessError
from diag.testing import BUSY_ALLOCATING_SCRIPT, IDLE_WAITING_SCRIPT
from tests.conftest import child_env, poll, require_tool, scrape

BUSY = BUSY_ALLOCATING_SCRIPT
IDLE = IDLE_WAITING_SCRIPT


@pytest.fixture(params=["busy", "idle"])
def target(request, tmp_path):
    # A bare interpreter: no diag on its path, so attach must bring ours (same version).
    env = {k: v for k, v in child_env().items() if k != "PYTHONPATH"}
    env["DIAG_HISTORY"] = str(tmp_path / "history")
    code = BUSY if request.param == "busy" else IDLE
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    assert proc.stdout.readline() == "ready\n"
    yield proc
    proc.kill()
    proc.wait()
    proc.stdout.close()


@pytest.mark.e2e
def test_attach_starts_a_serving_agent_in_a_running_process(target):
    require_tool("gdb")
    result = subprocess.run(
        [sys.executable, "-m", "diag", "attach", "--pid", str(target.pid), "--port", "0",
         "--interval", "0.2"],
        capture_output=True, text=True, timeout=120, env=child_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"agent started in pid {target.pid} (python ")
    port = int(result.stdout.rsplit("port ", 1)[1].rstrip(")\n"))
    metrics = poll(lambda: scrape(f"http://127.0.0.1:{port}/metrics"), timeout=30)
    assert metrics["diag_process_resident_memory_bytes"] > 0
    assert target.poll() is None  # alive and well


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
def test_no_gdb_says_how_to_get_it(monkeypatch):
    proc = subprocess.Popen([sys.executable, "-c", IDLE], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        monkeypatch.setenv("PATH", "/nonexistent")
        result = CliRunner().invoke(main, ["attach", "--pid", str(proc.pid)])
        assert result.exit_code == 1
        assert (
            result.stderr
            == "diag: gdb is not installed: install it (apt-get install gdb) to attach\n"
        )
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
