"""``python -m benchmarks [tick|overhead ...] [--quick]``: run the benchmarks, each in its own
process, and exit 1 if any target is missed (or a benchmark crashed)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks import BENCHMARKS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke-test run")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)

    results: list[tuple[str, int, float]] = []
    for name in names:
        command = [sys.executable, "-m", f"benchmarks.{BENCHMARKS[name]}"]
        if args.quick:
            command.append("--quick")
        print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        rc = subprocess.call(command)
        results.append((name, rc, time.monotonic() - started))

    print("\n=== summary")
    for name, rc, seconds in results:
        passed = "ran (--quick decides nothing)" if args.quick else "PASS"
        state = {0: passed, 1: "FAIL"}.get(rc, f"ERROR (exit status {rc})")
        print(f"{name:<10} {state} ({seconds:.0f} s)")
    return 0 if all(rc == 0 for _, rc, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
