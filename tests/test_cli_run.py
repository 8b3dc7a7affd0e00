import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from diag.cli import main
from diag.cli.run import bootstrap_dir, child_environment
from diag.settings import Settings
from tests.conftest import DIAG, child_env


def test_usage_errors_exit_2_with_one_line():
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--", "no-such-program-xyz"])
    assert result.exit_code == 2
    assert result.stderr == (
        "diag: command not found: 'no-such-program-xyz'; give a program on PATH or a path\n"
    )
    result = runner.invoke(main, ["run"])
    assert result.exit_code == 2
    assert "Missing argument 'COMMAND...'" in result.stderr
    result = runner.invoke(main, ["run", "--interval", "0", "--", "python"])
    assert result.exit_code == 2


@pytest.mark.e2e
def test_a_program_the_kernel_will_not_run_is_one_line(tmp_path):
    """Found on PATH or given as a path, executable, and still refused by execve: it raised
    a traceback from os.execve. (In a child: diag run replaces its own process.)"""
    notes = tmp_path / "notes.txt"  # executable bits, no #! line, no ELF header
    notes.write_text("remember the milk\n")
    notes.chmod(0o755)
    script = tmp_path / "script"
    script.write_text("#!/no/such/interpreter\n")
    script.chmod(0o755)
    readable = tmp_path / "readable.sh"  # a path to a file not marked executable (mode 644)
    readable.write_text("echo hi\n")
    readable.chmod(0o644)
    hints = {
        readable: "Permission denied (not executable by this user, or on a noexec mount)",
        notes: "Exec format error (no program, and a script needs a #! line; or give its "
        "interpreter: diag run -- python script.py)",
        script: "No such file or directory (its #! interpreter is missing)",
    }
    for program, why in hints.items():
        result = subprocess.run(
            [*DIAG, "run", "--", str(program)],
            capture_output=True, text=True, timeout=60, env=child_env(),
        )  # fmt: skip
        assert result.returncode == 2
        assert result.stderr == f"diag: cannot run '{program}': {why}\n"


def test_bad_environment_is_a_usage_error():
    result = CliRunner().invoke(main, ["run", "--", "python"], env={"DIAG_INTERVAL": "soon"})
    assert result.exit_code == 2
    # Refused here, not "ignored" as the agent alone would log it.
    assert result.stderr == (
        "diag: DIAG_INTERVAL='soon': could not convert string to float: 'soon'; correct it or "
        "unset it\n"
    )
    assert "Traceback" not in result.output


def test_child_environment_puts_the_bootstrap_first_and_keeps_the_rest():
    env = child_environment({"PYTHONPATH": "/app", "X": "1"}, Settings(port=9109, interval=2))
    assert env["PYTHONPATH"] == os.pathsep.join([bootstrap_dir(), "/app"])
    assert env["DIAG_PORT"] == "9109"
    assert env["DIAG_INTERVAL"] == "2"
    assert env["X"] == "1"
    assert os.path.exists(os.path.join(bootstrap_dir(), "sitecustomize.py"))


def _diag_run(args, code, env=None, timeout=30):
    return subprocess.run(
        [*DIAG, "run", *args, "--", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=timeout, env=env or child_env(),
    )  # fmt: skip


@pytest.mark.e2e
def test_program_runs_with_the_agent_already_started_same_pid_same_status():
    code = (
        "import os, sys, probes\n"
        "a = probes.agent()\n"
        "print(a is not None, a.settings.interval, a.port is not None, a.role, os.getpid())\n"
        "sys.exit(7)\n"
    )
    proc = subprocess.Popen(
        [*DIAG, "run", "--port", "0", "--interval", "0.2", "--", sys.executable, "-c", code],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 7, err
    assert out == f"True 0.2 True server {proc.pid}\n"  # exec: the program is diag's process


@pytest.mark.e2e
def test_settings_also_come_from_the_environment():
    out = _diag_run(
        [], "import probes; print(probes.agent().settings.interval)",
        env=child_env(DIAG_INTERVAL="0.7"),
    )  # fmt: skip
    assert out.stdout == "0.7\n", out.stderr


@pytest.mark.e2e
def test_a_shadowed_sitecustomize_still_runs(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import builtins; builtins.APP_SITE = True\n")
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(tmp_path)])
    code = (
        "import builtins, probes; print(getattr(builtins, 'APP_SITE', False), bool(probes.agent()))"
    )
    out = _diag_run([], code, env=env)
    assert out.stdout == "True True\n", out.stderr


@pytest.mark.e2e
def test_a_python_without_diag_still_runs_and_says_how_to_fix_it(tmp_path):
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    bare_python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    out = subprocess.run(
        [*DIAG, "run", "--", bare_python, "-c", "print('program ran')"],
        capture_output=True, text=True, timeout=30,
        env={**env, "PYTHONPATH": os.path.dirname(os.path.dirname(bootstrap_dir()))},
    )  # fmt: skip
    # diag itself runs from this checkout; the bare venv's python can import the probes
    # package from the checkout but not prometheus_client, so the agent cannot start there.
    assert out.returncode == 0
    assert out.stdout == "program ran\n"
    assert out.stderr.startswith("diag: agent not started: diag is not importable by")
    assert f"install it there: {bare_python} -m pip install diag" in out.stderr


@pytest.mark.e2e
def test_history_goes_where_diag_run_says(tmp_path):
    code = "import probes; probes.agent().sampler.tick()"
    out = _diag_run(["--history", str(tmp_path / "h")], code)
    assert out.returncode == 0, out.stderr
    (run,) = (tmp_path / "h").iterdir()
    assert any(p.name.startswith("seg-") for p in run.iterdir())
