"""The agent's control channel: a Unix socket only its user can reach.

The socket is ``<runtime dir>/diag-<uid>/<pid>.sock``; the runtime dir is ``$XDG_RUNTIME_DIR``
or the system's temporary directory. The ``diag-<uid>`` directory is created with mode 0700 and
refused if it is anyone else's or open to others; every connection's peer uid is checked
(SO_PEERCRED) against ours. One request per connection: a JSON line in, a JSON line out,
bounded in size. ``latest`` and ``status`` only read what the sampler already has: a request
never runs a probe on the caller's behalf. ``dump`` walks the heap (and, when asked, traces a
window), within the time budget it is given.

Slow requests (a dump, whose traced window lasts seconds) run on a thread of their own, one at a
time, so that a ``diag watch`` reading ``latest`` meanwhile is answered at once; a second slow
request while one runs is refused with a line saying so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from diag.control import private_directory
from diag.procfs import pid_alive
from probes import exhaustion

log = logging.getLogger("diag")

MAX_REQUEST = 4096
#: How long the control socket waits before accepting again after running out of descriptors.
ACCEPT_RETRY_SECONDS = 1.0
Handler = Callable[[dict[str, Any]], dict[str, Any]]


def _remove_stale_sockets(directory: str) -> None:
    """Sockets of agents killed without a clean stop (SIGKILL, OOM) would pile up."""
    for name in os.listdir(directory):
        stem = name.removesuffix(".sock")
        if name.endswith(".sock") and stem.isdigit() and not pid_alive(int(stem)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def peer_uid(connection: socket.socket) -> int:
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return int(uid)


class ControlServer:
    def __init__(
        self,
        handler: Handler,
        path: str,
        peer: Callable[[socket.socket], int] = peer_uid,
        slow_ops: frozenset[str] = frozenset(),
    ) -> None:
        self.path = path
        self._handler = handler
        self._slow_ops = slow_ops
        self._slow: threading.Thread | None = None
        self._peer = peer
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._inode: int | None = None  # of the socket file this server bound

    def start(self) -> None:
        directory = private_directory(os.path.dirname(self.path))
        _remove_stale_sockets(directory)
        if os.path.exists(self.path):
            os.unlink(self.path)  # a stale socket of a dead process with our pid
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(self.path)
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino
        server.listen(8)
        self._socket = server
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="diag-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        server = self._socket
        assert server is not None
        while not self._stop.is_set():
            try:
                connection, _ = server.accept()  # blocks: no wake-ups while nobody asks
            except OSError as exc:
                # Out of descriptors (the host leaks them): say so, wait, and serve again
                # when some are free; anything else is stop() or a close after fork.
                if self._stop.is_set() or not exhaustion.note(exc, "diag control socket accept"):
                    return
                self._stop.wait(ACCEPT_RETRY_SECONDS)
                continue
            try:
                message = self._read(connection)
                if message is not None and message.get("op") in self._slow_ops:
                    if self._slow is not None and self._slow.is_alive():
                        _send(connection, {"error": "busy: another dump is running; retry"})
                    else:
                        self._slow = threading.Thread(
                            target=self._answer_and_close,
                            args=(connection, message),
                            name="diag-control-slow",
                            daemon=True,
                        )
                        self._slow.start()
                        continue  # the thread owns the connection now
                elif message is not None:
                    _send(connection, self._handler(message))
            except Exception:  # a bad client never reaches the host
                log.debug("diag: control request failed", exc_info=True)
            connection.close()

    def _answer_and_close(self, connection: socket.socket, message: dict[str, Any]) -> None:
        with connection:
            try:
                _send(connection, self._handler(message))
            except Exception:
                log.debug("diag: control request failed", exc_info=True)

    def _read(self, connection: socket.socket) -> dict[str, Any] | None:
        """The request, or None after answering why it cannot be taken."""
        connection.settimeout(2.0)
        if self._peer(connection) != os.geteuid():
            _send(connection, {"error": "another user: refused"})
            return None
        data = b""
        while b"\n" not in data and len(data) <= MAX_REQUEST:
            chunk = connection.recv(MAX_REQUEST)
            if not chunk:
                break
            data += chunk
        if len(data) > MAX_REQUEST:
            _send(connection, {"error": "request too large"})
            return None
        message: dict[str, Any] = json.loads(data.decode() or "{}")
        return message

    def stop(self) -> None:
        self._stop.set()
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            self._socket.close()
            self._socket = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        self._thread = None
        # Only our own socket file: an agent started again meanwhile (a stop on one thread
        # racing a start on another) has bound a new one at the same path.
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    def forget_after_fork(self) -> None:
        """In a forked child: the listening socket and its path are the parent's."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._thread = None
        self._slow = None


def _send(connection: socket.socket, reply: dict[str, Any]) -> None:
    connection.sendall(json.dumps(reply, default=str).encode() + b"\n")
