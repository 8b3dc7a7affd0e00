"""glibc malloc's own accounting (``mallinfo2``): what native code holds, which neither the gc
nor tracemalloc sees. Shared by the agent's heap probe and the leak checks for tests."""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (field, ctypes.c_size_t)
        for field in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def load_mallinfo2() -> tuple[Callable[[], MallInfo2] | None, str | None]:
    """glibc's mallinfo2, or the reason it is not there (musl, macOS, glibc before 2.33)."""
    if not sys.platform.startswith("linux"):
        return None, f"malloc: glibc mallinfo2 is Linux-only (this is {sys.platform})"
    try:
        libc = ctypes.CDLL(None)
        func = libc.mallinfo2
    except (OSError, AttributeError):
        return None, "malloc: no glibc mallinfo2 (musl or glibc older than 2.33)"
    func.restype = MallInfo2
    func.argtypes = []
    return func, None


@functools.cache
def mallinfo2() -> Callable[[], MallInfo2] | None:
    """``load_mallinfo2``'s function, loaded once for the process (None where it is not
    there)."""
    return load_mallinfo2()[0]


def in_use(info: MallInfo2) -> int:
    """Bytes malloc has handed out and not had back: its arenas' chunks in use (the
    per-thread caches' chunks count as in use) and its own mmapped blocks."""
    return int(info.uordblks + info.hblkhd)
