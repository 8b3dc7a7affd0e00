"""The Python and C heaps of this process: gc, Python's allocator, glibc malloc.

Every tick: gc collections per generation (``gc.get_stats``, sub-microsecond), glibc's
``mallinfo2`` (in use, free but retained, mmapped) and ``sys.getallocatedblocks()`` (unless its
arena walk would cost more than 0.1 % of wall time).
Per-generation tracked-object counts need ``gc.get_objects`` (6 ms for 165k objects, with the
GIL held), so they refresh on the detail cadence only.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable

from diag.malloc import MallInfo2, in_use, load_mallinfo2
from diag.model import Sample, labels_of
from probes.base import Cadence

_GENERATION_LABELS = tuple(labels_of(generation=str(i)) for i in range(3))


class HeapProbe:
    name = "heap"

    def __init__(
        self,
        *,
        detail_interval: float = 30.0,
        cadence: Cadence | None = None,
        blocks_cadence: Cadence | None = None,
        mallinfo2: Callable[[], MallInfo2] | None = None,
    ) -> None:
        # gc.get_objects holds the GIL for its whole walk (15 ms for 270k objects): besides
        # the detail interval, keep its stalls under 0.01 % of wall time.
        self._cadence = cadence or Cadence(detail_interval, budget=0.0001)
        # getallocatedblocks walks every arena (27 µs here, ~1 ms on a GiB of small objects):
        # every tick unless that would cost more than 0.1 % of wall time.
        self._blocks_cadence = blocks_cadence or Cadence(0.0)
        self._blocks: list[Sample] = []
        self._tracked: list[Sample] = []
        if mallinfo2 is None:
            self._mallinfo2, reason = load_mallinfo2()
        else:
            self._mallinfo2, reason = mallinfo2, None
        self.notes: tuple[str, ...] = (reason,) if reason else ()

    def sample(self) -> list[Sample]:
        out: list[Sample] = []
        for labels, stats in zip(_GENERATION_LABELS, gc.get_stats(), strict=False):
            out.append(Sample("gc_collections_total", float(stats["collections"]), labels))
            out.append(Sample("gc_collected_objects_total", float(stats["collected"]), labels))
            out.append(
                Sample("gc_uncollectable_objects_total", float(stats["uncollectable"]), labels)
            )
        if self._blocks_cadence.due():
            self._blocks_cadence.run(self._count_blocks)
        out.extend(self._blocks)
        if self._mallinfo2 is not None:
            info = self._mallinfo2()
            out.append(Sample("malloc_in_use_bytes", float(in_use(info))))
            out.append(Sample("malloc_free_retained_bytes", float(info.fordblks)))
            out.append(Sample("malloc_mmapped_bytes", float(info.hblkhd)))
        if self._cadence.due():
            self._cadence.run(self._count_tracked)
        out.extend(self._tracked)
        return out

    def _count_blocks(self) -> None:
        self._blocks = [Sample("python_allocated_blocks", float(sys.getallocatedblocks()))]

    def _count_tracked(self) -> None:
        self._tracked = [
            Sample("gc_tracked_objects", float(len(gc.get_objects(generation))), labels)
            for generation, labels in enumerate(_GENERATION_LABELS)
        ]

    def reset_after_fork(self) -> None:
        self._tracked = []
        self._blocks = []
        self._cadence.reset()
        self._blocks_cadence.reset()
