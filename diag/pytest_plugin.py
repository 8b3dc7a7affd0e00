"""diag's pytest plugin (entry point ``pytest11``: installing diag is enough): leak checks.

- ``@pytest.mark.no_leaks`` checks a test (or every test of a class or module);
  ``@pytest.mark.no_leaks(iterations=3, warmup=2, bytes_per_iteration=0,
  objects_per_iteration=0, native_bytes_per_iteration=524288, resources=[...],
  current_thread_only=False)`` with options;
  ``@pytest.mark.no_leaks(enabled=False)`` leaves one test out.
- ``pytest --diag-leaks`` (or ``diag_leaks = true`` in the ini file) checks every test.

A checked test's body runs ``warmup + iterations`` times with the same fixtures (see
``diag.check``), and what pytest keeps for it is put back after each run (``_PerRun``); it
fails when something grew after every checked run, with a report that names what grew, who
holds it and where it was allocated. A ``unittest.TestCase`` test repeats its method between
one setUp and one tearDown (an IsolatedAsyncioTestCase's in its own loop). Async tests run
through the plugin that runs them (anyio's, pytest-asyncio's): the repeated body is a
coroutine function too;
a plain ``async def`` test with no such plugin runs in one asyncio event loop for all its runs.

Loading this module imports nothing heavy: ``diag.check`` loads when a checked test runs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections.abc import Callable, Generator
from typing import Any

import pytest

MARKER = "no_leaks"
_OPTIONS = (
    "iterations",
    "warmup",
    "bytes_per_iteration",
    "objects_per_iteration",
    "native_bytes_per_iteration",
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
        "native_bytes_per_iteration=524288, resources=None, current_thread_only=False, "
        "enabled=True): run the test repeatedly "
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


class _PerRun:
    """What pytest keeps for a test and would grow with each run of its body, put back after
    each run (the fixtures are set up once for all the runs; see ``diag.check``):

    - pytest's log capture starts afresh, so the records it keeps (and ``caplog.records``)
      are the last run's, not a growing list;
    - what the body monkeypatched is undone (what fixtures patched before the first run
      stays), as each run of the test would have had it;
    - finalizers the body added (``request.addfinalizer``) run, as at each run's end;
    - ``capsys``/``capfd`` output, and what pytest's own capture took, is read away (a
      failure shows the last run's output, once);
    - a DeprecationWarning raised again (pytest records each, "always") is kept once.

    Each step leans on pytest's internals where it must, and is skipped where they differ."""

    def __init__(self, item: pytest.Function) -> None:
        self._item = item
        plugin = item.config.pluginmanager.get_plugin("logging-plugin")
        self._log_handlers = [
            getattr(plugin, name, None) for name in ("caplog_handler", "report_handler")
        ]
        self._capture = item.config.pluginmanager.get_plugin("capturemanager")
        self._output: tuple[str, str] = ("", "")  # what the capture took in the last run
        self._patches: tuple[Any, int, int, Any, Any] | None = None
        self._finalizers: tuple[list[Any], int] | None = None
        self._warnings: tuple[list[Any], set[tuple[Any, ...]], int] | None = None

    def begin(self) -> None:
        """Before the first run: what the fixtures set up is where each run starts."""
        funcargs = getattr(self._item, "funcargs", {})
        patcher = funcargs.get("monkeypatch")
        try:
            if patcher is not None:
                self._patches = (
                    patcher,
                    len(patcher._setattr),
                    len(patcher._setitem),
                    patcher._savesyspath,
                    patcher._cwd,
                )
            setup = self._item.session._setupstate.stack[self._item][0]
            if type(setup) is list:
                self._finalizers = (setup, len(setup))
        except (AttributeError, KeyError, TypeError, IndexError):
            pass
        log = getattr(warnings._showwarnmsg_impl, "__self__", None)  # type: ignore[attr-defined]
        recorder = funcargs.get("recwarn")
        if type(log) is list and getattr(recorder, "_list", None) is not log:
            self._warnings = (log, {_warning_key(w) for w in log}, len(log))

    def __call__(self) -> None:
        # Emptied in place: new lists and buffers each run would be churn the check sees.
        for handler in self._log_handlers:
            records = getattr(handler, "records", None)
            if type(records) is list and records:
                records.clear()
            stream = getattr(handler, "stream", None)
            if stream is not None and callable(getattr(stream, "truncate", None)):
                stream.seek(0)
                stream.truncate()
        self._undo_patches()
        self._run_finalizers()
        funcargs = getattr(self._item, "funcargs", {})
        for name in ("capsys", "capsysbinary", "capfd", "capfdbinary"):
            capture = funcargs.get(name)
            if capture is not None:
                capture.readouterr()
        self._read_global_capture()
        self._drop_repeated_warnings()

    def _read_global_capture(self) -> None:
        # pytest adds what its capture took during the call to the report once, at the end:
        # read away, each run's output would be there once per run.
        if self._capture is None:
            return
        try:
            if self._capture.is_globally_capturing():
                output = self._capture.read_global_capture()
                if any(output) or any(self._output):
                    self._output = output
        except Exception:
            self._capture = None

    def finish(self) -> None:
        """After the last run: its output is the test's, as pytest would have shown it."""
        out, err = self._output
        self._output = ("", "")
        try:
            self._item.add_report_section("call", "stdout", out)
            self._item.add_report_section("call", "stderr", err)
        except Exception:
            pass

    def _undo_patches(self) -> None:
        if self._patches is None:
            return
        patcher, attributes, items, syspath, cwd = self._patches
        try:
            later = pytest.MonkeyPatch()
            later._setattr = patcher._setattr[attributes:]
            del patcher._setattr[attributes:]
            later._setitem = patcher._setitem[items:]
            del patcher._setitem[items:]
            if syspath is None and patcher._savesyspath is not None:
                later._savesyspath, patcher._savesyspath = patcher._savesyspath, None
            if cwd is None and patcher._cwd is not None:
                later._cwd, patcher._cwd = patcher._cwd, None
        except (AttributeError, TypeError):
            self._patches = None
            return
        later.undo()

    def _run_finalizers(self) -> None:
        if self._finalizers is None:
            return
        finalizers, before = self._finalizers
        while len(finalizers) > before:
            finalizers.pop()()

    def _drop_repeated_warnings(self) -> None:
        if self._warnings is None:
            return
        log, seen, before = self._warnings
        kept = []
        for message in log[before:]:
            key = _warning_key(message)
            if key not in seen:
                seen.add(key)
                kept.append(message)
        log[before:] = kept
        self._warnings = (log, seen, len(log))


