"""The leaking code of the leaking corpus: each function leaves something behind per call,
kept by a different kind of owner."""

from __future__ import annotations

import asyncio
import collections
import ctypes
import functools
import io
import itertools
import logging
import socket
import subprocess
import sys
import threading
import uuid

_ids = itertools.count()

# -- module dicts, lists, sets, deques ------------------------------------------------------
_REGISTRY: dict[int, object] = {}
_BY_USER: dict[str, list[object]] = {}
_LOG_LINES: list[str] = []
_SEEN: set[str] = set()
_HISTORY: collections.deque[bytes] = collections.deque()
_ERRORS: list[object] = []


class Record:
    def __init__(self, n: int) -> None:
        self.n = n
        self.payload = [n] * 16


def register() -> None:
    _REGISTRY[next(_ids)] = Record(1)


def remember_for_user() -> None:
    _BY_USER.setdefault("alice", []).append(Record(2))


def log_line() -> None:
    _LOG_LINES.append(f"request {next(_ids)} served in {0.25:.2f} s: " + "x" * 2048)


def see() -> None:
    _SEEN.add(str(uuid.uuid4()))


def keep_history() -> None:
    _HISTORY.append(b"frame" * 200 + str(next(_ids)).encode())


def keep_error() -> None:
    try:
        raise ValueError(f"bad request {next(_ids)}")
    except ValueError:
        _ERRORS.append(sys.exc_info())


# -- class attributes, closures, defaultdicts, attribute chains ------------------------------
class Session:
    instances: list[Session] = []  # noqa: RUF012 (the leak)

    def __init__(self) -> None:
        self.buffer = bytearray(256)
        Session.instances.append(self)


def _make_recorder():  # a list only a closure holds
    calls: list[tuple[int, str]] = []

    def record(what: str) -> None:
        calls.append((next(_ids), what))

    return record


record = _make_recorder()

_EVENTS: collections.defaultdict[str, list[object]] = collections.defaultdict(list)


def add_event() -> None:
    _EVENTS[f"user-{next(_ids)}"].append({"kind": "click"})


class Cache:
    def __init__(self) -> None:
        self.entries: list[object] = []


class Service:
    def __init__(self) -> None:
        self.cache = Cache()


class App:
    def __init__(self) -> None:
        self.service = Service()


APP = App()


def handle() -> None:
    APP.service.cache.entries.append({"id": next(_ids), "body": "y" * 100})


@functools.cache
def lookup(key: int) -> list[int]:
    return [key] * 32


def lookup_new() -> None:
    lookup(next(_ids))


def add_handler() -> None:
    logging.getLogger("leaky.requests").addHandler(logging.NullHandler())


# -- tensors and arrays ---------------------------------------------------------------------
_AUDIO_CACHE: dict[int, object] = {}
_TENSORS: list[object] = []
_FRAMES: list[object] = []


def synthesize() -> None:
    import torch

    _AUDIO_CACHE[next(_ids)] = torch.randn(16000)


def keep_tensor() -> None:
    import torch

    _TENSORS.append(torch.zeros(4096))


def keep_array() -> None:
    import numpy

    _FRAMES.append(numpy.zeros(2048))


# -- buffers that grow in place, and memory only C code holds --------------------------------
_SPOOL = io.BytesIO()


def spool_audio() -> None:
    _SPOOL.write(b"\0" * 32_000)


_LIBC = ctypes.CDLL(None)
_LIBC.malloc.restype = ctypes.c_void_p
_LIBC.malloc.argtypes = [ctypes.c_size_t]
_LIBC.free.argtypes = [ctypes.c_void_p]
_NATIVE = (ctypes.c_void_p * 64)()  # slots made beforehand: no Python container grows
_native_slots = iter(range(64))


def keep_native() -> None:
    """A C library's buffer that is never freed (1 MiB a call)."""
    _NATIVE[next(_native_slots)] = _LIBC.malloc(1 << 20)


class Journal:
    """What the code under test is handed (a fixture makes it) and keeps adding to."""

    def __init__(self) -> None:
        self.entries: list[Record] = []


def record_into(journal: Journal) -> None:
    journal.entries.append(Record(next(_ids)))


# -- resources ------------------------------------------------------------------------------
_FILES: list[object] = []
_CONNS: list[socket.socket] = []
_CHILDREN: list[subprocess.Popen[bytes]] = []
_STOP = threading.Event()


def open_log(path: str) -> None:
    _FILES.append(open(path, "rb"))  # noqa: SIM115


def connect() -> None:
    _CONNS.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))


def start_poller() -> None:
    threading.Thread(target=_STOP.wait, name="poller", daemon=True).start()


def spawn() -> None:
    _CHILDREN.append(subprocess.Popen([sys.executable, "-c", "pass"]))


async def wait_forever() -> None:
    await asyncio.sleep(3600)  # the loop's timer keeps the task alive


def cleanup() -> None:
    """Release what the resource leaks hold (after a run)."""
    _STOP.set()
    for f in _FILES:
        f.close()  # type: ignore[attr-defined]
    for s in _CONNS:
        s.close()
    for p in _CHILDREN:
        p.wait()
    for pointer in _NATIVE:
        _LIBC.free(pointer)  # free(NULL) does nothing
