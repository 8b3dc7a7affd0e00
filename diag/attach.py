"""Start the agent inside a running Python process that never imported it.

Python 3.14 and later: ``sys.remote_exec``. Older, on x86-64 Linux: ptrace alone, at a safe
point (``diag/_attach/ptrace_inject.py``: no gdb needed, and it works where gdb up to 13 cannot
make calls, on CPUs with AMX). Elsewhere: gdb, at the same safe points (``gdb_inject.py``).
Either way the target runs a small payload script that imports
``probes`` (from its own environment, or from ours when the Python versions match), starts the
agent with the given settings, and writes what happened to a result file we wait for.

Every check that can fail says what to do: not a Python process, an interpreter without the
needed symbols, diag not importable there, no gdb, ptrace not permitted (root, CAP_SYS_PTRACE,
Yama's ptrace_scope, containers), another user's process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from diag._attach import ptrace_inject
from diag.errors import DiagError, ProcessError, UsageError
from diag.procfs import check_target, command_name

GDB_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_attach", "gdb_inject.py")


@dataclass(frozen=True)
class Target:
    pid: int
    uid: int
    python: tuple[int, int] | None  # the interpreter's version, from its binary or libpython
    executable: str


def inspect_target(pid: int, proc_root: str = "/proc") -> Target:
    check_target(pid, "attach to", proc_root)
    try:
        with open(f"{proc_root}/{pid}/status", encoding="utf-8", errors="replace") as f:
            status = f.read()
    except FileNotFoundError:  # it exited since the check
        raise UsageError(f"no process with pid {pid}; check the pid (ps -ef)") from None
    uid_match = re.search(r"^Uid:\s+(\d+)", status, re.M)
    uid = int(uid_match.group(1)) if uid_match else -1
    try:
        executable = os.readlink(f"{proc_root}/{pid}/exe")
    except OSError:  # not ours to read (ptrace access): its name, at least
        executable = command_name(pid, proc_root)
    version = None
    try:
        with open(f"{proc_root}/{pid}/maps", encoding="utf-8", errors="replace") as f:
            maps = f.read()
    except PermissionError:
        # Its memory map is not ours to read, so neither is its memory: whether it runs
        # Python cannot be told, and "not a Python process" would send the user astray.
        raise ProcessError(
            f"pid {pid} ({executable}, uid {uid}) may not be inspected by this user "
            "(permission denied on its memory map); attach as its user, or as root"
        ) from None
    for text in (executable, maps):
        found = re.search(r"python(\d)\.(\d+)", text)
        if found:
            version = (int(found.group(1)), int(found.group(2)))
            break
    return Target(pid, uid, version, executable)


def ptrace_scope(path: str = "/proc/sys/kernel/yama/ptrace_scope") -> int | None:
    try:
        with open(path, encoding="utf-8") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None  # no Yama: classic ptrace rules (same user, or root)


def check_can_attach(target: Target, scope: int | None, euid: int | None = None) -> None:
    euid = os.geteuid() if euid is None else euid
    if target.python is None:
        raise ProcessError(
            f"pid {target.pid} ({target.executable}) is not a Python process; "
            "diag watch --pid samples any process from outside"
        )
    if euid != 0 and target.uid != euid:
        raise ProcessError(
            f"pid {target.pid} belongs to uid {target.uid}; attach as that user or as root"
        )
    if scope == 3:
        raise ProcessError("ptrace is disabled (kernel.yama.ptrace_scope=3): no attach possible")
    if scope == 2 and euid != 0:
        raise ProcessError(
            "ptrace needs CAP_SYS_PTRACE here (kernel.yama.ptrace_scope=2): run as root"
        )
    if scope == 1 and euid != 0:
        raise ProcessError(
            "ptrace of a non-child is restricted (kernel.yama.ptrace_scope=1): run as root, "
            "or sudo sysctl kernel.yama.ptrace_scope=0"
        )


def _payload(settings: dict[str, Any], result_path: str, fallback_paths: list[str]) -> str:
    return f"""
import json as _json, os as _os, sys as _sys
_result = {{"pid": _os.getpid(), "python": _sys.version.split()[0], "executable": _sys.executable}}
try:
    try:
        import probes as _probes
    except ImportError:
        # Not installed there: ours, at the end of sys.path so the host's packages win.
        _sys.path.extend(p for p in {fallback_paths!r} if p not in _sys.path)
        import probes as _probes
    _agent = _probes.start(**{settings!r})
    _result.update(ok=True, role=_agent.role, port=_agent.port, http_error=_agent.http_error)
