"""diag's pytest plugin, run by pytest's own ``pytester``: passing and failing suites with their
output checked line by line, --diag-leaks and the ini option, the marker's options, async tests
(anyio, plain asyncio), threads that outlive a test, a test that forks, xdist workers.

In-process runs (``runpytest``) start no process; those that do (``runpytest_subprocess``, a
fork) are marked e2e."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_leaktests import failure_sections, named_as_expected
from tests.conftest import child_env

pytest_plugins = ["pytester"]

CORPUS = Path(__file__).resolve().parent / "data" / "leakcorpus"

LEAKY_MODULE = """
_REGISTRY = []


class Record:
    def __init__(self, n):
        self.n = n


def register(n):
    _REGISTRY.append(Record(n))
"""

SUITE = """
import functools
import re

import pytest

import leakymod

_CACHE = {}


@functools.lru_cache(maxsize=8)
def compiled(pattern):
    return re.compile(pattern)


@pytest.mark.no_leaks
def test_clean():
    _CACHE.setdefault("settings", {"retries": 3})
    assert compiled(r"\\d+").match("42")


@pytest.mark.no_leaks
def test_registry():
    leakymod.register(1)


def test_unmarked_leak():
    leakymod.register(2)
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(leakymod=LEAKY_MODULE, test_suite=SUITE)
    pytester.syspathinsert()
    return pytester


