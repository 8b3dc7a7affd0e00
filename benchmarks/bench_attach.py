"""`diag attach` reliability: 20 attaches to a busy, allocating target, 20 to an idle one
whose main thread waits on an Event, and 20 to one whose main thread contends for the GIL with
another thread; every one must start the agent and leave the target alive.

On x86-64 Linux attach injects with ptrace alone (``diag/_attach/ptrace_inject.py``), elsewhere
with gdb. Same-run baseline: `python -m diag --help` (starting the command line: what any diag
command costs before it does anything), so the latency is printed as a ratio too. Target:
20/20 each, no crash.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from diag._attach import ptrace_inject
from diag.testing import BUSY_ALLOCATING_SCRIPT, CONTENDED_SCRIPT, IDLE_WAITING_SCRIPT

BUSY = BUSY_ALLOCATING_SCRIPT
IDLE = IDLE_WAITING_SCRIPT
CONTENDED = CONTENDED_SCRIPT


def one_round(code: str, history: str) -> tuple[bool, float, float, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["DIAG_HISTORY"] = history
    target = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=env)  # fmt: skip
    try:
        assert target.stdout is not None and target.stdout.readline() == "ready\n"
        started = time.perf_counter()
        bare = subprocess.run([sys.executable, "-m", "diag", "--help"], capture_output=True,
                              timeout=60)  # fmt: skip
        bare_s = time.perf_counter() - started
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "diag", "attach", "--pid", str(target.pid),
                               "--interval", "0.2"], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        attach_s = time.perf_counter() - started
        time.sleep(1.0)  # the target keeps running with the agent: a crash would show now
        alive = target.poll() is None
        ok = done.returncode == 0 and alive and bare.returncode == 0
        return ok, attach_s, bare_s, (done.stderr.strip() or f"alive={alive}")
    finally:
        target.kill()
        target.wait()
        if target.stdout is not None:
            target.stdout.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 of each instead of 20")
    args = parser.parse_args(argv)
    if not ptrace_inject.supported() and shutil.which("gdb") is None:
        print("gdb is not installed: attach needs it here (apt-get install gdb)")
        return 1
    print(f"attach by {'ptrace' if ptrace_inject.supported() else 'gdb'}")
    rounds = 3 if args.quick else 20
    history = tempfile.mkdtemp(prefix="diag-bench-attach-")
    failed = False
    try:
        targets = (
            ("a busy, allocating", BUSY),
            ("an idle, Event.wait", IDLE),
            ("a GIL-contended", CONTENDED),
        )
        for name, code in targets:
            results = [one_round(code, history) for _ in range(rounds)]
            good = sum(ok for ok, *_ in results)
            attach_s = statistics.median(r[1] for r in results)
            bare_s = statistics.median(r[2] for r in results)
            print(
                f"attach to {name} target: {good}/{rounds} started the agent and left it alive "
                f"(target {rounds}/{rounds}: {'PASS' if good == rounds else 'FAIL'}); "
                f"median {attach_s:.2f} s, {attach_s / bare_s:.1f}x `python -m diag --help` "
                f"({bare_s:.2f} s)"
            )
            for ok, _, _, why in results:
                if not ok:
                    print(f"  failed: {why}")
            failed = failed or good != rounds
    finally:
        shutil.rmtree(history, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