except BaseException as _exc:
    _result.update(ok=False, error=f"{{type(_exc).__name__}}: {{_exc}}")
with open({result_path + ".tmp"!r}, "w") as _f:
    _json.dump(_result, _f)
_os.replace({result_path + ".tmp"!r}, {result_path!r})
"""


def _our_import_paths(target: Target) -> list[str]:
    """Where our probes and prometheus_client live, when the target can load them (the same
    Python version); else nothing, and a missing diag is reported with how to install it."""
    if target.python != sys.version_info[:2]:
        return []
    import prometheus_client

    import probes

    return sorted(
        {
            os.path.dirname(os.path.dirname(os.path.abspath(module.__file__ or "")))
            for module in (probes, prometheus_client)
        }
    )


def attach(
    pid: int, settings: dict[str, Any], timeout: float = 20.0, gdb: str | None = None
) -> dict[str, Any]:
    """Start the agent in ``pid``; returns what the payload reported."""
    target = inspect_target(pid)
    check_can_attach(target, ptrace_scope())
    workdir = tempfile.mkdtemp(prefix="diag-attach-")
    os.chmod(workdir, 0o755)  # the target may run as another user (we are root then)
    result_path = os.path.join(workdir, "result.json")
    payload_path = os.path.join(workdir, "payload.py")
    with open(payload_path, "w", encoding="utf-8") as f:
        f.write(_payload(settings, result_path, _our_import_paths(target)))
    os.chmod(payload_path, 0o644)
    if target.uid != os.geteuid():
        os.chown(workdir, target.uid, -1)
    try:
        if target.python is not None and target.python >= (3, 14) and hasattr(sys, "remote_exec"):
            sys.remote_exec(pid, payload_path)
        elif gdb is None and ptrace_inject.supported():
            ptrace_inject.run_line(pid, _payload_line(payload_path))
        else:
            _inject_with_gdb(target, payload_path, gdb)
        result = _wait_for(result_path, timeout, pid)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not result.get("ok"):
        error = str(result.get("error", "unknown"))
        if "ModuleNotFoundError" in error or "ImportError" in error:
            raise DiagError(
                f"diag is not importable by pid {pid}'s Python ({result.get('executable')}): "
                f"install it there: {result.get('executable')} -m pip install diag"
            )
        raise DiagError(f"the agent did not start in pid {pid}: {error}")
    return result


def _payload_line(payload_path: str) -> str:
    """The one line the target runs: it reads and runs the payload file."""
    return f"exec(open({payload_path!r}).read())"


def _inject_with_gdb(target: Target, payload_path: str, gdb: str | None) -> None:
    gdb = gdb or shutil.which("gdb")
    if gdb is None:
        raise DiagError("gdb is not installed: install it (apt-get install gdb) to attach")
    command = [
        gdb, "-p", str(target.pid), "-batch", "-nx", "-q",
        "-ex", "set pagination off",
        "-ex", f"source {GDB_SCRIPT}",
        "-ex", f"python diag_attach({_payload_line(payload_path)!r})",
        "-ex", "detach",
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise DiagError(f"gdb did not finish attaching to pid {target.pid} within 60 s") from None
    output = done.stdout + done.stderr
    if "ptrace: Operation not permitted" in output:
        raise ProcessError(
            f"ptrace of pid {target.pid} is not permitted: run as root; in a container add "
            "CAP_SYS_PTRACE (docker run --cap-add=SYS_PTRACE, or the pod's securityContext)"
        )
    if "No symbol" in output and ("PyGILState" in output or "PyRun" in output):
        raise ProcessError(
            f"pid {target.pid}'s Python lacks the symbols attach needs (PyRun_SimpleString, "
            "PyGILState_Ensure): a stripped or static interpreter; use diag run instead"
        )
    if "diag-attach:" not in output:
        tail = output.strip().splitlines()[-1:] or ["no output"]
        raise DiagError(f"gdb could not attach to pid {target.pid}: {tail[0]}")


def _wait_for(path: str, timeout: float, pid: int) -> dict[str, Any]:
    """The payload's result; a busy target runs it at its next bytecode boundary."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, encoding="utf-8") as f:
                result: dict[str, Any] = json.load(f)
                return result
        except FileNotFoundError:
            pass
        if not os.path.exists(f"/proc/{pid}"):
            raise DiagError(f"pid {pid} exited while diag was attaching")
        time.sleep(0.05)  # a file written by another process: nothing to wait on but this
    raise DiagError(
        f"pid {pid} did not run the agent within {timeout:.0f} s (its main thread may be stuck "
        "in native code); try again, or start it with diag run"
    )
