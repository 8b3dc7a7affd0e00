"""diag's embedded agent: ``import probes; probes.start()``.

``start()`` returns the process's running agent, starting it on the first call (a second call
returns the same one). Keyword arguments win over ``DIAG_*`` environment variables, which win
over the defaults (see ``diag.settings.Settings``). ``stop()`` stops it; it also stops by itself
at interpreter exit. ``asgi_app()`` and ``wsgi_app()`` serve the agent's /metrics inside a
FastAPI/Starlette/Gradio or Flask app, starting the agent if it is not running yet.
``request(name)``, ``ASGIMiddleware`` and ``WSGIMiddleware`` count requests per endpoint.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from diag import logs
from diag.settings import Settings
from probes.agent import Agent
from probes.requests import ASGIMiddleware, RequestScope, WSGIMiddleware, default_stats

# The public API of the embedded agent, pinned by tests/test_public_api.py (README, "Public API").
__all__ = [
    "ASGIMiddleware",
    "Agent",
    "WSGIMiddleware",
    "agent",
    "asgi_app",
    "request",
    "start",
    "stop",
    "wsgi_app",
]

log = logging.getLogger("diag")
# Before the agent logs anything: its lines never raise into the host (diag/logs.py). Not at
# `import diag`, which stays free of logging (and of the atexit hook logging registers).
logs.install()

_lock = threading.Lock()
_agent: Agent | None = None


def start(**settings: Any) -> Agent:
    """Start the agent (idempotent). Never raises into the host for runtime failures; wrong
    keyword arguments are a programming error and raise ``TypeError``."""
    global _agent
    with _lock:
        if _agent is not None and _agent.running:
            return _agent
        _agent = Agent(Settings.from_env(os.environ, **settings))
        return _agent.start()


def stop() -> None:
    global _agent
    with _lock:  # held while it stops: a start() on another thread waits, not races it
        agent, _agent = _agent, None
        if agent is not None:
            agent.stop()


def agent() -> Agent | None:
    """The running agent, or None."""
    return _agent if _agent is not None and _agent.running else None


def request(endpoint: str) -> RequestScope:
    """Count a request of ``endpoint`` (latency, errors) as ``with probes.request("tts"):``
    or as a decorator ``@probes.request("tts")``. Works before and without ``start()``."""
    return RequestScope(default_stats(), endpoint)


def asgi_app() -> Callable[..., Any]:
    return start().asgi_app()


def wsgi_app() -> Callable[..., Any]:
    return start().wsgi_app()


def _stop_at_exit() -> None:
    agent = _agent
    if agent is not None:
        try:
            agent.stop(at_exit=True)
        except Exception:
            log.exception("diag: agent failed to stop cleanly at exit")


atexit.register(_stop_at_exit)
