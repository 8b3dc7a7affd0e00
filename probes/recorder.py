"""Writes the agent's history: a start record, every tick, each change of a verdict's state,
findings and other events, a clean stop.

The run directory is ``<history root>/<UTC start>-<pid>``; a forked child starts its own run.
The root keeps the newest ``MAX_RUNS`` runs (those of live processes always).
A missing stop record is how ``diag report`` knows the process was killed.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from dataclasses import asdict
from typing import Any

from diag import __version__
from diag.detect import Verdict
from diag.history import HistoryWriter, WriterStats, prune_runs, run_name
from diag.model import Sample, Tick
from diag.procfs import boot_id
from diag.settings import Settings


def _limits() -> dict[str, Any]:
    """The limit that will kill the process, as the start record states it."""
    from probes.limits import LimitsProbe

    probe = LimitsProbe()
    try:
        samples = probe.sample()
    except Exception as exc:  # a start record without limits beats no start record
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        probe.close()
    out: dict[str, Any] = {}
    for sample in samples:
        if sample.name == "memory_limit_info":
            out["source"] = dict(sample.labels).get("source")
        elif sample.name in ("memory_limit_bytes", "cgroup_memory_limit_bytes",
                             "system_memory_total_bytes"):  # fmt: skip
            out[sample.name] = sample.value
    return out


def describe_process(settings: Settings) -> dict[str, Any]:
    torch = sys.modules.get("torch")
    return {
        "pid": os.getpid(),
        "command": list(getattr(sys, "orig_argv", sys.argv)),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "diag": __version__,
        "torch": getattr(torch, "__version__", None),
        "settings": {k: v for k, v in asdict(settings).items() if k != "problems"},
        "boot_id": boot_id(),
        "limits": _limits(),
    }


class HistoryRecorder:
    def __init__(self, root: str, settings: Settings, clock: Any = time.time) -> None:
        self.root = root
        self.settings = settings
        self._clock = clock
        self.writer: HistoryWriter | None = None

    def start(self) -> None:
        started = self._clock()
        run_dir = os.path.join(self.root, run_name(started, os.getpid()))
        self.writer = HistoryWriter(run_dir)
        self.writer.write_event("start", started, **describe_process(self.settings))
        prune_runs(self.root)  # each run is bounded; so is their number (forked workers)

    def record_tick(self, tick: Tick) -> None:
        if self.writer is not None:
            self.writer.write_samples(tick.t, tick.samples)

    def record_verdict(self, series: str, previous: Verdict | None, verdict: Verdict) -> None:
        if self.writer is not None:
            self.writer.write_event("verdict", verdict.t, series=series, **verdict.fields())

    def record_event(self, kind: str, **fields: Any) -> None:
        if self.writer is not None:
            self.writer.write_event(kind, self._clock(), **fields)

    @property
    def run_dir(self) -> str | None:
        return self.writer.run_dir if self.writer is not None else None

    def stop(self, reason: str = "stop", **fields: Any) -> None:
        """The stop record (``reason``: exit, stop, signal, os._exit), then the run is closed."""
        if self.writer is not None:
            self.writer.write_event("stop", self._clock(), reason=reason, **fields)
            self.writer.close()
            self.writer = None

    def abandon(self) -> None:
        """In a forked child: the parent's run is not ours to write to or to close."""
        self.writer = None

    def samples(self) -> list[Sample]:
        stats = self.writer.stats if self.writer is not None else WriterStats()
        return [
            Sample("history_written_bytes_total", float(stats.bytes_written)),
            Sample("history_write_errors_total", float(stats.write_errors)),
            Sample("history_disk_full", 1.0 if stats.disk_full else 0.0),
        ]
