"""Run under ``diag run --port P``: forks one child that waits, and reports on both processes.

It forks once the parent's agent has ticked, as a server forks its workers after it started.
Each process writes one JSON line to stdout: its pid, its threads' names and what its agent
became (the parent the server of the port, the child a worker in slot 0). The child then waits
to be killed. The parent waits for the child, says so, and exits cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from typing import Any

import probes


def report(**fields: Any) -> None:
    agent = probes.agent()
    fields.update(
        pid=os.getpid(),
        threads=[t.name for t in threading.enumerate()],
        role=agent.role if agent else None,
        port=agent.port if agent else None,
        slot=agent.worker_slot if agent else None,
    )
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def wait_for_first_tick() -> None:
    """Fork as a server does, after the agent has sampled: the child inherits its open files."""
    agent = probes.agent()
    if agent is None:
        return
    ticked = threading.Event()

    def listener(_tick: object) -> None:
        ticked.set()

    agent.sampler.add_listener(listener)
    try:
        if agent.sampler.ticks == 0 and not ticked.wait(10):
            raise SystemExit("the agent did not tick within 10 s")
    finally:
        agent.sampler.remove_listener(listener)


def main() -> None:
    wait_for_first_tick()
    sys.stdout.flush()  # nothing buffered is copied into the child
    child = os.fork()
    if child == 0:
        try:
            report(who="child")
            while True:
                signal.pause()
        finally:
            os._exit(1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    report(who="parent", child=child)
    _, status = os.waitpid(child, 0)
    sys.stdout.write(json.dumps({"who": "parent", "child_status": status}) + "\n")
    sys.stdout.flush()
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
