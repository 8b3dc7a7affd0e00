"""Benchmark: the leak checks for tests (issue #13) on the corpus in tests/data/leakcorpus.

Targets:

- zero false failures: the clean corpus (warm-up traps: module caches filled once, lru_cache
  with a maxsize, logging set-up, regexes, a torch model's first call, thread pools started
  lazily, asyncio loops, anyio tests; every test marked ``no_leaks``) run five times, each
  run in its own pytest process, passes every time;
- every test of the leaking corpus (owners: module dicts, lists, sets, deques, a class
  attribute, a closure's list, a defaultdict of lists, an attribute chain, an lru_cache, a
  logger's handlers, a BytesIO, a fixture's value; resources: tensors, numpy arrays, files,
  sockets, bare fds, threads, asyncio tasks, child processes; native memory a ctypes malloc
  keeps) fails, and its report names first the owner its docstring says (``owner: ...``), or
  says that the measure grew (``measure: native memory``: no Python object holds it).

Printed, no target: the cost per checked test of the clean corpus, in the same run, against
the same tests unchecked (diag's plugin off) and against pytest-memray's ``limit_leaks``
marker on the same tests (``--memray``, every test given ``limit_leaks("1 MB")``): medians of
the test's call phase as pytest times it, and their ratios.

``python -m benchmarks.bench_leaktests [--quick]`` (``--quick``: one clean run, a smoke test);
exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import fmt_ratio, fmt_us, median, verdict

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "data" / "leakcorpus"
CLEAN = sorted(p.name for p in CORPUS.glob("clean_*.py"))
LEAKY = sorted(p.name for p in CORPUS.glob("leaky_*.py"))
RUNS = 5

#: A plugin for the child pytest: each test's call-phase duration, one JSON line per test.
_TIMER = """
import json, os

def pytest_runtest_logreport(report):
    if report.when == "call":
        with open(os.environ["LEAKBENCH_TIMES"], "a") as f:
            f.write(json.dumps([report.nodeid, report.duration, report.outcome]) + "\\n")
"""

#: With diag's plugin off (``-p no:diag``), its marker is still known (or --strict-markers and
#: filterwarnings=error stop the run).
_NODIAG = """
def pytest_configure(config):
    config.addinivalue_line("markers", "no_leaks(**options): diag's marker, unused here")
"""

#: ...and one that gives every test pytest-memray's limit_leaks marker.
_MEMRAY = """
import pytest

def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.limit_leaks("1 MB"))
"""


def run_pytest(files: list[str], extra: list[str], work: Path, tag: str) -> tuple[int, str, dict]:
    times = work / f"{tag}.jsonl"
    env = dict(os.environ)
    env["LEAKBENCH_TIMES"] = str(times)
    env["PYTHONPATH"] = os.pathsep.join([str(work), str(REPO), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "pytest", "-q", "-p", "leakbench_timer", *extra, *files]
    done = subprocess.run(command, cwd=CORPUS, env=env, capture_output=True, text=True)
    durations: dict[str, tuple[float, str]] = {}
    if times.exists():
        for line in times.read_text().splitlines():
            nodeid, seconds, outcome = json.loads(line)
            durations[nodeid] = (seconds, outcome)
    return done.returncode, done.stdout + done.stderr, durations


def expected_owners() -> dict[str, str]:
    """test name -> the owner its docstring names (``owner: ...``), or the measure it says
    grew where no Python object holds what grew (``measure: native memory``)."""
    owners = {}
    for name in LEAKY:
        tree = ast.parse((CORPUS / name).read_text())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = (ast.get_docstring(node) or "").split("\n", 1)[0]
                if node.name.startswith("test_") and doc.startswith(("owner: ", "measure: ")):
                    owners[node.name] = doc
    return owners


def failure_sections(output: str) -> dict[str, list[str]]:
    """test name -> the lines of its failure report."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        header = re.match(r"^_{3,} (\S+) _{3,}$", line)
        if header:
            current = found[header.group(1)] = []
        elif current is not None:
            current.append(line)
    return found


def _first_owner(lines: list[str]) -> str | None:
    return next((line[5:] for line in lines if line.startswith("  1. ")), None)


