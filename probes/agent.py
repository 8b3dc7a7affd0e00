"""The agent: one sampler, its Prometheus registry, the /metrics server, and its life cycle.

Roles: ``standalone`` (no port), ``server`` (serves /metrics, and its workers' series too) and
``worker`` (a process forked or spawned by a server; it publishes instead of binding the port).
The agent survives fork: the child gets its own sampler thread and, if the parent served the
port, becomes a worker. It stops at interpreter exit. Failures are logged, never raised.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import prometheus_client

from diag import watched
from diag.control import socket_path
from diag.detect import DetectorConfig
from diag.history import default_root
from diag.model import Clock, Sample, Tick, series_key
from diag.procfs import pid_alive
from diag.resources_census import RESOURCES
from diag.series import SeriesStore
from diag.settings import Settings
from probes import creation
from probes.analysis import GrowthAnalyzer, VerdictListener
from probes.base import Probe
from probes.control import ControlServer
from probes.cuda import CudaProbe, NvmlProbe, OomListener
from probes.endings import EndRecorder
from probes.escalation import DumpRequest, Escalation
from probes.exposition import Source, TickCollector, make_registry
from probes.heap import HeapProbe
from probes.limits import LimitsProbe
from probes.process import ProcessProbe
from probes.recorder import HistoryRecorder
from probes.requests import RequestsProbe, RequestStats, default_stats
from probes.resources import ResourceProbe
from probes.sampler import Sampler
from probes.tracing import TracemallocProbe
from probes.workers import (
    ENV_DIR,
    ENV_SERVER_PID,
    WorkerPublisher,
    create_worker_directory,
    read_workers,
)

log = logging.getLogger("diag")

Role = Literal["standalone", "server", "worker"]
#: The longest traced window a dump may ask for: tracing slows the host meanwhile.
MAX_WINDOW = 600.0


@dataclasses.dataclass(frozen=True)
class ProbeHooks:
    """What an agent gives the probes it samples, when it builds them.

    ``window_sites``: the last escalation window's top allocation sites, which the tracemalloc
    probe reports between windows. ``cuda_oom``: records a CUDA out-of-memory event in the
    history; None when the agent keeps no history.

    ``default_probes`` passes them to the probes' constructors. A probe the user built is
    offered them once, as the agent is built, through its ``use_hooks(hooks)`` method if it
    has one (the shipped tracemalloc and CUDA probes do; a user's own probe may too).
    """

    window_sites: Callable[[], list[Sample]] = list
    cuda_oom: OomListener | None = None


def default_probes(settings: Settings, hooks: ProbeHooks | None = None) -> list[Probe]:
    hooks = hooks or ProbeHooks()
    return [
        ProcessProbe(detail_interval=settings.detail_interval),
        HeapProbe(detail_interval=settings.detail_interval),
        LimitsProbe(),
        ResourceProbe(interval=settings.interval),
        CudaProbe(on_oom=hooks.cuda_oom),
        NvmlProbe(),
        TracemallocProbe(
            start=settings.trace,
            frames=settings.trace_frames,
            top=settings.top_sites,
            fallback_sites=hooks.window_sites,
        ),
    ]


class Agent:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        probes: Sequence[Probe] | None = None,
        clock: Clock = time.time,
        environ: Any = os.environ,
        requests: RequestStats | None = None,
    ) -> None:
        # Each part is built after the parts it uses, and given them as it is built.
        self.settings = settings or Settings()
        self._environ = environ
        self.requests = requests or default_stats()
        self.role: Role = "standalone"  # the escalation asks it at each dump (_is_worker)
        self.recorder = self._make_recorder(clock)
        store = SeriesStore(self.settings.series_capacity, self.settings.max_series)
        escalation = self.escalation = Escalation(
            requests=self.requests.totals,
            series=store.summed,  # the sampler fills it
            record=self._record_finding,
            is_worker=self._is_worker,
            window=self.settings.escalation_window,
            interval=self.settings.escalation_interval,
            top_sites=self.settings.top_sites,
            clock=clock,
            resource_context=self._resource_context,
            # The detector's verdicts, read at each dump: its cause agrees with them.
            verdicts=lambda: self.analyzer.verdicts,
        )
        self.analyzer = GrowthAnalyzer(
            DetectorConfig(
                sensitivity=self.settings.sensitivity, time_scale=self.settings.time_scale
            ),
            requests=self.requests,
            disturbed=escalation.disturbs,
        )
        self.analyzer.on_change(escalation.on_verdict)
        if self.recorder is not None:
            self.analyzer.on_change(self.recorder.record_verdict)
        hooks = ProbeHooks(
            # Between windows the gauges keep the last window's top sites.
            window_sites=lambda: escalation.sites,
            cuda_oom=self._record_cuda_oom if self.recorder is not None else None,
        )
        chosen = self._probes(probes, hooks)
        if not any(p.name == "requests" for p in chosen):
            chosen.append(RequestsProbe(self.requests))  # the agent's own request counters
        chosen.append(_EscalationProbe(escalation))
        if self.recorder is not None:
            chosen.append(_HistoryProbe(self.recorder))
        self.sampler = Sampler(
            chosen,
            interval=self.settings.interval,
            clock=clock,
            store=store,
            analyzers=[self.analyzer],
            # Only the series read back from memory (the cause's, at each dump): the rest
            # reach /metrics and the history from each tick, and storing them cost every tick.
            kept=frozenset(watched.names_read_by("cause")),
        )
        if self.recorder is not None:
            self.sampler.add_listener(self.recorder.record_tick)
        self.endings = EndRecorder(self._record_event, self._record_end)
        self.registry = make_registry(TickCollector(self._sources, self.settings.namespace))
        self.port: int | None = None
        #: The host /metrics is bound to, as the server reports it (``settings.address``
        #: resolved, e.g. "127.0.0.1" or "::"); with ``port``, where to scrape this process.
        self.address: str | None = None
        self.http_error: str | None = None
        self._server: Any = None
        self._worker_dir: str | None = None
        self._publisher: WorkerPublisher | None = None
        # Held while reading the worker directory, and across fork: a child forked while the
        # reader holds a dead slot's lock would inherit that lock and keep the slot forever.
        self._workers_lock = threading.Lock()
        self._workers_lock_held_for_fork = False
        self._control: ControlServer | None = None
        self._started = False
        self._creation_stacks = False  # whether start() turned the creation recorder on
        for problem in self.settings.problems:
            log.warning("diag: %s", problem)

    def _make_recorder(self, clock: Clock) -> HistoryRecorder | None:
        root = self.settings.history or default_root(self._environ)
        if root == "off":
            return None
        return HistoryRecorder(root, self.settings, clock)

    def _probes(self, probes: Sequence[Probe] | None, hooks: ProbeHooks) -> list[Probe]:
        if probes is None:
            return default_probes(self.settings, hooks)
        # Probes the user built were made without the agent: each is offered the hooks through
        # its own use_hooks() (an optional protocol, see ProbeHooks), so the shipped tracemalloc
        # and CUDA probes behave as they do among the defaults, a user's probe may take them
        # too, and the agent needs to know no probe class.
        for probe in probes:
            use_hooks = getattr(probe, "use_hooks", None)
            if callable(use_hooks):
                use_hooks(hooks)
        return list(probes)

    def _record_event(self, kind: str, **fields: Any) -> None:
        if self.recorder is not None:
            self.recorder.record_event(kind, **fields)

    def _record_end(self, reason: str, **fields: Any) -> None:
        if self.recorder is not None:
            self.recorder.stop(reason, **fields)

    def _observe_endings(self, tick: Tick) -> None:
        self.endings.observe()

    def _is_worker(self) -> bool:
        return self.role == "worker"

    # -- life cycle ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._started

    def start(self) -> Agent:
        """Start sampling (and serving, recording...). Never raises: a part that fails in a
        way nobody foresaw is logged in one line, and the agent stops again, leaving nothing
        half-started behind (``running`` is then False)."""
        if self._started:
            return self
        try:
            self._start()
        except Exception as exc:
            log.error(
                "diag: the agent did not start (%s: %s); the service runs without it",
                type(exc).__name__,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            try:
                self.stop()
            except Exception as again:
                log.error("diag: and did not stop cleanly (%s: %s)", type(again).__name__, again)
        return self

    def _start(self) -> None:
        self._started = True
        _RUNNING.add(self)
        # Creation stacks between windows: off unless asked for (their measured cost, see
        # probes/creation.py); windows take them from tracemalloc.
        self._creation_stacks = self.settings.creation_stacks or creation.ALWAYS_ON
        if self._creation_stacks:
            creation.acquire(force=True)
        self._start_history()
        if self.settings.record_endings:
            self.endings.install(self.recorder.run_dir if self.recorder is not None else None)
            for note in self.endings.notes:
                self._record_event("note", text=note)
            self.sampler.add_listener(self._observe_endings)
        self._start_control()
        if self.settings.port is not None:
            worker_dir = self._server_directory_of_parent()
            if worker_dir is not None:
                self._become_worker(worker_dir)
            else:
                self._serve()
        self.sampler.start()

    def stop(self, *, at_exit: bool = False) -> None:
        if not self._started:
            return
        self._started = False
        _RUNNING.discard(self)
        if self._creation_stacks:
            creation.release()
        self.endings.uninstall()
        self.sampler.remove_listener(self._observe_endings)
        if self._control is not None:
            self._control.stop()
            self._control = None
        self.escalation.close()
        self.sampler.close()
        self.sampler.remove_listener(self._publish)
        if self.recorder is not None:
            try:
                self.recorder.stop("exit" if at_exit else "stop")
            except OSError as exc:
                log.warning("diag: the history's stop record was not written: %s", exc)
        if self._server is not None:
            if not at_exit:  # shutdown() waits up to 0.5 s for the serving loop to notice
                self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        if self._worker_dir is not None:
            if self._environ.get(ENV_DIR) == self._worker_dir:
                self._environ.pop(ENV_DIR, None)
                self._environ.pop(ENV_SERVER_PID, None)
            shutil.rmtree(self._worker_dir, ignore_errors=True)
            self._worker_dir = None

    def _start_history(self) -> None:
        recorder = self.recorder
        if recorder is None:
            return
        try:
            recorder.start()
        except OSError as exc:
            log.warning("diag: no history in %s: %s; sampling goes on", recorder.root, exc)
            self.recorder = None
            return

    def _start_control(self) -> None:
        control = ControlServer(
            self._answer, socket_path(os.getpid(), self._environ), slow_ops=frozenset({"dump"})
        )
        try:
            control.start()
        except OSError as exc:
            log.warning("diag: no control socket (%s); diag watch sees less of this process", exc)
            return
        self._control = control

    def _answer(self, message: dict[str, Any]) -> dict[str, Any]:
        """A control request: ``latest`` reads what the sampler has and never samples; ``dump``
        walks the heap (and may trace a window) on a thread of the control server's own."""
        op = message.get("op")
        if op == "latest":
            tick = self.sampler.latest
            samples = (
                [] if tick is None else [[s.name, s.value, dict(s.labels)] for s in tick.samples]
            )
            return {
                "pid": os.getpid(),
                "t": tick.t if tick else None,
                "samples": samples,
                # Live, not as of the last tick: a watch holds its samples while we dump.
                "dumps_total": self.escalation.dumps,
                "dump_active": self.escalation.dumping,
            }
        if op == "status":
            return {
                "pid": os.getpid(),
                "role": self.role,
                "port": self.port,
                "probes": [dataclasses.asdict(s) for s in self.sampler.status()],
                "verdicts": {k: dataclasses.asdict(v) for k, v in self.analyzer.verdicts.items()},
            }
        if op == "dump":
            request = DumpRequest(
                top=max(1, min(int(message.get("top", 10)), 100)),
                window=max(0.0, min(float(message.get("window", 0.0)), MAX_WINDOW)),
                reveal=bool(message.get("reveal", False)),
                all_frames=bool(message.get("all_frames", False)),
                trim=bool(message.get("trim", False)),
                time_budget=max(0.1, min(float(message.get("time_budget", 10.0)), 60.0)),
            )
            return self.escalation.dump(request).to_json()
        return {"error": f"unknown request {op!r}"}

    def _resource_context(self) -> dict[str, tuple[float | None, float | None]]:
        """resource -> (limit, seconds to exhaustion): the last tick's ``resource_limit`` and
        the detector's forecast for ``resource_usage``, for a dump's resources."""
        tick = self.sampler.latest
        limits = {
            dict(s.labels).get("resource"): s.value
            for s in (tick.samples if tick is not None else ())
            if s.name == "resource_limit"
        }
        verdicts = self.analyzer.verdicts
        out: dict[str, tuple[float | None, float | None]] = {}
        for name in RESOURCES:
            verdict = verdicts.get(series_key("resource_usage", (("resource", name),)))
            out[name] = (limits.get(name), verdict.seconds_to_oom if verdict else None)
        return out

    def _record_finding(self, finding: dict[str, Any]) -> None:
        if self.recorder is not None:
            self.recorder.record_event("finding", **finding)

    def _record_cuda_oom(self, record: dict[str, Any]) -> None:
        log.warning(
            "diag: CUDA out of memory on device %s (asked for %s bytes); allocator state recorded",
            record.get("device"),
            record.get("requested_bytes"),
        )
        if self.recorder is not None:
            self.recorder.record_event("cuda-oom", **record)

    def on_verdict_change(self, listener: VerdictListener) -> None:
        """Call ``listener(series, previous, verdict)`` whenever a series' verdict changes state
        (leak, growing, steady...), not on every tick's new forecast."""
        self.analyzer.on_change(listener)

    # -- exposition ----------------------------------------------------------------------

    def _sources(self) -> Iterator[Source]:
        latest = self.sampler.latest
        if latest is not None:
            yield (), latest.samples
        if self.role == "server" and self._worker_dir is not None:
            with self._workers_lock:
                workers = read_workers(self._worker_dir)
            yield from workers

    def metrics_text(self) -> str:
        return prometheus_client.generate_latest(self.registry).decode()

    def asgi_app(self) -> Callable[..., Any]:
        return prometheus_client.make_asgi_app(self.registry)

    def wsgi_app(self) -> Callable[..., Any]:
        return prometheus_client.make_wsgi_app(self.registry)

    def _serve(self) -> None:
        s = self.settings
        assert s.port is not None
        try:
            server, _thread = prometheus_client.start_http_server(
                s.port,
                addr=s.address,
                registry=self.registry,
                certfile=s.certfile,
                keyfile=s.keyfile,
                client_cafile=s.client_cafile,
                client_capath=s.client_capath,
                client_auth_required=s.client_auth_required,
            )
        except (OSError, ValueError) as exc:
            self.http_error = f"cannot serve /metrics on {s.address}:{s.port}: {exc}"
            log.error("diag: %s; sampling continues without it", self.http_error)
            return
        self._server = server
        self.address = str(server.server_address[0])
        self.port = int(server.server_address[1])
        self.role = "server"
        self._worker_dir = create_worker_directory()
        self._environ[ENV_DIR] = self._worker_dir
        self._environ[ENV_SERVER_PID] = str(os.getpid())

    # -- workers -------------------------------------------------------------------------

    def _server_directory_of_parent(self) -> str | None:
        """The worker directory when another live process of ours serves the port."""
        directory = self._environ.get(ENV_DIR)
        try:
            server_pid = int(self._environ.get(ENV_SERVER_PID, ""))
        except ValueError:
            return None
        if not directory or server_pid == os.getpid() or not pid_alive(server_pid):
            return None
        return directory if os.path.isdir(directory) else None

    def _become_worker(self, directory: str) -> None:
        try:
            with self._workers_lock:  # no fork while we hold the claim lock
                self._publisher = WorkerPublisher(directory)
        except (OSError, RuntimeError) as exc:
            log.error("diag: cannot join the worker directory %s: %s", directory, exc)
            return
        self.role = "worker"
        self.sampler.add_listener(self._publish)

    def _publish(self, tick: Any) -> None:
        if self._publisher is not None:
            self._publisher.publish(tick)

    @property
    def worker_slot(self) -> int | None:
        return self._publisher.slot if self._publisher is not None else None

    # -- fork ----------------------------------------------------------------------------

    def _before_fork(self) -> None:
        self._workers_lock_held_for_fork = self._workers_lock.acquire(timeout=1.0)
        self.sampler.before_fork()

    def _after_fork_in_parent(self) -> None:
        self.sampler.after_fork_in_parent()
        if self._workers_lock_held_for_fork:
            self._workers_lock_held_for_fork = False
            self._workers_lock.release()

    def _after_fork_in_child(self) -> None:
        self.escalation.reset_after_fork()
        self._workers_lock = threading.Lock()
        self._workers_lock_held_for_fork = False
        self.sampler.after_fork_in_child()
        if self.recorder is not None:
            # The parent's run is the parent's: the child records a run of its own.
            self.recorder.abandon()
            self._start_history()
            if self.settings.record_endings and self.recorder is not None:
                run_dir = self.recorder.run_dir
                if run_dir is not None:
                    self.endings.open_fault_file(run_dir)
        if self._control is not None:
            self._control.forget_after_fork()  # the parent's socket; the child gets its own
            self._start_control()
        if self._server is not None:
            # The serving thread is the parent's; only our copy of its socket came along.
            self._server.socket.close()
            self._server = None
            self.port = None
            self.address = None
        if self._publisher is not None:
            self._publisher.close()  # the parent's slot stays the parent's
            self._publisher = None
        parent_dir = self._worker_dir if self.role == "server" else self._environ.get(ENV_DIR)
        self._worker_dir = None
        self.sampler.remove_listener(self._publish)
        self.role = "standalone"
        if parent_dir:
            self._become_worker(parent_dir)
        self.sampler.start()


class _EscalationProbe:
    """The culprit search's windows and their cost."""

    name = "escalation"

    def __init__(self, escalation: Escalation) -> None:
        self._escalation = escalation

    def sample(self) -> list[Sample]:
        return self._escalation.samples()


class _HistoryProbe:
    """The history writer's own health: bytes written, write errors, disk full."""

    name = "history"

    def __init__(self, recorder: HistoryRecorder) -> None:
        self._recorder = recorder

    def sample(self) -> list[Sample]:
        return self._recorder.samples()


_RUNNING: weakref.WeakSet[Agent] = weakref.WeakSet()


def _each_running(method: str) -> Callable[[], None]:
    def hook() -> None:
        for agent in list(_RUNNING):
            try:
                getattr(agent, method)()
            except Exception:
                log.exception("diag: fork handling failed in %s", method)

    return hook


os.register_at_fork(
    before=_each_running("_before_fork"),
    after_in_parent=_each_running("_after_fork_in_parent"),
    after_in_child=_each_running("_after_fork_in_child"),
)
