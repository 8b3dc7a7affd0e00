"""Bounded in-memory series: a fixed-size ring of (time, value) per series, a cap on series.

The agent lives inside someone else's service, so its memory must not grow with uptime or with
what the host does: each ring is preallocated (16 bytes a sample) and a new series beyond
``max_series`` is refused and counted instead of stored.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

from diag.model import Labels, Sample, series_key


class Ring:
    """The newest ``capacity`` (t, value) pairs of one series."""

    __slots__ = ("_next", "_size", "times", "values")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.times = array("d", bytes(8 * capacity))
        self.values = array("d", bytes(8 * capacity))
        self._next = 0
        self._size = 0

    @property
    def capacity(self) -> int:
        return len(self.times)

    def __len__(self) -> int:
        return self._size

    def append(self, t: float, value: float) -> None:
        i = self._next
        self.times[i] = t
        self.values[i] = value
        i += 1
        self._next = 0 if i == len(self.times) else i
        if self._size < i:
            self._size = i

    def items(self) -> list[tuple[float, float]]:
        """Oldest first."""
        start = (self._next - self._size) % len(self.times)
        order = [(start + i) % len(self.times) for i in range(self._size)]
        return [(self.times[i], self.values[i]) for i in order]

    @property
    def nbytes(self) -> int:
        return self.times.itemsize * len(self.times) * 2


class SeriesStore:
    def __init__(self, capacity: int = 2048, max_series: int = 512) -> None:
        self.capacity = capacity
        self.max_series = max_series
        self.dropped_series = 0
        # Keyed by (name, labels): hashing that tuple is cheaper than building a key string
        # for every sample of every tick.
        self._rings: dict[tuple[str, Labels], Ring] = {}

    def add(self, t: float, samples: Iterable[Sample]) -> None:
        rings = self._rings
        for sample in samples:
            key = (sample.name, sample.labels)
            ring = rings.get(key)
            if ring is None:
                if len(rings) >= self.max_series:
                    self.dropped_series += 1
                    continue
                ring = rings[key] = Ring(self.capacity)
            # Ring.append, inlined: this runs for every sample of every tick.
            i = ring._next
            ring.times[i] = t
            ring.values[i] = sample.value
            i += 1
            ring._next = 0 if i == len(ring.times) else i
            if ring._size < i:
                ring._size = i

    def get(self, name: str, labels: Labels = ()) -> list[tuple[float, float]]:
        ring = self._rings.get((name, labels))
        return ring.items() if ring is not None else []

    def summed(self, name: str) -> list[tuple[float, float]]:
        """``name`` over all its label sets (the devices of a CUDA series), summed per time."""
        totals: dict[float, float] = {}
        for (series_name, _), ring in list(self._rings.items()):
            if series_name == name:
                for t, value in ring.items():
                    totals[t] = totals.get(t, 0.0) + value
        return sorted(totals.items())

    def names(self) -> list[str]:
        return [series_key(name, labels) for name, labels in self._rings]

    def clear(self) -> None:
        self._rings.clear()
        self.dropped_series = 0

    def __len__(self) -> int:
        return len(self._rings)

    @property
    def nbytes(self) -> int:
        return len(self._rings) * self.capacity * 16  # every ring is preallocated alike

    @property
    def max_nbytes(self) -> int:
        """The most this store can ever hold, whatever the host does."""
        return self.max_series * self.capacity * 16
