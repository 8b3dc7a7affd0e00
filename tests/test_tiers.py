"""The fast tier guards itself: under tests/conftest.py's guard a test not marked e2e that starts
a process fails, says to mark it, and starts none. Each case runs in a pytest of its own
(pytester, in this process) with that guard."""

import pytest

GUARDED = """
from tests.conftest import (
    pytest_make_collect_report,
    pytest_runtest_call,
    pytest_runtest_setup,
    pytest_runtest_teardown,
)
"""
ADVICE = "mark it @pytest.mark.e2e; `pytest -m 'not e2e'` (make test-fast) starts none"
MARKERS = "[pytest]\nmarkers =\n    e2e: starts processes\n"


@pytest.fixture
def guarded(pytester):
    pytester.makeconftest(GUARDED)
    pytester.makeini(MARKERS)
    return pytester


def test_a_test_not_marked_e2e_that_starts_a_process_fails_and_starts_none(guarded):
    marker = guarded.path / "a-process-ran"
    guarded.makepyfile(
        test_starts=f"""
        import multiprocessing, os, subprocess, pytest

        MARKER = {str(marker)!r}

        def test_popen():
            subprocess.run(["touch", MARKER])

        def test_swallowed():
            try:
                os.system("touch " + MARKER)
            except Exception:
                pass  # code that never lets an error through still fails the test

        def test_fork():
            if os.fork() == 0:
                os._exit(0)

        def test_multiprocessing_spawn():
            process = multiprocessing.get_context("spawn").Process(target=os.getpid)
            process.start()
            process.join()

        @pytest.fixture
        def child():
            subprocess.run(["touch", MARKER])

        def test_in_a_fixture(child):
            pass

        def test_no_process():
            pass
        """
    )
    result = guarded.runpytest()
    result.assert_outcomes(passed=1, failed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_starts.py::test_in_a_fixture (not marked e2e) starts a process (subprocess.*",
            "*test_starts.py::test_popen (not marked e2e) starts a process (subprocess.Popen "
            f"*touch*): {ADVICE}",
            "*test_starts.py::test_swallowed (not marked e2e) starts a process (os.system *",
            "*test_starts.py::test_fork (not marked e2e) starts a process (os.fork): *",
            "*test_starts.py::test_multiprocessing_spawn (not marked e2e) starts a process "
            "(_posixsubprocess.fork_exec *",
        ],
        consecutive=False,
    )
    assert not marker.exists()  # refused before the start: no `touch` ever ran


def test_a_test_module_that_starts_a_process_on_import_fails_to_collect(guarded):
    guarded.makepyfile(test_imports="import os\nos.system('true')\n\ndef test_x():\n    pass\n")
    result = guarded.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*importing test_imports.py starts a process (os.system *"])


@pytest.mark.e2e
def test_a_test_marked_e2e_starts_processes_and_the_fast_tier_leaves_it_out(guarded):
    guarded.makepyfile(
        test_e2e="""
        import subprocess, pytest

        @pytest.mark.e2e
        def test_child():
            assert subprocess.run(["true"]).returncode == 0
        """
    )
    guarded.runpytest().assert_outcomes(passed=1)
    guarded.runpytest("-m", "not e2e").assert_outcomes(deselected=1)
