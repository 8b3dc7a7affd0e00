"""A pre-fork server for the exposition tests; run it under `diag run --port P`.

The master (whose diag agent serves /metrics) forks WORKERS workers (default 2); each one's
agent becomes a diag worker that publishes its ticks to the master. It prints
``ready agent_port=P role=server workers=N`` once the workers are forked, then waits for EOF on
its stdin: it then closes the pipe the workers block on, reaps them and exits 0. If the master
dies any other way, the workers see EOF on that pipe too and exit, so nothing is left behind.
"""

from __future__ import annotations

import os
import sys


def main(workers: int) -> int:
    import probes  # started by `diag run` before this script's first line

    agent = probes.agent()
    read_end, write_end = os.pipe()
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            os.close(write_end)
            os.read(read_end, 1)  # blocks until the master closes its end (or dies)
            os._exit(0)
        children.append(pid)
    os.close(read_end)
    port = agent.port if agent is not None else None
    role = agent.role if agent is not None else None
    print(f"ready agent_port={port} role={role} workers={len(children)}", flush=True)
    sys.stdin.buffer.read()  # until the test closes our stdin
    os.close(write_end)
    failed = 0
    for pid in children:
        _, status = os.waitpid(pid, 0)
        failed += os.waitstatus_to_exitcode(status) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2))
