"""Prometheus exposition: a collector that only reads the latest tick, never runs a probe.

Each source is (extra labels, samples): the agent's own latest tick with no extra labels, and,
on a multi-worker server, each live worker's published tick with ``worker="N"``. Families are
typed and documented from the catalog in ``diag.metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from diag.metrics import spec_of_sample
from diag.model import Labels, Sample

Source = tuple[Labels, Sequence[Sample]]


class TickCollector(Collector):
    def __init__(self, sources: Callable[[], Iterable[Source]], namespace: str = "diag") -> None:
        self._sources = sources
        self._prefix = f"{namespace}_" if namespace else ""

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for extra, samples in self._sources():
            for sample in samples:
                spec = spec_of_sample(sample.name)
                key = spec.name if spec else sample.name
                family = families.get(key)
                if family is None:
                    family = families[key] = self._family(key)
                labels = dict(sample.labels)
                labels.update(extra)
                sample_name = self._prefix + sample.name
                family.add_sample(sample_name, labels, sample.value)
        yield from families.values()

    def _family(self, name: str) -> Metric:
        spec = spec_of_sample(name)
        kind = spec.kind if spec else "gauge"
        doc = spec.help if spec else "diag sample"
        family_name = self._prefix + name
        if kind == "counter" and family_name.endswith("_total"):
            family_name = family_name[: -len("_total")]
        return Metric(family_name, doc, kind)


def make_registry(collector: Collector) -> CollectorRegistry:
    """A private registry: the host's own default registry is never touched."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
