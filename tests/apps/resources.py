"""A program that runs out of a resource, for the resource-exhaustion tests: ``python -m
tests.apps.resources MODE``, run under a low ``RLIMIT_NOFILE``.

- ``emfile``: the main thread opens files until ``open`` fails with ``EMFILE``, unhandled: the
  process ends of it (status 1).
- ``thread_emfile``: a worker thread does the same and dies of it; the main thread goes on and
  exits cleanly (status 0), as a server whose handler thread died would.

It prints ``ready`` once running and waits a few of the agent's ticks before it leaks.
"""

from __future__ import annotations

import os
import sys
import threading
import time

_LEAKED: list[object] = []


def accept_connections() -> None:
    """What a leaking server does: opens a descriptor per request and never closes it."""
    while True:
        _LEAKED.append(open(os.devnull, "rb"))  # noqa: SIM115
        if len(_LEAKED) % 8 == 0:
            time.sleep(0.05)  # slow enough for the agent to sample the climb


def main(mode: str) -> None:
    print("ready", flush=True)
    time.sleep(0.6)
    if mode == "emfile":
        accept_connections()
    elif mode == "thread_emfile":
        worker = threading.Thread(target=accept_connections, name="request-worker")
        worker.start()
        worker.join()
        for leaked in _LEAKED:  # the server notices and sheds them, then goes on
            leaked.close()  # type: ignore[attr-defined]
        _LEAKED.clear()
        time.sleep(0.6)  # a tick or two with the descriptors back
        print("went on", flush=True)
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1])
