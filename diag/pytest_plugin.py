"""diag's pytest plugin (entry point ``pytest11``: installing diag is enough): leak checks.

- ``@pytest.mark.no_leaks`` checks a test (or every test of a class or module);
  ``@pytest.mark.no_leaks(iterations=3, warmup=2, bytes_per_iteration=0,
  objects_per_iteration=0, resources=[...], current_thread_only=False)`` with options;
  ``@pytest.mark.no_leaks(enabled=False)`` leaves one test out.
- ``pytest --diag-leaks`` (or ``diag_leaks = true`` in the ini file) checks every test.

A checked test's body runs ``warmup + iterations`` times with the same fixtures (see
``diag.check``); it fails when something grew after every checked run, with a report that
names what grew, who holds it and where it was allocated. Async tests run through the plugin
that runs them (anyio's, pytest-asyncio's): the repeated body is a coroutine function too;
a plain ``async def`` test with no such plugin runs in one asyncio event loop for all its runs.

Loading this module imports nothing heavy: ``diag.check`` loads when a checked test runs.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Generator
from typing import Any

import pytest

MARKER = "no_leaks"
_OPTIONS = (
    "iterations",
    "warmup",
    "bytes_per_iteration",
    "objects_per_iteration",
    "resources",
    "current_thread_only",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("diag", "diag leak checks")
    group.addoption(
        "--diag-leaks",
        action="store_true",
        default=None,
        help="check every test for leaks: run its body repeatedly and fail it when every "
        "run leaves more behind (objects, memory, tensors, arrays, fds, threads, tasks, "
        "children)",
    )
    group.addoption(
        "--diag-leaks-iterations",
        type=int,
        default=None,
        help="checked runs per test (default: the ini's diag_leaks_iterations, else 3)",
    )
    group.addoption(
        "--diag-leaks-warmup",
        type=int,
        default=None,
        help="unchecked warm-up runs per test (default: the ini's diag_leaks_warmup, else 2)",
    )
    parser.addini("diag_leaks", "check every test for leaks (as --diag-leaks)", type="bool")
    parser.addini("diag_leaks_iterations", "checked runs per leak-checked test", default="")
    parser.addini("diag_leaks_warmup", "warm-up runs per leak-checked test", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(iterations=3, warmup=2, bytes_per_iteration=0, objects_per_iteration=0, "
        "resources=None, current_thread_only=False, enabled=True): run the test repeatedly "
        "and fail it when every run leaves more behind (diag's leak check)",
    )


def _everywhere(config: pytest.Config) -> bool:
    option = config.getoption("--diag-leaks")
    if option is not None:
        return bool(option)
    return bool(config.getini("diag_leaks"))


def _default(config: pytest.Config, name: str) -> int | None:
    value = config.getoption(f"--diag-leaks-{name}")
    if value is None:
        text = str(config.getini(f"diag_leaks_{name}")).strip()
        value = int(text) if text else None
    return value  # type: ignore[no-any-return]


def pytest_report_header(config: pytest.Config) -> str | None:
    if not _everywhere(config):
        return None
    return "diag: leak checks on every test (--diag-leaks)"


def _settings(item: pytest.Function) -> dict[str, Any] | None:
    """The check's options for this test, or None when it is not checked."""
    marker = item.get_closest_marker(MARKER)
    if marker is None and not _everywhere(item.config):
        return None
    settings: dict[str, Any] = {}
    for name in ("iterations", "warmup"):
        value = _default(item.config, name)
        if value is not None:
            settings[name] = value
    if marker is not None:
        if marker.args:
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.{MARKER} takes keyword arguments only "
                f"({', '.join(_OPTIONS)}, enabled)"
            )
        kwargs = dict(marker.kwargs)
        if not kwargs.pop("enabled", True):
            return None
        unknown = sorted(set(kwargs) - set(_OPTIONS))
        if unknown:
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.{MARKER} has no option {', '.join(unknown)} "
                f"(it has {', '.join(_OPTIONS)}, enabled)"
            )
        settings.update(kwargs)
    return settings


def _between_runs(config: pytest.Config) -> Callable[[], None]:
    """What runs after each run of a checked test: pytest's log capture starts afresh, so
    the records it keeps (and ``caplog.records``) are the last run's, not a growing list."""
    plugin = config.pluginmanager.get_plugin("logging-plugin")
    handlers = [getattr(plugin, name, None) for name in ("caplog_handler", "report_handler")]

    def reset() -> None:
        # Emptied in place: new lists and buffers each run would be churn the check sees.
        for handler in handlers:
            records = getattr(handler, "records", None)
            if type(records) is list and records:
                records.clear()
            stream = getattr(handler, "stream", None)
            if stream is not None and callable(getattr(stream, "truncate", None)):
                stream.seek(0)
                stream.truncate()

    return reset


def _runs_async_itself(item: pytest.Function) -> bool:
    """Whether another plugin (anyio's, pytest-asyncio's...) runs this coroutine test."""
    if "anyio_backend" in item.fixturenames or item.get_closest_marker("anyio"):
        return True
    if item.get_closest_marker("asyncio") and item.config.pluginmanager.hasplugin("asyncio"):
        return True
    return any(
        item.config.pluginmanager.hasplugin(name) for name in ("trio", "pytest_trio", "tornado")
    )


def _repeating(item: pytest.Function, check: Any) -> Callable[..., Any]:
    body = item.obj
    if inspect.iscoroutinefunction(body):

        @functools.wraps(body)
        async def run_async(**kwargs: Any) -> None:
            with check:
                for _ in check:
                    await body(**kwargs)

        if _runs_async_itself(item):
            return run_async

        @functools.wraps(body)
        def run_in_loop(**kwargs: Any) -> None:
            import asyncio

            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(run_async(**kwargs))
            finally:
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                loop.run_until_complete(asyncio.sleep(0))
                loop.close()

        run_in_loop.__signature__ = inspect.signature(body)  # type: ignore[attr-defined]
        return run_in_loop

    @functools.wraps(body)
    def run(**kwargs: Any) -> None:
        with check:
            for _ in check:
                body(**kwargs)

    return run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A marker with a bad option is a usage error, reported before any test runs."""
    for item in items:
        if isinstance(item, pytest.Function) and item.get_closest_marker(MARKER) is not None:
            settings = _settings(item)
            if settings is None:
                continue
            from diag.check import LeakCheck
            from diag.errors import UsageError

            try:
                LeakCheck(**settings)
            except UsageError as exc:
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.{MARKER}: {exc}") from None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
    settings = _settings(pyfuncitem)
    if settings is None:
        return (yield)
    from diag.check import LeakCheck
    from diag.errors import LeakError, UsageError

    try:
        check = LeakCheck(
            name=pyfuncitem.nodeid, between_runs=_between_runs(pyfuncitem.config), **settings
        )
    except UsageError as exc:
        raise pytest.UsageError(f"{pyfuncitem.nodeid}: @pytest.mark.{MARKER}: {exc}") from None
    original = pyfuncitem.obj
    pyfuncitem.obj = _repeating(pyfuncitem, check)
    try:
        return (yield)
    except LeakError as exc:
        pyfuncitem.user_properties.append(("diag_leaks", "leaked"))
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    finally:
        pyfuncitem.obj = original
