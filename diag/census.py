"""What holds the memory: live tensors and arrays counted by storage, grouped by holder.

A census walks the gc's objects once: torch tensors (CPU and CUDA) counted by their storage, so
views and tensors sharing a storage count once; numpy arrays by the array that owns the buffer.
``take_dump`` then finds who holds them (``diag.owners``), and reports, per holder, the bytes it
retains, what it holds (type, dtype, device), and where the objects were allocated when
tracemalloc was tracing (``tracemalloc.get_object_traceback``; for a tensor that is where the
tensor was made, even though torch allocates its bytes outside Python's allocator).

Nothing here imports torch or numpy: they are looked up in ``sys.modules``, as the host left them.
"""

from __future__ import annotations

import ast
import functools
import gc
import os
import sys
import time
import tracemalloc
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from diag.owners import find_holders


@dataclass
class Content:
    type: str  # "torch.Tensor float32", "numpy.ndarray float64"
    device: str
    count: int
    bytes: int


@dataclass
class Frame:
    file: str
    line: int
    function: str


@dataclass
class Stack:
    bytes: int
    count: int
    frames: list[Frame]


@dataclass
class Owner:
    path: str
    kind: str
    retained_bytes: int
    objects: int
    growth_bytes_per_second: float | None
    contents: list[Content]
    allocation_stacks: list[Stack] = field(default_factory=list)


@dataclass
class Dump:
    pid: int
    taken_at: float
    pause_seconds: float
    complete: bool
    cause: dict[str, Any]
    owners: list[Owner]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _measure(obj: Any, torch: Any, numpy: Any) -> tuple[str, str, tuple[Any, ...], int] | None:
    """(kind, device, storage key, bytes) for a tensor or an owning array; None otherwise."""
    kind = type(obj)
    if torch is not None and issubclass(kind, torch.Tensor):
        try:
            storage = obj.untyped_storage()
            size = int(storage.nbytes())
            device = str(obj.device)
            key = (device, int(storage.data_ptr()), size)
        except Exception:  # meta tensors, tensor subclasses without storage
            return None
        dtype = str(obj.dtype).replace("torch.", "")
        return f"torch.Tensor {dtype}", device, key, size
    if numpy is not None and kind is numpy.ndarray:
        if obj.base is not None:
            return None  # a view: the owning array counts the buffer
        return f"numpy.ndarray {obj.dtype}", "cpu", ("numpy", id(obj)), int(obj.nbytes)
    return None


def _stack_of(obj: Any, user_only: bool) -> tuple[Frame, ...] | None:
    # None where tracemalloc cannot find the object's block: on Python 3.11 that is every
    # object with a managed dict (torch tensors among them), a CPython limitation.
    traceback = tracemalloc.get_object_traceback(obj)
    if traceback is None:
        return None
    # tracemalloc orders frames oldest first; a stack reads from the allocation outwards.
    frames = [
        Frame(f.filename, f.lineno, function_at(f.filename, f.lineno)) for f in reversed(traceback)
    ]
    if user_only:
        kept = [f for f in frames if not _is_library(f.file)]
        frames = kept or frames
    return tuple(frames[:8])


def _is_library(path: str) -> bool:
    return any(part in path for part in ("site-packages", "/torch/", "/diag/", "/probes/",
                                          "/lib/python3"))  # fmt: skip


def take_dump(top: int = 10, time_budget: float = 10.0, user_frames_only: bool = True) -> Dump:
    """Who holds the process's tensors and arrays, biggest first."""
    started = time.monotonic()
    torch = sys.modules.get("torch")
    numpy = sys.modules.get("numpy")
    measured: dict[int, tuple[str, str, tuple[Any, ...], int]] = {}
    targets: list[Any] = []
    for obj in gc.get_objects():
        info = _measure(obj, torch, numpy)
        if info is not None:
            measured[id(obj)] = info
            targets.append(obj)
    remaining = max(time_budget - (time.monotonic() - started), 0.1)
    ownership = find_holders(targets, time_budget=remaining)
    del targets
    owners = []
    for holder in ownership.holders:
        seen: set[tuple[Any, ...]] = set()
        contents: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        stacks: dict[tuple[Frame, ...], list[int]] = defaultdict(lambda: [0, 0])
        retained = 0
        for obj in holder.objects:
            kind, device, key, size = measured[id(obj)]
            counted = 0 if key in seen else size  # shared storages and views count once
            seen.add(key)
            retained += counted
            entry = contents[(kind, device)]
            entry[0] += 1
            entry[1] += counted
            stack = _stack_of(obj, user_frames_only) if tracemalloc.is_tracing() else None
            if stack is not None:
                stacks[stack][0] += counted
                stacks[stack][1] += 1
        owners.append(
            Owner(
                path=holder.path,
                kind=holder.kind,
                retained_bytes=retained,
                objects=holder.count,
                growth_bytes_per_second=None,
                contents=[
                    Content(kind, device, count, size)
                    for (kind, device), (count, size) in sorted(
                        contents.items(), key=lambda kv: -kv[1][1]
                    )
                ],
                allocation_stacks=[
                    Stack(size, count, list(frames))
                    for frames, (size, count) in sorted(stacks.items(), key=lambda kv: -kv[1][0])[
                        :3
                    ]
                ],
            )
        )
    owners.sort(key=lambda o: -o.retained_bytes)
    return Dump(
        pid=os.getpid(),
        taken_at=time.time(),
        pause_seconds=time.monotonic() - started,
        complete=ownership.complete,
        cause={},
        owners=owners[:top],
    )


@functools.lru_cache(maxsize=256)
def _functions_of(path: str) -> tuple[tuple[int, int, str], ...]:
    """(first line, last line, name) of every function defined in a source file."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return ()
    return tuple(
        (node.lineno, node.end_lineno or node.lineno, node.name)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    )


def function_at(path: str, line: int) -> str:
    """The innermost function around ``line`` of ``path``, or "<module>"."""
    enclosing = [
        (first, name) for first, last, name in _functions_of(path) if first <= line <= last
    ]
    return max(enclosing)[1] if enclosing else "<module>"