@pytest.mark.e2e
def test_a_passing_suite(pytester: pytest.Pytester):
    """In a process of its own: in this one, this test's own log capture would hear the
    inner tests' records (and grow with each run)."""
    pytester.makepyfile(
        """
        import logging
        import pytest

        pytestmark = pytest.mark.no_leaks

        def test_logging(caplog):
            logging.getLogger("app").warning("once per run")
            assert len(caplog.records) == 1  # the capture starts afresh each run

        def test_dict_and_list():
            assert sorted({"b": 1, "a": 2}) == ["a", "b"]

        class TestGrouped:
            def test_one(self):
                assert [1, 2, 3][-1] == 3
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_a_failing_suite_reads_like_a_dump(suite: pytest.Pytester):
    result = suite.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_registry _*",
            "test_suite.py::test_registry leaks: it keeps more after every run "
            "(3 runs checked after 2 warm-up runs)",
            "",
            "grew per run:",
            "  Python objects * +1   (+*, +*, +* after each run; tolerance 0 "
            "(objects_per_iteration))",
            "  container entries * +1   (*)",
            "",
            "held by (first: the likeliest owner):",
            "  1. leakymod._REGISTRY  (list) +1 per run, * per run: leakymod.Record",
            "       allocated at:",
            "         leakymod.py:* in register",
            "         test_suite.py:* in test_registry",
            "",
            "if this growth is deliberate (a cache), say so:",
            '  diag.allow_growth("leakymod._REGISTRY")   (at import, or in a with block)',
            "  @pytest.mark.no_leaks(objects_per_iteration=3)   (a tolerance per run)",
            "  @pytest.mark.no_leaks(warmup=6)   (a bounded cache that takes more runs to fill: *",
            "*= short test summary info =*",
            "FAILED test_suite.py::test_registry - Failed: test_suite.py::test_registry le*",
        ],
        consecutive=False,
    )
    # The report replaces pytest's traceback: no frames of the plugin's machinery.
    assert "pytest_plugin.py" not in result.stdout.str()
    assert "diag/check.py" not in result.stdout.str()


@pytest.mark.e2e
def test_what_pytest_keeps_for_a_test_is_no_leak(pytester: pytest.Pytester):
    """The fixtures are set up once for all the runs, and pytest's bookkeeping for them grows
    with each run of a body that uses them: monkeypatch's undo records, finalizers the body
    adds, capsys's buffer, the DeprecationWarnings pytest records each time, what an async
    body scheduled without awaiting. None is the test's leak (a review found each one
    failing a clean test); a real leak beside them still fails. In a process of its own, as
    the warnings and capture are this process's too."""
    pytester.makepyfile(
        """
        import asyncio, os, sys, warnings
        import pytest

        pytestmark = pytest.mark.no_leaks

        class Settings:
            level = 1

        @pytest.fixture
        def patched(monkeypatch):
            monkeypatch.setattr(Settings, "level", 5)

        def test_monkeypatch(monkeypatch, patched, tmp_path):
            assert Settings.level == 5  # the fixture's patch holds in every run
            monkeypatch.chdir(tmp_path)
            monkeypatch.setattr(os, "getpid", lambda: -1)
            monkeypatch.setenv("DIAG_REVIEW", "1")
            monkeypatch.syspath_prepend(str(tmp_path))
            assert sys.path[0] == str(tmp_path) and sys.path.count(str(tmp_path)) == 1

        def test_a_finalizer_per_run_closes_what_the_run_opened(request, tmp_path):
            handle = open(tmp_path / "f", "w")
            request.addfinalizer(handle.close)

        def test_printing_into_capsys(capsys):
            print("x" * 4000)

        def old_api():
            warnings.warn("old_api is deprecated", DeprecationWarning, stacklevel=2)

        def test_a_deprecated_call():
            old_api()

        async def quick():
            await asyncio.sleep(0)

        async def test_fire_and_forget():
            asyncio.get_running_loop().create_task(quick())
            asyncio.get_running_loop().call_soon(lambda: None)

        _KEPT = []

        def test_a_leak_beside_monkeypatch(monkeypatch):
            monkeypatch.setenv("DIAG_REVIEW", "2")
            _KEPT.append(object())
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(["*test_a_leak_beside_monkeypatch leaks*", "  1. *._KEPT  (list)*"])
    assert "DIAG_REVIEW" not in os.environ


def test_leaks_that_hid_from_the_counts(pytester: pytest.Pytester):
    """Each of these leaked and passed: a dict of strings (the gc does not track it, so
    gc.get_objects() never lists it), a Counter and a dict subclass (counted by exact type
    only), one object every second run (no run may stand still), a unittest.TestCase (run
    by unittest's machinery, which never reached the plugin)."""
    pytester.makepyfile(
        """
        import collections, itertools, unittest

        _ids = itertools.count()
        _STATUS = {}
        _SEEN = collections.Counter()

        class Registry(dict):
            pass

        _REGISTRY = Registry()
        _EVERY_OTHER = []
        _LEGACY = []

        def test_request_status():
            _STATUS[f"req-{next(_ids):08d}"] = "done"

        def test_counter():
            _SEEN[f"req-{next(_ids)}"] += 1

        def test_registry():
            _REGISTRY[next(_ids)] = 1

        def test_every_other_run():
            if next(_ids) % 2:
                _EVERY_OTHER.append(object())

        class TestLegacy(unittest.TestCase):
            def setUp(self):
                self.calls = getattr(self, "calls", 0)

            def test_legacy(self):
                _LEGACY.append(object())

            def test_clean(self):
                self.assertEqual(sorted([2, 1]), [1, 2])
        """
    )
    result = pytester.runpytest("-p", "no:randomly", "--diag-leaks")
    result.assert_outcomes(passed=1, failed=5)
    result.stdout.fnmatch_lines_random(
        [
            "  1. test_leaks_that_hid_from_the_counts._STATUS  (dict) +1 per run*",
            "  1. test_leaks_that_hid_from_the_counts._SEEN  (Counter) +1 per run*",
            "  1. test_leaks_that_hid_from_the_counts._REGISTRY  (Registry) +1 per run*",
            "  1. test_leaks_that_hid_from_the_counts._EVERY_OTHER  (list) +0.5 per run*",
            # Decided by a second window: the header says whose values it shows.
            "*test_every_other_run leaks: * (6 runs checked after 2 warm-up runs; "
            "values of the last 4)",
            "  1. test_leaks_that_hid_from_the_counts._LEGACY  (list) +1 per run*",
        ]
    )


def test_growth_in_a_fixture_is_named_from_the_fixture(pytester: pytest.Pytester):
    """The runs share one set-up, so what a run adds to a fixture's value stays. Reached only
    through pytest's objects, it was "no holder was found ... C code": it is named from the
    fixture, and a fixture that a module global also names keeps its module path."""
    pytester.makepyfile(
        """
        import itertools
        import pytest
        import diag

        diag.allow_growth("fixture allowed")
        _ids = itertools.count()

        class Service:
            def __init__(self):
                self.cache = {}

            def handle(self, n):
                self.cache[n] = [n] * 10

        SHARED = Service()

        @pytest.fixture
        def bucket():
            return []

        @pytest.fixture
        def allowed():
            return []

        @pytest.fixture
        def service():
            return Service()

        @pytest.fixture
        def shared():
            return SHARED

        def test_bucket(bucket):
            bucket.append(object())

        def test_allowed(allowed):
            allowed.append(object())

        def test_service(service):
            service.handle(next(_ids))

        def test_shared(shared):
            shared.handle(next(_ids))

        @pytest.fixture
        def raw():
            return bytearray()  # pytest holds it in a dict and a tuple the gc does not track

        def test_raw(raw):
            raw.extend(b"x" * 4096)

        class TestWithState:
            def setup_method(self):
                self.items = []

            def test_self(self):
                self.items.append(object())
        """
    )
    result = pytester.runpytest("-p", "no:randomly", "--diag-leaks")
    result.assert_outcomes(passed=1, failed=5)
    result.stdout.fnmatch_lines_random(
        [
            "  1. fixture bucket  (list) +1 per run*",
            "note: fixture bucket is set up once for all the runs*",
            "  1. fixture service.cache  (dict) +1 per run*",
            '  diag.allow_growth("fixture service.cache")*',
            "  1. test_growth_in_a_fixture_is_named_from_the_fixture.SHARED.cache  (dict)*",
            "  1. fixture raw  (bytearray) +4.0 KiB per run: its buffer grew",
            "  1. self.items  (list) +1 per run*",
            "note: self is set up once for all the runs*",
        ]
    )
    # Only what the test grew is named: nothing of pytest's or diag's own.
    assert "between_runs" not in result.stdout.str()
    assert "no holder was found" not in result.stdout.str()


def test_an_async_unittest_test_case_is_checked_in_its_own_loop(pytester: pytest.Pytester):
    """pytest lets unittest run an IsolatedAsyncioTestCase's coroutine: it was unchecked."""
    pytester.makepyfile(
        """
        import asyncio, unittest

        _KEPT = []

        class TestService(unittest.IsolatedAsyncioTestCase):
            async def asyncSetUp(self):
                self.queue = asyncio.Queue()

            async def test_clean(self):
                await self.queue.put(1)
                await self.queue.get()

            async def test_leak(self):
                await self.queue.put(object())
                _KEPT.append(await self.queue.get())
        """
    )
    result = pytester.runpytest("-p", "no:randomly", "--diag-leaks")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*TestService::test_leak leaks*", "  1. test_an_async_*._KEPT  (list) +1 per run*"]
    )
    # The loop's debug mode would log the check's own long steps, the failure with them.
    assert "Executing <Task" not in result.stdout.str()


def test_a_failure_shows_the_last_run_s_output_once(pytester: pytest.Pytester):
    """pytest's capture (fd or sys) took every run's output and showed it all, once per run."""
    pytester.makepyfile(
        """
        _KEPT = []

        def test_prints_and_leaks():
            print("one line per run")
            _KEPT.append(object())
        """
    )
    for capture in ("fd", "sys"):
        result = pytester.runpytest("-p", "no:randomly", "--diag-leaks", f"--capture={capture}")
        result.assert_outcomes(failed=1)
        assert result.stdout.str().count("one line per run") == 1, capture
        result.stdout.fnmatch_lines(["*Captured stdout call*", "one line per run"])


def test_the_suggested_allowance_covers_every_owner_it_names(pytester: pytest.Pytester):
    """An lru_cache's growth has two owners, its dict and its wrapper: the suggestion names
    the one path that covers both, and declaring it makes the test pass."""
    test = """
        import functools, itertools
        import diag

        _ids = itertools.count()

        @functools.lru_cache(maxsize=None)
        def render(n):
            return object()

        def test_cached():
            render(next(_ids))
        """
    pytester.makepyfile(test_cache=test)
    result = pytester.runpytest("-p", "no:randomly", "--diag-leaks")
    result.assert_outcomes(failed=1)
    # (Once in the report, and again in the summary where pytest does not cut it: CI=true.)
    suggestion = {line for line in result.outlines if "diag.allow_growth(" in line}
    assert suggestion == {
        '  diag.allow_growth("test_cache.render")   (at import, or in a with block)'
    }
    allowed = test.replace(
        "import diag\n", 'import diag\n        diag.allow_growth("test_cache.render")\n'
    )
    pytester.makepyfile(test_cache=allowed)
    pytester.runpytest("-p", "no:randomly", "--diag-leaks").assert_outcomes(passed=1)


def test_diag_leaks_checks_every_test(suite: pytest.Pytester):
    result = suite.runpytest("-p", "no:randomly", "--diag-leaks")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        ["diag: leak checks on every test (--diag-leaks)", "*test_unmarked_leak leaks*"]
    )