def _warning_key(message: Any) -> tuple[Any, ...]:
    return (
        getattr(message, "category", None),
        str(getattr(message, "message", "")),
        getattr(message, "filename", None),
        getattr(message, "lineno", None),
    )


#: Turns of the event loop after each run of a coroutine test: what the run scheduled
#: without awaiting (a task, a ``call_soon``) would have run before the next test did.
LOOP_TURNS = 8


async def _let_the_loop_turn() -> None:
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # another library's loop (trio): nothing of asyncio's is queued
    current = asyncio.current_task()
    for _ in range(LOOP_TURNS):
        others = [t for t in asyncio.all_tasks(loop) if t is not current]
        if not getattr(loop, "_ready", None) and not others:
            return
        await asyncio.sleep(0)


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
                    await _let_the_loop_turn()

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


def _check_for(item: pytest.Function, settings: dict[str, Any]) -> Any:
    from diag.check import LeakCheck
    from diag.errors import UsageError

    per_run = _PerRun(item)
    # What the runs share: the test's own fixtures (pytest's, such as tmp_path or capsys, are
    # put back by per_run or hold nothing of the test's) and its class's instance.
    shared = {
        f"fixture {name}": value
        for name, value in getattr(item, "funcargs", {}).items()
        if not type(value).__module__.startswith(("_pytest", "pytest", "pluggy"))
    }
    instance = getattr(item, "instance", None)
    if instance is not None:
        shared["self"] = instance
    try:
        check = LeakCheck(name=item.nodeid, between_runs=per_run, shared=shared, **settings)
    except UsageError as exc:
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.{MARKER}: {exc}") from None
    per_run.begin()
    return check


def _failed(item: pytest.Function, exc: BaseException) -> BaseException:
    item.user_properties.append(("diag_leaks", "leaked"))
    return pytest.fail.Exception(str(exc), pytrace=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
    settings = _settings(pyfuncitem)
    if settings is None:
        return (yield)
    from diag.errors import LeakError

    check = _check_for(pyfuncitem, settings)
    original = pyfuncitem.obj
    pyfuncitem.obj = _repeating(pyfuncitem, check)
    try:
        return (yield)
    except LeakError as exc:
        raise _failed(pyfuncitem, exc) from None
    finally:
        pyfuncitem.obj = original
        check.between_runs.finish()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    """A ``unittest.TestCase`` test runs through unittest's machinery, never through
    ``pytest_pyfunc_call``: its method is repeated here, between one setUp and one tearDown
    (as a function's fixtures are set up once). pytest hands unittest ``item.obj``."""
    import unittest

    if not isinstance(item, pytest.Function) or not isinstance(
        getattr(item, "instance", None), unittest.TestCase
    ):
        return (yield)
    settings = _settings(item)
    if settings is None:
        return (yield)
    from diag.errors import LeakError

    check = _check_for(item, settings)
    method = item.obj

    @functools.wraps(method)
    def repeated() -> None:
        try:
            with check:
                for _ in check:
                    method()
        except LeakError as exc:
            raise _failed(item, exc) from None

    @functools.wraps(method)
    async def repeated_in_its_loop() -> None:
        # An IsolatedAsyncioTestCase awaits the method in the loop its asyncSetUp ran in.
        # That loop runs in debug mode, which logs a step over 0.1 s as slow: the check's
        # own steps (a collection, a heap walk) would be logged, the failure in them.
        import asyncio

        loop = asyncio.get_running_loop()
        slow = loop.slow_callback_duration
        loop.slow_callback_duration = max(slow, 3600.0)
        try:
            with check:
                for _ in check:
                    await method()
                    await _let_the_loop_turn()
        except LeakError as exc:
            raise _failed(item, exc) from None
        finally:
            # Put back once this step is over: the loop times it after the method returns.
            loop.call_soon(setattr, loop, "slow_callback_duration", slow)

    instance = getattr(item, "instance", None)
    coroutine = inspect.iscoroutinefunction(method)
    if coroutine:
        # pytest lets unittest find a coroutine method on the instance itself, by name.
        setattr(instance, item.name, repeated_in_its_loop)
    else:
        item.obj = repeated
    try:
        return (yield)
    finally:
        if coroutine:
            with contextlib.suppress(AttributeError):
                delattr(instance, item.name)
        else:
            item.obj = method
        check.between_runs.finish()
