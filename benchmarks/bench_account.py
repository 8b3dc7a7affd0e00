"""Benchmark: the growth account's error on real leaking children, one for each kind of root.

Target (issue #14): on a real child that leaks ``bytes`` at a known, steady rate (its own code
sets it: ``CHUNK``-byte objects, ``PER_SECOND`` of them a second, 2 MiB/s), the owner that
``diag dump --window S --json`` names in ``cause.growth_accounting.by_owner`` grows at the true
rate within 15 % (|owner rate / true rate - 1| <= 0.15), for every kind of root that holds it:

- ``module``: a module global, a dict of lists;
- ``class``: a class attribute, a list;
- ``thread``: a local of a running thread's frame;
- ``context``: a ``contextvars.ContextVar``'s value in a thread's context;
- ``local``: an attribute of a ``threading.local``, set in a named thread (the local object
  itself a module global, which owns what every thread keeps in it: root ``module``);
- ``task``: pending asyncio tasks, each holding its chunk;
- ``finalize``: the args of ``weakref.finalize`` callbacks;
- ``atexit``: the args of ``atexit`` callbacks (``atexit.register(flush, chunk)``: on CPython
  3.11 the interpreter keeps the args where no Python object reaches them, a tuple of bytes
  untracked by the gc; ``diag.c_roots.atexit_callbacks`` reads them from the interpreter
  state, so the owner is ``atexit callback flush() args``).

Each child runs under ``diag run`` (the agent started in it), as tests/test_growth_account.py
runs its children, and is dumped with a traced window once it has run for a while (so the
start-up is behind it). The top owner's path and its ``root`` (from the dump's ``owners``) are
printed, and whether the root is the expected kind; the target is judged on the rate.

``python -m benchmarks.bench_account [--quick]``; exit status 1 when a target is missed (not
with ``--quick``, a smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import verdict
from diag.testing import PACED_CHILD_SOURCE

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent
DIAG = [sys.executable, "-m", "diag"]
TARGET = 0.15

#: 64 KiB objects, 32 a second: 2 MiB/s, few enough that a holder's own overhead (a task, a
#: finalizer, a list slot per chunk) is a small part of what it holds.
CHUNK, PER_SECOND = 64 * 1024, 32
TRUE_RATE = PER_SECOND * sys.getsizeof(bytes(CHUNK))

#: The paced loop of diag.testing, and this benchmark's rate: ``paced(step, PER_SECOND)``.
PACED = (
    PACED_CHILD_SOURCE
    + f"""
CHUNK, PER_SECOND = {CHUNK}, {PER_SECOND}
"""
)


@dataclasses.dataclass
class Kind:
    name: str
    root: str  # the root kind diag.owners.ROOT_KINDS should give the holder
    script: str  # after PACED; prints "ready" once it starts leaking


KINDS = [
    Kind(
        "module",
        "module",
        """
        STORE = {}

        def remember(i):
            STORE.setdefault(f"user-{i % 64}", []).append(bytes(CHUNK))

        print("ready", flush=True)
        paced(remember, PER_SECOND)
        """,
    ),
    Kind(
        "class",
        "class",
        """
        class Cache:
            items = []

        print("ready", flush=True)
        paced(lambda i: Cache.items.append(bytes(CHUNK)), PER_SECOND)
        """,
    ),
    Kind(
        "thread",
        "thread",
        """
        import threading

        def hoard():
            pending = []
            paced(lambda i: pending.append(bytes(CHUNK)), PER_SECOND)

        threading.Thread(target=hoard, name="hoarder", daemon=True).start()
        print("ready", flush=True)
        threading.Event().wait()
        """,
    ),
    Kind(
        "context",
        "context",
        """
        import contextvars
        import threading

        HELD = contextvars.ContextVar("held")

        def hoard():
            HELD.set([])
            paced(lambda i: HELD.get().append(bytes(CHUNK)), PER_SECOND)

        threading.Thread(target=hoard, name="ctx-hoarder", daemon=True).start()
        print("ready", flush=True)
        threading.Event().wait()
        """,
    ),
    Kind(
        "local",
        "module",  # the threading.local is a module global: the first Python referrer owns it
        """
        import threading

        LOCAL = threading.local()

        def hoard():
            LOCAL.items = []
            paced(lambda i: LOCAL.items.append(bytes(CHUNK)), PER_SECOND)

        threading.Thread(target=hoard, name="local-hoarder", daemon=True).start()
        print("ready", flush=True)
        threading.Event().wait()
        """,
    ),
    Kind(
        "task",
        "task",
        """
        import asyncio

        async def hold(chunk):
            await asyncio.sleep(86400)  # pending: the loop's timer keeps the task

        async def main():
            due = time.monotonic()
            while True:
                asyncio.get_running_loop().create_task(hold(bytes(CHUNK)))
                due += 1 / PER_SECOND
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.25:
                    due = time.monotonic()

        print("ready", flush=True)
        asyncio.run(main())
        """,
    ),
    Kind(
        "finalize",
        "finalize",
        """
        import weakref

        class Session:
            pass

        SESSION = Session()

        def release(chunk):
            pass

        print("ready", flush=True)
        paced(lambda i: weakref.finalize(SESSION, release, bytes(CHUNK)), PER_SECOND)
        """,
    ),
    Kind(
        "atexit",
        "atexit",
        """
        import atexit

        def flush(chunk):
            pass

        print("ready", flush=True)
        paced(lambda i: atexit.register(flush, bytes(CHUNK)), PER_SECOND)
        """,
    ),
]


def child_env(tmp: Path, **extra: str) -> dict[str, str]:
    """This interpreter's diag importable, no stray DIAG_* settings (as tests/conftest.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIAG_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.update(
        XDG_RUNTIME_DIR=str(tmp),
        DIAG_HISTORY=str(tmp / "h"),
        DIAG_ESCALATION_WINDOW="0",
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


