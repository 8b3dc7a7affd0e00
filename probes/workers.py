"""Multi-worker servers (gunicorn, uvicorn --workers): one /metrics port, every worker in it.

The process whose agent serves the port (the master) creates a private directory (mode 0700)
and names it in the environment (``DIAG_WORKER_DIR``, ``DIAG_SERVER_PID``), so workers started by
fork or by spawn find it. Each worker claims the lowest free slot by holding an flock on
``slot-N.lock`` and, after every tick, atomically replaces ``slot-N.json`` with its samples.
The master's collector exports them with ``worker="N"``. A worker that dies, even by SIGKILL,
releases its lock with its last file descriptor, so the master drops its series at the next
scrape and a replacement worker reuses the slot: the ``worker`` label stays bounded by the
number of workers, and no pid ever becomes a label.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Sequence

from diag.model import Labels, Sample, Tick

ENV_DIR = "DIAG_WORKER_DIR"
ENV_SERVER_PID = "DIAG_SERVER_PID"
MAX_SLOTS = 1024


def create_worker_directory() -> str:
    return tempfile.mkdtemp(prefix=f"diag-workers-{os.getpid()}-")


def _lock_path(directory: str, slot: int) -> str:
    return os.path.join(directory, f"slot-{slot}.lock")


def _data_path(directory: str, slot: int) -> str:
    return os.path.join(directory, f"slot-{slot}.json")


def _try_lock(path: str) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class WorkerPublisher:
    """The worker side: claims a slot and publishes each tick into it."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        for slot in range(MAX_SLOTS):
            fd = _try_lock(_lock_path(directory, slot))
            if fd is not None:
                self.slot, self._fd = slot, fd
                return
        raise RuntimeError(f"no free worker slot in {directory}")

    def publish(self, tick: Tick) -> None:
        document = {
            "pid": os.getpid(),
            "t": tick.t,
            "samples": [[s.name, s.value, list(s.labels)] for s in tick.samples],
        }
        path = _data_path(self.directory, self.slot)
        temporary = f"{path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as f:
                json.dump(document, f, separators=(",", ":"))
            os.replace(temporary, path)
        except FileNotFoundError:
            pass  # the master has exited and removed the directory: nobody is listening

    def close(self) -> None:
        """Give the slot up (at exit, or in a forked child that must claim its own)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_workers(directory: str) -> list[tuple[Labels, Sequence[Sample]]]:
    """Every live worker's latest samples; files of dead workers are removed."""
    out: list[tuple[Labels, Sequence[Sample]]] = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return out
    for name in sorted(names):
        if not (name.startswith("slot-") and name.endswith(".json")):
            continue
        slot = int(name[len("slot-") : -len(".json")])
        probe_fd = _try_lock(_lock_path(directory, slot))
        if probe_fd is not None:  # nobody holds the slot: that worker is gone
            try:
                os.unlink(_data_path(directory, slot))
            except FileNotFoundError:
                pass
            finally:
                os.close(probe_fd)
            continue
        try:
            with open(_data_path(directory, slot), encoding="utf-8") as f:
                document = json.load(f)
        except (FileNotFoundError, ValueError):
            continue
        samples = [
            Sample(name, float(value), tuple((k, v) for k, v in labels))
            for name, value, labels in document["samples"]
        ]
        out.append(((("worker", str(slot)),), samples))
    return out
