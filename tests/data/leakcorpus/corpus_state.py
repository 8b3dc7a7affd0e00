"""Module-level state the clean corpus warms up: caches filled once, pools started lazily."""

from __future__ import annotations

import functools
import logging
import re
from concurrent.futures import ThreadPoolExecutor

CONFIG: dict[str, object] = {}
_POOL: ThreadPoolExecutor | None = None


def config(key: str) -> object:
    """A module-level cache filled on first use."""
    if key not in CONFIG:
        CONFIG[key] = {"key": key, "values": list(range(100))}
    return CONFIG[key]


@functools.lru_cache(maxsize=32)
def squares(n: int) -> list[int]:
    return [i * i for i in range(n)]


@functools.cache
def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def pool() -> ThreadPoolExecutor:
    """A thread pool started on first use (threads start as work arrives)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="corpus-pool")
    return _POOL


def logger() -> logging.Logger:
    log = logging.getLogger("corpus.app")
    if not log.handlers:
        log.addHandler(logging.NullHandler())
    return log


class Model:
    """A torch model built once, on first use (torch's first call sets up its threads)."""

    _instance: Model | None = None

    def __init__(self) -> None:
        import torch

        self.net = torch.nn.Sequential(
            torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)
        ).eval()

    @classmethod
    def get(cls) -> Model:
        if cls._instance is None:
            cls._instance = Model()
        return cls._instance
