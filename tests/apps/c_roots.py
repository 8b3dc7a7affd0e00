"""A service whose tensors only the interpreter's C state keeps alive, one root kind per
mode: ``python tests/apps/c_roots.py MODE`` (under ``diag run``). It prints ``ready`` once
they are held, then waits to be killed.

Modes: ``context`` (a contextvar set in a thread), ``atexit`` (an atexit callback's partial),
``atexit_args`` (the arguments atexit keeps for a callback),
``finalize`` (a weakref.finalize callback's arguments), ``tasks`` (pending asyncio tasks
awaiting an Event), ``thread_local`` (a threading.local of a named thread), ``signal`` (a
signal handler's closure), ``c`` (a partial that C code holds a reference to, nothing more).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import ctypes
import functools
import signal
import sys
import threading
import weakref
from typing import Any

import torch

#: Each mode keeps this many 16 KiB tensors: the biggest owner in the process by far.
COUNT = 200

request_log: contextvars.ContextVar[list[Any]] = contextvars.ContextVar("request_log")
_tls = threading.local()
STOP: asyncio.Event | None = None
session: Any = None


def synthesize() -> torch.Tensor:
    return torch.zeros(4096)


def chunks() -> list[torch.Tensor]:
    return [synthesize() for _ in range(COUNT)]


def remove_tmp(*paths: Any) -> None:
    """An exit callback; never run (the test kills the process)."""


def ready() -> None:
    print("ready", flush=True)


def in_thread(name: str, body: Any) -> None:
    """Run ``body`` in a thread called ``name`` that then waits forever; return once done."""
    done = threading.Event()

    def run() -> None:
        body()
        done.set()
        threading.Event().wait()

    threading.Thread(target=run, name=name, daemon=True).start()
    done.wait()


def make_handler() -> Any:
    kept = chunks()

    def on_usr1(signum: int, frame: Any) -> None:
        kept.clear()

    return on_usr1


class Session:
    """An object whose end a weakref.finalize watches."""


async def push_chunks() -> None:
    assert STOP is not None
    chunks = [synthesize() for _ in range(COUNT // 20)]
    await STOP.wait()
    chunks.clear()


async def serve_tasks() -> None:
    global STOP
    STOP = asyncio.Event()
    tasks = [asyncio.create_task(push_chunks()) for _ in range(20)]
    await asyncio.sleep(0)  # each task runs up to its await
    ready()
    await asyncio.gather(*tasks)


def main(mode: str) -> None:
    global session
    if mode == "context":
        in_thread("ctx-worker", lambda: request_log.set(chunks()))
    elif mode == "atexit":
        atexit.register(functools.partial(remove_tmp, chunks()))
    elif mode == "atexit_args":
        atexit.register(remove_tmp, chunks())
    elif mode == "finalize":
        session = Session()
        weakref.finalize(session, remove_tmp, chunks())
    elif mode == "thread_local":

        def fill() -> None:
            _tls.chunks = chunks()

        in_thread("worker-3", fill)
    elif mode == "signal":
        signal.signal(signal.SIGUSR1, make_handler())
    elif mode == "c":
        held = functools.partial(remove_tmp, chunks())
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(held))  # a reference only C code has
        del held
    elif mode == "tasks":
        asyncio.run(serve_tasks())
        return
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    ready()
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1])
