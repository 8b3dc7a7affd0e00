"""The client side of an agent's control channel (the server is ``probes.control``).

Where the socket is, and one request/reply over it. A process without an agent, or with one
of another user, simply has no socket we can use: ``request`` returns None.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
from collections.abc import Mapping
from typing import Any

from diag.errors import DiagError, ProcessError

MAX_REPLY = 16 * 1024 * 1024
#: Fields of the agent's ``latest`` answer beside its samples: its dump state, live (fresher
#: than its last tick), which a watcher reads to keep the agent's own dumps out of its verdict.
DUMP_STATE = ("dumps_total", "dump_active")


def socket_directory(environ: Mapping[str, str] = os.environ, uid: int | None = None) -> str:
    uid = os.geteuid() if uid is None else uid
    base = environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(base, f"diag-{uid}")


def socket_path(pid: int, environ: Mapping[str, str] = os.environ) -> str:
    return os.path.join(socket_directory(environ), f"{pid}.sock")


def private_directory(path: str) -> str:
    """Create (or accept) a directory only we can enter; refuse one that others could."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise PermissionError(f"{path} is not a directory of ours")
    if info.st_mode & 0o077:
        raise PermissionError(f"{path} is open to other users (mode {info.st_mode & 0o777:o})")
    return path


def request(
    pid: int,
    op: str,
    timeout: float = 2.0,
    environ: Mapping[str, str] = os.environ,
    keep_errors: bool = False,
    **args: Any,
) -> dict[str, Any] | None:
    """Ask the agent in ``pid``; None when there is no agent we may talk to, or when it
    answers ``{"error": ...}`` (returned as such with ``keep_errors``)."""
    path = socket_path(pid, environ)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            connection.connect(path)
            connection.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n") and len(data) < MAX_REPLY:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    try:
        reply: dict[str, Any] = json.loads(data)
    except ValueError:
        return None
    return None if "error" in reply and not keep_errors else reply


def ask_dump(
    pid: int, *, timeout: float, environ: Mapping[str, str] = os.environ, **options: Any
) -> dict[str, Any]:
    """The agent in ``pid`` dumps (see ``probes.control`` for the options) and answers with the
    document; one clear ``DiagError`` when no agent answers or it would not dump (busy)."""
    document = request(pid, "dump", timeout=timeout, environ=environ, keep_errors=True, **options)
    if document is None:
        from diag.attach import inspect_target  # only now: attaching's module is not light

        target = inspect_target(pid)
        if target.python is None:
            # No agent can run there: attach would refuse it too.
            raise ProcessError(
                f"pid {pid} ({target.executable}) is not a Python process: a dump reads a "
                "Python heap; diag watch --pid samples any process from outside"
            )
        raise DiagError(
            f"pid {pid} runs no diag agent we can reach: start it with `diag run -- ...`, "
            f"or inject it with `diag attach --pid {pid}` (or add --attach)"
        )
    if "error" in document:
        raise DiagError(f"the agent in pid {pid} did not dump: {document['error']}")
    return document