def named_as_expected(expected: str, lines: list[str]) -> tuple[bool, str | None]:
    """Whether a failure report says what ``expected`` (a docstring's line) asks: its first
    owner, or a measure among those that grew; and what it said."""
    if expected.startswith("measure: "):
        measure = expected.removeprefix("measure: ")
        grew = [line.strip() for line in lines if line.startswith(f"  {measure}")]
        return bool(grew), grew[0] if grew else None
    first = _first_owner(lines)
    return first is not None and first.startswith(expected.removeprefix("owner: ")), first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="one clean run: a smoke test")
    args = parser.parse_args(argv)
    runs = 1 if args.quick else RUNS
    ok = True
    with tempfile.TemporaryDirectory(prefix="leakbench-") as tmp:
        work = Path(tmp)
        (work / "leakbench_timer.py").write_text(_TIMER)
        (work / "leakbench_memray.py").write_text(_MEMRAY)
        (work / "leakbench_nodiag.py").write_text(_NODIAG)

        # -- 1. the clean corpus, checked, five times ------------------------------------
        print(f"clean corpus: {', '.join(CLEAN)}")
        false_failures = 0
        checked_times: list[float] = []
        tests = 0
        for run in range(runs):
            started = time.monotonic()
            rc, out, durations = run_pytest(CLEAN, [], work, f"clean{run}")
            failed = [n for n, (_, outcome) in durations.items() if outcome != "passed"]
            tests = len(durations)
            false_failures += len(failed) + (1 if rc != 0 and not failed else 0)
            checked_times.extend(d for d, _ in durations.values())
            print(
                f"  run {run + 1}: {tests} tests, {len(failed)} failed, rc {rc}, "
                f"{time.monotonic() - started:.0f} s"
            )
            for name in failed:
                print(f"    false failure: {name}")
            if rc != 0 and not failed:
                print(out[-3000:])
        clean_ok = false_failures == 0 and tests >= 50
        ok = ok and clean_ok

        # -- 2. the leaking corpus: every test fails, naming its owner first ---------------
        expected = expected_owners()
        rc, out, durations = run_pytest(LEAKY, [], work, "leaky")
        sections = failure_sections(out)
        print(f"\nleaking corpus: {', '.join(LEAKY)} ({len(expected)} tests)")
        caught = 0
        for test, owner in sorted(expected.items()):
            outcome = next((o for n, (_, o) in durations.items() if n.endswith(test)), "?")
            named, said = named_as_expected(owner, sections.get(test, []))
            good = outcome == "failed" and named
            caught += good
            mark = "ok  " if good else "MISS"
            print(f"  {mark} {test:<40} expected {owner!r}; said: {said!r}")
        leaky_ok = caught == len(expected) and len(expected) >= 20
        ok = ok and leaky_ok

        # -- 3. cost per checked test, same run --------------------------------------------
        off = ["-p", "no:diag", "-p", "leakbench_nodiag"]
        _, _, plain = run_pytest(CLEAN, off, work, "plain")
        rc_m, out_m, memray = run_pytest(
            CLEAN, [*off, "--memray", "-p", "leakbench_memray"], work, "memray"
        )
        if rc_m != 0:
            print(f"  (memray run: rc {rc_m})\n{out_m[-1500:]}")
        _, _, checked = run_pytest(CLEAN, [], work, "checked")
        common = sorted(set(plain) & set(checked) & set(memray))
        per_plain = [plain[n][0] * 1e9 for n in common]
        per_checked = [checked[n][0] * 1e9 for n in common]
        per_memray = [memray[n][0] * 1e9 for n in common]
        ratios_checked = [c / max(p, 1.0) for c, p in zip(per_checked, per_plain, strict=True)]
        ratios_memray = [m / max(p, 1.0) for m, p in zip(per_memray, per_plain, strict=True)]
        print(f"\ncost per test, call phase, median over {len(common)} clean tests (same run):")
        print(f"  unchecked                          {fmt_us(median(per_plain))}")
        print(
            f"  diag no_leaks (2 warm-up + 3 runs)  {fmt_us(median(per_checked))}   "
            f"{fmt_ratio(median(ratios_checked))} the unchecked test (median of ratios)"
        )
        print(
            f"  memray limit_leaks (1 traced run)   {fmt_us(median(per_memray))}   "
            f"{fmt_ratio(median(ratios_memray))} the unchecked test"
        )
        print(
            f"  diag against memray: {fmt_ratio(median(per_checked) / max(median(per_memray), 1))}"
            f" (medians); added per test: diag "
            f"{fmt_us(median(per_checked) - median(per_plain))}, memray "
            f"{fmt_us(median(per_memray) - median(per_plain))}"
        )

    print()
    print(f"zero false failures on {tests} clean tests x {runs} runs: {verdict(clean_ok)}")
    print(
        f"every leaking test fails, naming its owner first (native memory: the measure) "
        f"({caught}/{len(expected)}): "
        f"{verdict(leaky_ok)}"
    )
    if args.quick:
        return 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
