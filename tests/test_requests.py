"""Service metrics from the middlewares, and growth per request told from growth per time."""

import asyncio
import contextlib
import math
import random
import wsgiref.util

import pytest

from diag.retention import RetentionEstimator
from probes.requests import ASGIMiddleware, RequestStats, WSGIMiddleware

MiB = 1024 * 1024


def _errors(stats):
    return {dict(s.labels)["endpoint"]: s.value for s in stats.samples()
            if s.name == "request_errors_total"}  # fmt: skip


class _Route:
    path = "/users/{user_id}"


def test_asgi_middleware_counts_route_templates_and_errors():
    stats = RequestStats()

    async def app(scope, receive, send):
        if scope["path"] == "/boom":
            raise RuntimeError("handler failed")
        if scope["path"].startswith("/users/"):
            scope["route"] = _Route()  # what Starlette's router sets once it matched
        status = 503 if scope["path"] == "/busy" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = ASGIMiddleware(app, stats)

    async def call(path):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await wrapped({"type": "http", "path": path, "method": "GET"}, receive, send)
        return sent

    async def scenario():
        for user in range(5):
            await call(f"/users/{user}")
        await call("/busy")
        with pytest.raises(RuntimeError):
            await call("/boom")

    asyncio.run(scenario())
    assert stats.totals() == {"/users/{user_id}": 5, "/busy": 1, "/boom": 1}
    assert _errors(stats) == {"/users/{user_id}": 0.0, "/busy": 1.0, "/boom": 1.0}


def test_wsgi_middleware_counts_and_marks_5xx_and_exceptions():
    stats = RequestStats()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/boom":
            raise ValueError("no")
        status = "500 Internal Server Error" if environ["PATH_INFO"] == "/bad" else "200 OK"
        start_response(status, [("Content-Type", "text/plain")])
        return [b"ok"]

    wrapped = WSGIMiddleware(app, stats)
    for path in ("/tts", "/tts", "/bad", "/boom"):
        environ = {"PATH_INFO": path}
        wsgiref.util.setup_testing_defaults(environ)
        with contextlib.suppress(ValueError):
            b"".join(wrapped(environ, lambda status, headers, exc_info=None: None))
    assert stats.totals() == {"/tts": 2, "/bad": 1, "/boom": 1}
    assert _errors(stats) == {"/tts": 0.0, "/bad": 1.0, "/boom": 1.0}
    buckets = [s for s in stats.samples() if s.name == "request_duration_seconds_bucket"]
    histogram = {dict(s.labels)["le"]: s.value for s in buckets if ("endpoint", "/tts") in s.labels}
    assert histogram["+Inf"] == 2.0


def _simulate(load, per_request, per_second, hours=3.0):
    estimator = RetentionEstimator()
    rng = random.Random(1)
    served, memory, estimate = 0.0, 1e9, None
    for t in range(int(hours * 3600)):
        arrived = rng.random() < load(t)
        served += arrived
        memory += arrived * per_request + per_second
        estimate = estimator.update(float(t), memory + rng.gauss(0, MiB), {"/talk": served})
    return estimate


def test_growth_that_follows_load_is_told_from_growth_that_follows_time():
    varying = lambda t: 0.5 + 0.45 * math.sin(t / 600)  # noqa: E731 - the day's load, sped up
    by_load = _simulate(varying, per_request=2 * MiB, per_second=0.0)
    assert by_load.follows == "load"
    assert by_load.per_request["/talk"] == pytest.approx(2 * MiB, rel=0.1)
    by_time = _simulate(varying, per_request=0.0, per_second=MiB)
    assert by_time.follows == "time"
    assert by_time.per_second == pytest.approx(MiB, rel=0.1)
    steady = _simulate(lambda t: 0.5, per_request=2 * MiB, per_second=0.0)
    assert steady.follows == "undetermined"  # under steady load the two look alike
    assert steady.per_request["/talk"] == pytest.approx(2 * MiB, rel=0.1)
