"""`diag watch`'s own CPU at a 1 s interval, in steady state (its start-up imports apart).

Target: <= 1 % of one core. Same-run baseline: the least a watcher can do, a Python loop that
reads /proc/PID/status once a second, measured the same way beside it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import psutil

MINIMAL_WATCHER = """
import sys, threading
ev = threading.Event()
while not ev.wait(1.0):
    with open(f"/proc/{sys.argv[1]}/status", "rb") as f:
        f.read()
"""

TARGET = """
import threading
hold, ev = [], threading.Event()
print("ready", flush=True)
while not ev.wait(1.0):
    hold.append(bytearray(1 << 20))
"""


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def watch_cpu_shares(target_code: str, window: float) -> tuple[float, float, float]:
    """Start ``target_code`` (it prints "ready"), then ``diag watch`` on it at a 1 s interval
    and the minimal watcher beside it; their CPU shares of one core over ``window`` seconds in
    steady state, and the seconds measured."""
    target = subprocess.Popen(
        [sys.executable, "-c", target_code], stdout=subprocess.PIPE, text=True
    )
    assert target.stdout is not None and target.stdout.readline() == "ready\n"
    with tempfile.TemporaryDirectory() as history:
        command = [sys.executable, "-m", "diag", "watch", "--pid", str(target.pid),
                   "--interval", "1", "--history", history]  # fmt: skip
        watcher = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        minimal = subprocess.Popen([sys.executable, "-c", MINIMAL_WATCHER, str(target.pid)])
        try:
            time.sleep(5.0)  # imports and the first ticks: not the steady state measured
            w, m = psutil.Process(watcher.pid), psutil.Process(minimal.pid)
            w0, m0, started = cpu_seconds(w), cpu_seconds(m), time.monotonic()
            time.sleep(window)
            elapsed = time.monotonic() - started
            watch_share = (cpu_seconds(w) - w0) / elapsed
            minimal_share = (cpu_seconds(m) - m0) / elapsed
        finally:
            for process in (watcher, minimal):
                process.terminate()
                process.wait(10)
            target.kill()
            target.wait()
            target.stdout.close()
    return watch_share, minimal_share, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 s instead of 60 s")
    args = parser.parse_args(argv)
    watch_share, minimal_share, elapsed = watch_cpu_shares(TARGET, 10.0 if args.quick else 60.0)
    ok = watch_share <= 0.01
    print(
        f"diag watch at a 1 s interval: {watch_share * 100:.3f} % of one core over {elapsed:.0f} s "
        f"(target <= 1 %: {'PASS' if ok else 'FAIL'}); a loop reading /proc/PID/status each "
        f"second: {minimal_share * 100:.3f} % ({watch_share / max(minimal_share, 1e-6):.1f}x)"
    )
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