def test_the_ini_option_and_the_iterations(suite: pytest.Pytester):
    suite.makeini("[pytest]\ndiag_leaks = true\ndiag_leaks_iterations = 4\ndiag_leaks_warmup = 1\n")
    result = suite.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*test_unmarked_leak leaks*(4 runs checked after 1 warm-up runs)"])


def test_the_marker_s_options(pytester: pytest.Pytester):
    pytester.makepyfile(leakymod=LEAKY_MODULE)
    pytester.syspathinsert()
    pytester.makepyfile(
        """
        import pytest
        import leakymod

        @pytest.mark.no_leaks(objects_per_iteration=4, bytes_per_iteration=8192)
        def test_tolerated():
            leakymod.register(1)

        @pytest.mark.no_leaks(iterations=2, warmup=0)
        def test_fewer_runs():
            leakymod.register(1)

        @pytest.mark.no_leaks(enabled=False)
        def test_left_out():
            leakymod.register(1)

        @pytest.mark.no_leaks
        class TestAClass:
            def test_method(self):
                leakymod.register(1)
        """
    )
    result = pytester.runpytest("-p", "no:randomly", "--diag-leaks")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_fewer_runs leaks: it keeps more after every run (2 runs checked after 0 *",
            "*TestAClass::test_method leaks*",
        ]
    )


