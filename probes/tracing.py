"""tracemalloc: traced and peak bytes while tracing is on, and the top allocation sites.

Starting tracemalloc is the user's choice (``trace=True`` / ``DIAG_TRACE=1``) or an
escalation's, never the default: it slows allocation-heavy code 9 to 18 times. While it is off
the probe waits and says so. A snapshot copies every trace, so the top sites are refreshed on a
cadence that keeps that copy under 1 % of wall time; sites beyond the top N are summed into one
``site="other"`` row so the label set stays bounded.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from typing import TYPE_CHECKING

from diag import OWN_DIRS
from diag.model import Sample, labels_of
from probes.base import Cadence, ProbeUnavailable

if TYPE_CHECKING:
    from probes.agent import ProbeHooks

#: Traces that are nobody's allocation site: tracemalloc, the import system, diag itself.
IGNORED_TRACES = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
    *(tracemalloc.Filter(False, os.path.join(d, "*")) for d in OWN_DIRS),
)


#: tracemalloc.start as the host sees it while the agent traces nothing of its own.
_host_start = tracemalloc.start
_ours = False  # the agent's own tracing runs (start_tracing, not yet stop_tracing)
_claimed = False  # someone else called tracemalloc.start() while it ran


def _start_noted(nframe: int = 1) -> None:
    """tracemalloc.start while the agent's own tracing runs: a no-op for the tracing, but
    from now on the caller believes tracing is theirs, and the agent must not stop it."""
    global _claimed
    _claimed = True
    _host_start(nframe)


def start_tracing(frames: int) -> None:
    """Start tracing as the agent's own (tracing must be off): until ``stop_tracing``, a
    ``tracemalloc.start()`` by anyone else makes it theirs."""
    global _claimed, _ours
    _host_start(frames)
    _ours, _claimed = True, False
    tracemalloc.start = _start_noted


def stop_tracing() -> None:
    """Stop the tracing ``start_tracing`` began, unless it is someone else's by now (they
    called tracemalloc.start() since) or someone stopped it already. Once: a second call
    (a window stopped early, then at its end) must not stop tracing started since."""
    global _ours
    if not _ours:
        return
    _ours = False
    if tracemalloc.start is _start_noted:
        tracemalloc.start = _host_start
    if not _claimed and tracemalloc.is_tracing():
        tracemalloc.stop()


def site_label(filename: str, lineno: int) -> str:
    """``package/module.py:42``: the last two path parts keep labels short yet recognisable."""
    parts = filename.replace("\\", "/").split("/")
    return f"{'/'.join(parts[-2:])}:{lineno}"


def site_samples(sizes: dict[str, float], top: int) -> list[Sample]:
    """``tracemalloc_top_bytes`` for the ``top`` biggest sites, the rest summed as
    ``site="other"``: the label set stays bounded whatever the host allocates."""
    ranked = sorted(sizes.items(), key=lambda kv: -kv[1])
    rest = sum(size for _, size in ranked[top:])
    return [
        Sample("tracemalloc_top_bytes", float(size), labels_of(site=site))
        for site, size in [*ranked[:top], ("other", rest)]
    ]


class TracemallocProbe:
    name = "tracemalloc"

    def __init__(
        self,
        *,
        start: bool = False,
        frames: int = 1,
        top: int = 10,
        site_interval: float = 30.0,
        cadence: Cadence | None = None,
        fallback_sites: Callable[[], list[Sample]] = list,
    ) -> None:
        self.top = top
        self._cadence = cadence or Cadence(site_interval, budget=0.01)
        self._sites: list[Sample] = []
        self._start, self._frames = start, frames
        self._started_by_us = False
        #: The last escalation window's sites, reported while tracemalloc is off.
        self.fallback_sites = fallback_sites

    def use_hooks(self, hooks: ProbeHooks) -> None:
        """Built by the user and given to an agent: report its escalation windows' sites."""
        self.fallback_sites = hooks.window_sites

    def sample(self) -> list[Sample]:
        if self._start:
            # Started on the first tick, not at construction, and stopped again by close():
            # the agent's life bounds the slowdown. Once: a host that stops tracing later
            # decided so, and tracing it already runs is left as the host set it.
            self._start = False
            if not tracemalloc.is_tracing():
                start_tracing(self._frames)
                self._started_by_us = True
        if not tracemalloc.is_tracing():
            if self._started_by_us:  # stopped by someone else: not ours to stop again
                self._started_by_us = False
                stop_tracing()
            sites = self.fallback_sites()
            if sites:
                return sites
            raise ProbeUnavailable("tracemalloc is off (start it with trace=True or DIAG_TRACE=1)")
        traced, peak = tracemalloc.get_traced_memory()
        if self._cadence.due():
            self._cadence.run(self._refresh_sites)
        return [
            Sample("tracemalloc_traced_bytes", float(traced)),
            Sample("tracemalloc_peak_bytes", float(peak)),
            *self._sites,
        ]

    def _refresh_sites(self) -> None:
        snapshot = tracemalloc.take_snapshot().filter_traces(IGNORED_TRACES)
        sites: dict[str, float] = {}
        for stat in snapshot.statistics("lineno"):
            frame = stat.traceback[0]
            label = site_label(frame.filename, frame.lineno)
            sites[label] = sites.get(label, 0.0) + stat.size
        self._sites = site_samples(sites, self.top)

    def close(self) -> None:
        if self._started_by_us:
            self._started_by_us = False
            stop_tracing()

    def reset_after_fork(self) -> None:
        self._sites = []
        self._cadence.reset()
