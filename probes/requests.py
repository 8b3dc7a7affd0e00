"""Service metrics: requests, errors and latency per endpoint, from inside the host.

``probes.request("tts")`` is a context manager and a decorator (sync and async); the ASGI and
WSGI middlewares wrap a whole app and use the route path as the endpoint. Counting costs a lock
and a few additions per request; the ``requests`` probe turns the totals into samples each tick,
so they reach /metrics, the workers' slots and the growth-per-request estimate alike. Once
``max_endpoints - 1`` endpoints are named, new ones are counted under ``endpoint="other"``:
labels stay bounded.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from diag.model import Labels, Sample, labels_of

#: Latency buckets (seconds) for inference requests: 5 ms to 2 minutes.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
OTHER = "other"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class _Endpoint:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))


class RequestStats:
    def __init__(self, max_endpoints: int = 32, clock: Callable[[], float] = time.perf_counter):
        self.max_endpoints = max_endpoints
        self._clock = clock
        self._lock = threading.Lock()
        self._endpoints: dict[str, _Endpoint] = {}
        self._labels: dict[str, tuple[Labels, tuple[Labels, ...]]] = {}

    def record(self, endpoint: str, seconds: float, error: bool = False) -> None:
        with self._lock:
            stats = self._endpoints.get(endpoint)
            if stats is None:
                if len(self._endpoints) >= self.max_endpoints - 1 and endpoint != OTHER:
                    endpoint = OTHER
                stats = self._endpoints.setdefault(endpoint, _Endpoint())
            stats.requests += 1
            stats.errors += error
            stats.seconds += seconds
            stats.buckets[bisect_left(BUCKETS, seconds)] += 1

    def totals(self) -> dict[str, int]:
        """Requests so far per endpoint (the covariate of growth per request)."""
        with self._lock:
            return {name: e.requests for name, e in self._endpoints.items()}

    def total(self) -> int | None:
        """Requests so far, all endpoints; None until the host has counted any endpoint (the
        detectors' load covariate: without one they are judged without it)."""
        with self._lock:
            if not self._endpoints:
                return None
            return sum(e.requests for e in self._endpoints.values())

    def samples(self) -> list[Sample]:
        with self._lock:
            snapshot = [(name, _copy(e)) for name, e in self._endpoints.items()]
        out: list[Sample] = []
        for name, e in snapshot:
            labels, bucket_labels = self._labels_of(name)
            out.append(Sample("requests_total", float(e.requests), labels))
            out.append(Sample("request_errors_total", float(e.errors), labels))
            cumulative = 0
            for le, count in zip(bucket_labels, e.buckets, strict=True):
                cumulative += count
                out.append(Sample("request_duration_seconds_bucket", float(cumulative), le))
            out.append(Sample("request_duration_seconds_sum", e.seconds, labels))
            out.append(Sample("request_duration_seconds_count", float(e.requests), labels))
        return out

    def _labels_of(self, endpoint: str) -> tuple[Labels, tuple[Labels, ...]]:
        """The endpoint's label tuples, built once (they are the same every tick)."""
        cached = self._labels.get(endpoint)
        if cached is None:
            bounds = [repr(b) for b in BUCKETS] + ["+Inf"]
            cached = (
                labels_of(endpoint=endpoint),
                tuple(labels_of(endpoint=endpoint, le=le) for le in bounds),
            )
            self._labels[endpoint] = cached
        return cached

    # -- instrumentation ------------------------------------------------------------------

    @contextmanager
    def timing(self, endpoint: str) -> Iterator[None]:
        started = self._clock()
        try:
            yield
        except BaseException:
            self.record(endpoint, self._clock() - started, error=True)
            raise
        self.record(endpoint, self._clock() - started)

    def decorate(self, endpoint: str, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self.timing(endpoint):
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.timing(endpoint):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


def _copy(e: _Endpoint) -> _Endpoint:
    return _Endpoint(e.requests, e.errors, e.seconds, list(e.buckets))


class RequestScope:
    """What ``probes.request(name)`` returns: usable as ``with`` and as ``@``."""

    def __init__(self, stats: RequestStats, endpoint: str) -> None:
        self._stats = stats
        self._endpoint = endpoint
        self._timing: Any = None

    def __enter__(self) -> RequestScope:
        self._timing = self._stats.timing(self._endpoint)
        self._timing.__enter__()
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        timing, self._timing = self._timing, None
        return bool(timing.__exit__(*exc))

    def __call__(self, func: F) -> F:
        return self._stats.decorate(self._endpoint, func)


class RequestsProbe:
    name = "requests"

    def __init__(self, stats: RequestStats) -> None:
        self.stats = stats

    def sample(self) -> list[Sample]:
        return self.stats.samples()


# -- middlewares -----------------------------------------------------------------------------

ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


def _route_of(scope: dict[str, Any], fallback: str) -> str:
    # Starlette/FastAPI put the matched route in the scope once routing ran; its template
    # (/users/{id}) keeps the label bounded where the raw path (/users/42) would not.
    route = scope.get("route")
    template = getattr(route, "path", None) or getattr(route, "path_format", None)
    return str(template or fallback)


class ASGIMiddleware:
    """Counts every HTTP request of an ASGI app; a 5xx response or an exception is an error.

    ``app = probes.ASGIMiddleware(app)``. The endpoint is the route template when the
    framework provides one, else the raw path (bounded by ``max_endpoints``)."""

    def __init__(self, app: Any, stats: RequestStats | None = None) -> None:
        self.app = app
        self._stats = stats

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        stats = self._stats or default_stats()
        status: list[int] = []

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                status.append(int(message.get("status", 0)))
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            stats.record(
                _route_of(scope, scope.get("path", "")), time.perf_counter() - started, True
            )
            raise
        error = bool(status) and status[0] >= 500
        stats.record(_route_of(scope, scope.get("path", "")), time.perf_counter() - started, error)


class WSGIMiddleware:
    """Counts every request of a WSGI app (Flask: ``app.wsgi_app = WSGIMiddleware(app.wsgi_app)``).

    The endpoint is the path; pass ``endpoint=`` a function of the environ to bound it."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        stats: RequestStats | None = None,
        endpoint: Callable[[dict[str, Any]], str] | None = None,
    ) -> None:
        self.app = app
        self._stats = stats
        self._endpoint = endpoint or (lambda environ: str(environ.get("PATH_INFO", "")))

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        stats = self._stats or default_stats()
        status: list[int] = []

        def start_wrapper(status_line: str, headers: Any, exc_info: Any = None) -> Any:
            status.append(int(status_line.split(" ", 1)[0]))
            return start_response(status_line, headers, exc_info)

        started = time.perf_counter()
        try:
            body = self.app(environ, start_wrapper)
        except BaseException:
            stats.record(self._endpoint(environ), time.perf_counter() - started, True)
            raise
        # Timed until the app returns its body: a streamed body may go on long after (and its
        # status come later), and is not ours to buffer.
        stats.record(
            self._endpoint(environ),
            time.perf_counter() - started,
            bool(status) and status[0] >= 500,
        )
        return body


_stats_lock = threading.Lock()
_stats: RequestStats | None = None


def default_stats() -> RequestStats:
    """The process-wide request counters, shared by every agent of the process."""
    global _stats
    with _stats_lock:
        if _stats is None:
            _stats = RequestStats()
        return _stats
