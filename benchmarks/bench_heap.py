"""Retained size at the root that owns it, on a large heap: diag's census against guppy3 and
objgraph, on the same heap, in the same run.

The heap: more than a million gc objects of ordinary service state (sessions: instances,
dicts, lists, strings), 200,000 leaked small objects (bytes, dicts, instances of a class with
``__slots__``) spread over 5,000 lists under three roots of three kinds, and 10,000 torch
tensors in a module-level dict:

- ``bench_heap_service.USER_AUDIO``: a module global, ``defaultdict(list)`` of bytes;
- ``bench_heap_service.SessionStore.turns``: a class attribute, a dict of lists of dicts;
- ``thread 'bench-mixer' › mix_forever() › pending``: a thread's local, a list of lists of
  ``__slots__`` instances.

Each root's true retained size is computed as the heap is built (every object it alone
holds, by ``sys.getsizeof``), so the figures are checked, not only printed.

Baselines, measured in the same run on the same heap:

- guppy3: ``hpy().heap()`` (the whole heap, partitioned by type), and its retained-size view,
  ``hpy().iso(root).domisize`` (the size each root dominates) for the three roots;
- objgraph: ``show_growth`` (counts by type) and ``find_backref_chain`` from one leaked object
  to its module.

Targets: every root named with its retained size (within 10% of the truth) in <= 2 s of pause;
diag's extra memory during the dump (peak RSS over RSS before) <= 15% of the heap (RSS over
the interpreter with torch loaded).
"""

from __future__ import annotations

import argparse
import collections
import gc
import io
import sys
import threading
import time
import types
from contextlib import redirect_stdout
from typing import Any, ClassVar

import torch

from benchmarks import median, verdict
from benchmarks.bench_dump import Session, _status, measured_dump, print_walk_baseline

SERVICE = "bench_heap_service"
LEAKED = 200_000
LISTS = 5_000
TENSORS = 10_000
MIXER = "thread 'bench-mixer' › mix_forever() › pending"


class Frame:
    """A leaked audio frame: a ``__slots__`` instance."""

    __slots__ = ("payload", "seq")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.payload = b"\0" * 64 + seq.to_bytes(4, "little")


def _size(*objects: Any) -> int:
    return sum(sys.getsizeof(o) for o in objects)


