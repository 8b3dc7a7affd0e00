"""Single key presses from the terminal while a live view runs (``diag watch``'s ``d`` key)."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any


class KeyReader:
    """Single key presses from the terminal while the live view runs (cbreak mode, restored on
    stop). Only where stdin is a terminal."""

    def __init__(self, fd: int, saved: Any) -> None:
        self._fd, self._saved = fd, saved
        self._keys: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._read, name="diag-keys", daemon=True).start()

    @classmethod
    def start(cls) -> KeyReader | None:
        import termios
        import tty

        if not sys.stdin.isatty():
            return None
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        return cls(fd, saved)

    def _read(self) -> None:
        import select

        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.2)
            if ready:
                key = os.read(self._fd, 1).decode(errors="replace").lower()
                with self._lock:
                    self._keys.add(key)

    def pressed(self, key: str) -> bool:
        with self._lock:
            found = key in self._keys
            self._keys.discard(key)
        return found

    def stop(self) -> None:
        import termios

        self._stop.set()
        termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