@dataclasses.dataclass
class Result:
    kind: Kind
    path: str = "-"
    root: str = "-"
    rate: float = 0.0
    error: float = float("inf")
    note: str = ""

    @property
    def ok(self) -> bool:
        return abs(self.error) <= TARGET

    def line(self) -> str:
        root_ok = "yes" if self.root == self.kind.root else f"NO, expected {self.kind.root}"
        return (
            f"  {self.kind.name:<9} owner {self.path!s}: root {self.root} (expected kind: "
            f"{root_ok}); owner {self.rate / MiB:+.3f} MiB/s, true {TRUE_RATE / MiB:.3f} MiB/s, "
            f"error {self.error:+.1%}: {verdict(self.ok)}"
            + (f" [{self.note}]" if self.note else "")
        )


def measure(kind: Kind, tmp: Path, settle: float, window: float) -> Result:
    """Start the child under ``diag run``, let it run ``settle`` s, dump a ``window`` s window,
    and read its account. The child is always killed."""
    result = Result(kind)
    env = child_env(tmp)
    source = tmp / f"leak_{kind.name}.py"
    source.write_text(PACED + textwrap.dedent(kind.script))
    proc = subprocess.Popen(
        [*DIAG, "run", "--interval", "0.5", "--", sys.executable, str(source)],
        stdout=subprocess.PIPE,
        stderr=open(tmp / f"leak_{kind.name}.log", "wb"),  # noqa: SIM115
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line != "ready\n":
            result.note = f"child not ready: {line!r}; see {tmp}/leak_{kind.name}.log"
            return result
        time.sleep(settle)
        options = ["--json", "--budget", "60", "--window", str(window)]
        done = subprocess.run(
            [*DIAG, "dump", "--pid", str(proc.pid), *options],
            capture_output=True,
            text=True,
            timeout=300 + window,
            env=env,
        )
        if done.returncode != 0:
            result.note = f"dump failed: {done.stderr.strip()[-300:]}"
            return result
        document = json.loads(done.stdout)
        read(document, result)
    except Exception as exc:  # a crashed case is a failed case, the others still run
        result.note = f"{type(exc).__name__}: {exc}"
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return result


def read(document: dict[str, Any], result: Result) -> None:
    cause = document.get("cause") or {}
    growth = cause.get("growth_accounting")
    if not growth:
        result.note = f"no growth account (cause {cause.get('kind')})"
        return
    by_owner = growth.get("by_owner") or []
    if not by_owner:
        result.note = (
            f"no owner grew; RSS {growth['rss_bytes_per_second'] / MiB:+.3f} MiB/s, "
            f"unexplained {growth['unexplained_bytes_per_second'] / MiB:+.3f} MiB/s"
        )
        return
    top = max(by_owner, key=lambda o: o["bytes_per_second"])
    result.path = top["path"]
    result.rate = top["bytes_per_second"]
    result.error = result.rate / TRUE_RATE - 1
    roots = {o.get("path"): o.get("root") for o in document.get("owners") or []}
    result.root = roots.get(result.path) or "-"
    result.note = (
        f"cause {cause.get('kind')}; RSS {growth['rss_bytes_per_second'] / MiB:+.3f} MiB/s, "
        f"owners {growth['owners_bytes_per_second'] / MiB:+.3f}, "
        f"unexplained {growth['unexplained_bytes_per_second'] / MiB:+.3f}"
        + (f"; next owner {by_owner[1]['path']}" if len(by_owner) > 1 else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="children run at once (default 2: more skews the rates on 2 cores)",
    )
    args = parser.parse_args(argv)
    settle, window = (5.0, 5.0) if args.quick else (10.0, 12.0)
    kinds = KINDS[:2] if args.quick else KINDS
    print(
        f"true rate: {PER_SECOND} x bytes({CHUNK}) a second = {TRUE_RATE / MiB:.3f} MiB/s; "
        f"each child runs {settle:.0f} s, then a {window:.0f} s window is dumped; "
        f"{args.jobs} children at once"
    )
    started = time.monotonic()
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="bench_account.") as tmp:
        for at in range(0, len(kinds), max(args.jobs, 1)):
            batch = kinds[at : at + max(args.jobs, 1)]
            threads = []
            for kind in batch:
                where = Path(tmp) / kind.name
                where.mkdir()

                def run(kind: Kind = kind, where: Path = where) -> None:
                    results[kind.name] = measure(kind, where, settle, window)

                threads.append(threading.Thread(target=run, name=kind.name))
                threads[-1].start()
            for thread in threads:
                thread.join()
            for kind in batch:
                print(results[kind.name].line(), flush=True)
    elapsed = time.monotonic() - started
    ordered = [results[kind.name] for kind in kinds]
    worst = max((abs(r.error) for r in ordered), default=0.0)
    roots = sum(r.root == r.kind.root for r in ordered)
    ok = all(r.ok for r in ordered)
    print(f"roots of the expected kind: {roots}/{len(ordered)}; took {elapsed:.0f} s")
    print(
        f"owner's rate within {TARGET:.0%} of the true rate for every kind "
        f"(worst |error| {worst:.1%}): {verdict(ok)}"
    )
    if args.quick:
        return 0 if all(r.path != "-" for r in ordered) else 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