def test_bad_marker_options_are_usage_errors(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.no_leaks(iterashuns=3)
        def test_typo():
            pass
        """
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: *test_typo: @pytest.mark.no_leaks has no option iterashuns*"]
    )


def test_the_marker_is_registered(pytester: pytest.Pytester):
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.no_leaks(iterations=3, warmup=2, *"])


def test_async_tests_with_anyio_and_plain_asyncio(pytester: pytest.Pytester):
    pytest.importorskip("anyio")
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        pytestmark = pytest.mark.no_leaks

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.anyio
        async def test_anyio_clean():
            import anyio
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.sleep, 0)

        async def _forever():
            await asyncio.sleep(3600)

        @pytest.mark.anyio
        async def test_anyio_leaks_tasks():
            asyncio.get_running_loop().create_task(_forever())
            await asyncio.sleep(0)

        async def test_plain_async_clean():
            await asyncio.gather(*(asyncio.sleep(0) for _ in range(5)))

        async def test_plain_async_leaks_tasks():
            asyncio.get_running_loop().create_task(_forever())
            await asyncio.sleep(0)
        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_anyio_leaks_tasks leaks*",
            "  pending asyncio tasks *+1*",
            "  1. pending tasks of _forever() awaiting sleep()  (task) +1 per run*",
            "*test_plain_async_leaks_tasks leaks*",
            "  1. pending tasks of _forever() awaiting sleep()  (task) +1 per run*",
        ]
    )


def test_threads_that_outlive_the_test(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        import threading
        import pytest

        STOP = threading.Event()

        def teardown_module():
            STOP.set()

        @pytest.mark.no_leaks
        def test_thread_ending_after_the_test():
            threading.Timer(0.05, lambda: None).start()  # outlives the body a moment

        @pytest.mark.no_leaks
        def test_thread_running_on():
            threading.Thread(target=STOP.wait, name="uploader", daemon=True).start()
        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_thread_running_on leaks*",
            "  threads * +1   (*; tolerance 0)",
            "  1. thread 'uploader'  (thread) +1 per run: threads: thread",
            "  @pytest.mark.no_leaks(resources=*)   (not checking threads)",
        ]
    )


@pytest.mark.e2e
def test_a_test_that_forks(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.no_leaks
        def test_fork_and_wait():
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)

        @pytest.mark.no_leaks
        def test_fork_and_forget():
            if os.fork() == 0:
                os._exit(0)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_fork_and_forget leaks*",
            "  child processes * +1   (*",
            "  1. child processes no subprocess.Popen holds (os.fork, os.posix_spawn...)*",
        ]
    )


@pytest.mark.e2e
def test_xdist_workers(suite: pytest.Pytester):
    pytest.importorskip("xdist", reason="pytest-xdist is not installed here")
    result = suite.runpytest_subprocess("-n", "2", "-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_registry leaks*", "  1. leakymod._REGISTRY  (list)*"])


@pytest.mark.e2e
def test_the_plugin_is_installed_and_light():
    """The entry point loads it in every pytest; loading it imports no torch nor numpy, and
    not diag.check either (that waits for a checked test)."""
    code = (
        "import sys, importlib.metadata as m\n"
        "[ep] = [e for e in m.entry_points(group='pytest11') if e.name == 'diag']\n"
        "print(ep.value)\n"
        "ep.load()\n"
        "print(sorted(x for x in ('torch', 'numpy', 'diag.check') if x in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["diag.pytest_plugin", "[]"]


def _expected_owners() -> dict[str, str]:
    """test name -> its docstring's line: the owner named first, or the measure that grew."""
    text = (CORPUS / "leaky_owners.py").read_text()
    pattern = r'def (test_\w+)\([^)]*\):\n    """((?:owner|measure): [^"]+)"""'
    return dict(re.findall(pattern, text))


@pytest.mark.e2e
def test_the_leaking_corpus_fails_naming_each_owner_first():
    expected = _expected_owners()
    assert len(expected) >= 20
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "leaky_owners.py"],
        cwd=CORPUS,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=900,
    )
    sections = failure_sections(out.stdout)
    misses = {
        name: said
        for name, owner in expected.items()
        if not (said := named_as_expected(owner, sections.get(name, [])))[0]
    }
    assert not misses, out.stdout[-4000:]
    assert f"{len(expected)} failed" in out.stdout


@pytest.mark.e2e
def test_the_clean_corpus_passes():
    files = sorted(p.name for p in CORPUS.glob("clean_*.py"))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", *files],
        cwd=CORPUS,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-4000:]
    count = int(re.search(r"(\d+) passed", out.stdout).group(1))  # type: ignore[union-attr]
    assert count >= 50


def test_corpus_files_are_not_collected_by_this_suite():
    assert not list(CORPUS.glob("test_*.py"))
    assert not (CORPUS / "conftest.py").exists()
    assert os.path.exists(CORPUS / "pytest.ini")