class Service:
    """The heap, and each root's true retained size, counted as it is built."""

    def __init__(self, objects: int) -> None:
        module = types.ModuleType(SERVICE)
        sys.modules[SERVICE] = module
        self.module = module
        self.truth: dict[str, int] = {}
        per_session = 6  # gc objects per Session: itself, its history, 2 turns and their tags
        module.SESSIONS = [Session(i) for i in range(objects // per_session)]
        module.AUDIO_CACHE = {f"req-{i}": torch.zeros(256) for i in range(TENSORS)}
        per_root = LEAKED // 3
        lists = LISTS // 3

        # 1. A module global: defaultdict(list) of bytes, keyed by user.
        audio: collections.defaultdict[str, list[bytes]] = collections.defaultdict(list)
        for i in range(per_root):
            audio[f"user-{i % lists}"].append(b"%d" % i + b"\0" * 100)
        module.USER_AUDIO = audio
        self.truth[f"{SERVICE}.USER_AUDIO"] = _size(audio, *audio, *audio.values()) + sum(
            _size(*chunks) for chunks in audio.values()
        )

        # 2. A class attribute: a dict of lists of small dicts.
        class SessionStore:
            turns: ClassVar[dict[int, list[dict[str, int]]]] = {}

        SessionStore.__qualname__ = "SessionStore"
        SessionStore.__module__ = SERVICE
        module.SessionStore = SessionStore
        for i in range(per_root):
            SessionStore.turns.setdefault(i % lists, []).append({"n": i, "t": i * 2})
        turns = SessionStore.turns
        turns = SessionStore.turns
        self.truth[f"{SERVICE}.SessionStore.turns"] = _size(turns) + sum(
            _size(key, chunk) - (_size(key) if key <= 256 else 0)  # small ints are everyone's
            + sum(_size(d) + sum(_size(v) for v in d.values() if v > 256) for d in chunk)
            for key, chunk in turns.items()
        )  # fmt: skip

        # 3. A thread's local: a list of lists of __slots__ instances.
        ready = threading.Event()
        self.stop = threading.Event()
        held: list[int] = [0]
        rest = LISTS - 2 * lists
        count = LEAKED - 2 * per_root
        stop = self.stop

        def mix_forever() -> None:
            pending: list[list[Frame]] = [[] for _ in range(rest)]
            for i in range(count):
                pending[i % rest].append(Frame(i))
            held[0] = (
                _size(pending, *pending)
                + sum(_size(f, f.payload) + (_size(f.seq) if f.seq > 256 else 0)
                      for chunk in pending for f in chunk)
            )  # fmt: skip
            ready.set()
            stop.wait()

        self.thread = threading.Thread(target=mix_forever, name="bench-mixer", daemon=True)
        self.thread.start()
        ready.wait()
        self.truth[MIXER] = held[0]

    def one_leaked(self) -> Any:
        return self.module.USER_AUDIO["user-7"][3]

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def guppy_figures(service: Service) -> tuple[float, float, dict[str, int]]:
    """guppy3's whole-heap view and its dominated size of each root, timed."""
    from guppy import hpy

    h = hpy()
    started = time.perf_counter()
    heap = h.heap()
    str(heap.bytype)  # the table a user reads
    heap_seconds = time.perf_counter() - started
    del heap
    module = service.module
    roots = {
        f"{SERVICE}.USER_AUDIO": module.USER_AUDIO,
        f"{SERVICE}.SessionStore.turns": module.SessionStore.turns,
    }
    started = time.perf_counter()
    sizes = {name: int(h.iso(obj).domisize) for name, obj in roots.items()}
    domisize_seconds = time.perf_counter() - started
    return heap_seconds, domisize_seconds, sizes


def objgraph_figures(service: Service) -> tuple[float, float, int]:
    import objgraph

    started = time.perf_counter()
    with redirect_stdout(io.StringIO()):
        objgraph.show_growth(limit=10)
    growth_seconds = time.perf_counter() - started
    target = service.one_leaked()
    started = time.perf_counter()
    chain = objgraph.find_backref_chain(target, objgraph.is_proper_module)
    chain_seconds = time.perf_counter() - started
    del target
    return growth_seconds, chain_seconds, len(chain)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    objects = 200_000 if args.quick else 1_000_000
    runs = 1 if args.quick else 3

    gc.collect()
    interpreter = _status("VmRSS")
    service = Service(objects)
    gc.collect()
    heap_objects = len(gc.get_objects())
    heap_bytes = _status("VmRSS") - interpreter
    print(
        f"heap: {heap_objects:,} gc objects, {heap_bytes / 2**20:.0f} MiB over the interpreter; "
        f"{LEAKED:,} leaked objects in {LISTS:,} lists under 3 roots, {TENSORS:,} tensors"
    )

    pauses, extras, cpu = [], [], []
    dump = None
    for _ in range(runs):
        dump = None  # the last dump's owners freed before the next dump measures its peak
        run = measured_dump(top=20)
        dump = run.dump
        cpu.append(run.cpu_seconds)
        extras.append(run.extra_bytes)
        pauses.append(dump.pause_seconds)
    assert dump is not None
    owners = {o.path: o for o in dump.owners}
    pause = median(pauses)
    extra = max(extras)
    share = extra / heap_bytes

    print(
        f"diag dump: paused {pause:.2f} s (median of {runs}; {median(cpu):.2f} s of CPU: on a "
        f"shared machine the pause is longer), complete={dump.complete}"
    )
    if not args.quick:
        print_walk_baseline(pause, top=20)
    named = True
    for path, truth in service.truth.items():
        owner = owners.get(path)
        got = owner.retained_bytes if owner is not None else 0
        close = owner is not None and abs(got - truth) <= 0.10 * truth
        named = named and close
        root = owner.root if owner is not None else "-"
        print(
            f"  {path}: retains {got / 2**20:.1f} MiB (true {truth / 2**20:.1f} MiB), "
            f"root {root}: {'ok' if close else 'WRONG'}"
        )
    tensors = owners.get(f"{SERVICE}.AUDIO_CACHE")
    print(
        f"  {SERVICE}.AUDIO_CACHE: "
        f"{tensors.objects if tensors else 0:,} tensors, "
        f"{(tensors.retained_bytes if tensors else 0) / 2**20:.1f} MiB"
    )
    print(
        f"diag extra memory: {extra / 2**20:.1f} MiB peak over RSS = {share:.1%} of the heap "
        f"({heap_bytes / 2**20:.0f} MiB)"
    )

    heap_seconds, domisize_seconds, guppy_sizes = guppy_figures(service)
    print(f"guppy3 hpy().heap() + .bytype: {heap_seconds:.2f} s (no owners, sizes by type)")
    print(
        f"guppy3 iso(root).domisize for 2 roots (given the objects): {domisize_seconds:.2f} s: "
        + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in guppy_sizes.items())
    )
    growth_seconds, chain_seconds, chain_length = objgraph_figures(service)
    print(
        f"objgraph.show_growth: {growth_seconds:.2f} s (counts by type); "
        f"find_backref_chain for one leaked object: {chain_seconds:.2f} s ({chain_length} steps)"
    )
    service.close()

    if args.quick:
        return 0
    checks = [
        ("every root named with its retained size (within 10%)", named),
        ("tensors' holder named", tensors is not None and tensors.objects == TENSORS),
        ("pause <= 2 s", pause <= 2.0),
        ("extra memory <= 15% of the heap", share <= 0.15),
    ]
    for name, ok in checks:
        print(f"{name}: {verdict(ok)}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
