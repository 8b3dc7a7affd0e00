"""A program that ends the way it is told to, for the endings tests: ``python -m
tests.apps.endings MODE``. It prints ``ready`` once it runs (and, in ``stubborn`` mode, once its
own SIGTERM handler and then the embedded agent are in place)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time


def synthesize(text: str) -> bytes:
    raise RuntimeError(f"the model cannot say {len(text)} characters")


def main(mode: str) -> None:
    if mode == "stubborn":
        # A host with its own SIGTERM handler before the agent starts: it logs the signal and
        # goes on serving (a slow graceful shutdown), so only a SIGKILL ends it.
        signal.signal(signal.SIGTERM, lambda signum, frame: print("draining", flush=True))
        if os.environ.get("ENDINGS_EMBED") == "1":
            import probes

            probes.start(interval=0.2)
    print("ready", flush=True)
    time.sleep(1.0)  # a few of the agent's ticks
    if mode == "segfault":
        ctypes.string_at(0)
    elif mode == "abort":  # what a C extension's failed assertion does
        ctypes.CDLL(None).abort()
    elif mode == "raise":
        synthesize("hello")
    elif mode == "os_exit":
        os._exit(3)
    elif mode in ("sleep", "stubborn"):
        for _ in range(600):
            time.sleep(0.1)
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1])
