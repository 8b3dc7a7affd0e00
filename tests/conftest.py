"""Shared test helpers: external tools, free ports, polling of things that cannot signal us."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
PYTHON = sys.executable
DIAG = [PYTHON, "-m", "diag"]

T = TypeVar("T")


def require_tool(name: str) -> str:
    """The path of an external tool. `make test` installs them and sets DIAG_REQUIRE_TOOLS=1,
    so there a missing tool fails the test instead of skipping it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (run `make test`, which installs it)"
        if os.environ.get("DIAG_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(check: Callable[[], T | None], timeout: float = 30.0, every: float = 0.1) -> T:
    """For external processes (Prometheus, a server starting) that cannot signal readiness:
    call ``check`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as exc:  # a server not up yet, a scrape not done yet
            last_error = exc
        else:
            if result:
                return result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {check}; last: {last_error!r}")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: this interpreter's diag importable, no stray DIAG_*."""
    # Keep DIAG_HISTORY (a temporary directory in tests), drop every other DIAG_* setting.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIAG_") or k == "DIAG_HISTORY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def _history_in_tmp(tmp_path_factory, monkeypatch):
    """Agents record a history by default; in tests it goes to a temporary directory."""
    monkeypatch.setenv("DIAG_HISTORY", str(tmp_path_factory.mktemp("history")))
