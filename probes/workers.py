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
import re
import shutil
import tempfile
from collections.abc import Sequence

from diag.model import Labels, Sample, Tick
from diag.procfs import pid_alive, possible_pid

ENV_DIR = "DIAG_WORKER_DIR"
ENV_SERVER_PID = "DIAG_SERVER_PID"
MAX_SLOTS = 1024


def create_worker_directory() -> str:
    _remove_orphaned_directories(tempfile.gettempdir())
    return tempfile.mkdtemp(prefix=f"diag-workers-{os.getpid()}-")


def _remove_orphaned_directories(parent: str) -> None:
    """A master killed by SIGKILL leaves its directory behind: remove ours whose pid is gone."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        match = re.fullmatch(r"diag-workers-(\d+)-\w+", name)
        path = os.path.join(parent, name)
        # One named after no possible pid is not ours (it was no master's): left alone.
        pid = int(match.group(1)) if match is not None else 0
        if not possible_pid(pid) or pid_alive(pid):
            continue
        try:
            if os.stat(path).st_uid == os.getuid():
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def _lock_path(directory: str, slot: int) -> str:
    return os.path.join(directory, f"slot-{slot}.lock")


def _data_path(directory: str, slot: int) -> str:
    return os.path.join(directory, f"slot-{slot}.json")


def _claim_path(directory: str) -> str:
    return os.path.join(directory, "claim.lock")


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
        # Claim under the directory's claim lock: the master's sweep takes it too before it
        # try-locks a slot, so a free slot is never seen as taken while the master probes it.
        claim = os.open(_claim_path(directory), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(claim, fcntl.LOCK_EX)  # held for a scan of open+flock calls only
            for slot in range(MAX_SLOTS):
                fd = _try_lock(_lock_path(directory, slot))
                if fd is not None:
                    self.slot, self._fd = slot, fd
                    return
        finally:
            os.close(claim)
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
    # Probing a slot's lock would make a worker claiming slots right now skip that slot: probe
    # only while holding the claim lock. When a worker holds it, read without probing (a dead
    # worker's last samples may show once more; the next scrape sweeps them).
    try:
        claim = _try_lock(_claim_path(directory))
    except FileNotFoundError:
        return out
    try:
        for name in sorted(names):
            if not (name.startswith("slot-") and name.endswith(".json")):
                continue
            slot = int(name[len("slot-") : -len(".json")])
            if claim is not None and _sweep_if_free(directory, slot):
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
    finally:
        if claim is not None:
            os.close(claim)
    return out


def _sweep_if_free(directory: str, slot: int) -> bool:
    """True when nobody holds the slot (its worker is gone): its file is removed."""
    probe_fd = _try_lock(_lock_path(directory, slot))
    if probe_fd is None:
        return False
    try:
        os.unlink(_data_path(directory, slot))
    except FileNotFoundError:
        pass
    finally:
        os.close(probe_fd)
    return True
