"""A small service for the Prometheus end-to-end test; run it under `diag run --port P`.

It allocates 256 KiB every 50 ms and keeps the newest 64 chunks (16 MiB), so its memory moves
but stays bounded. Once running it prints ``ready agent_port=P`` (the port the diag agent in
this process serves, or ``None`` when the agent is not serving) and it exits 0 on SIGTERM or
SIGINT.
"""

from __future__ import annotations

import collections
import signal
import threading

CHUNK = 256 * 1024


def main() -> None:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    import probes  # started by `diag run` before this script's first line

    agent = probes.agent()
    print(f"ready agent_port={agent.port if agent is not None else None}", flush=True)
    chunks: collections.deque[bytes] = collections.deque(maxlen=64)
    while not stop.wait(0.05):
        chunks.append(b"\x01" * CHUNK)  # filled, so the pages are really resident


if __name__ == "__main__":
    main()
