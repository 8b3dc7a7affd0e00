"""Steady traffic for the reference TTS services: ``POST /talk`` at a fixed rate.

    python -m examples.loadgen --url http://127.0.0.1:8000 --rate 20 --duration 60

Request ``i`` is due at ``start + i / rate``; a few threads take the due requests in turn, so
the rate holds while a request is slower than ``1 / rate`` (up to ``concurrency`` at once).
A refused connection, a timeout or an error status counts as an error and the run goes on:
the service may not be up yet, or may just have been OOM-killed, which is the point.
``drive()`` is the same, importable: it returns the counts instead of printing them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import threading
import time
import urllib.request
from typing import Any

DEFAULT_TEXT = "Hello from the digital human: how can I help with your order"


class _Tally:
    """The counts of one run, shared by its threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next_index = 0
        self.ok = 0
        self.errors = 0
        self.samples = 0
        self.latency = 0.0  # summed over the successful requests

    def take(self) -> int:
        with self.lock:
            index, self.next_index = self.next_index, self.next_index + 1
            return index


def _talk(url: str, body: bytes, timeout: float) -> int:
    """One request; the number of audio samples the service made."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # raises on 4xx/5xx
        return int(json.load(response)["samples"])


def _wait_until(when: float, stop: threading.Event) -> bool:
    """Sleep until the monotonic time ``when``; False if ``stop`` was set first."""
    delay = when - time.monotonic()
    return not stop.wait(delay) if delay > 0 else not stop.is_set()


def drive(
    url: str,
    rate: float,
    duration: float,
    stop: threading.Event | None = None,
    text: str = DEFAULT_TEXT,
    concurrency: int = 4,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """POST ``{"text": text}`` to ``url``/talk ``rate`` times a second for ``duration``
    seconds, or until ``stop`` is set. Returns ``requests`` (sent), ``ok``, ``errors``,
    ``samples`` (audio samples made, summed), ``mean_latency_s`` (of the successful ones) and
    ``seconds`` (elapsed)."""
    if rate <= 0 or duration < 0 or concurrency < 1:
        raise ValueError("rate must be > 0, duration >= 0 and concurrency >= 1")
    stop = stop or threading.Event()
    target = url.rstrip("/") + "/talk"
    body = json.dumps({"text": text}).encode()
    tally = _Tally()
    started = time.monotonic()

    def worker() -> None:
        while True:
            due = tally.take() / rate
            if due >= duration or not _wait_until(started + due, stop):
                return
            sent = time.perf_counter()
            try:
                samples = _talk(target, body, timeout)
            # OSError covers refused connections, timeouts and error statuses (HTTPError);
            # HTTPException a connection dropped mid-response; ValueError a body not ours.
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                with tally.lock:
                    tally.errors += 1
                continue
            latency = time.perf_counter() - sent
            with tally.lock:
                tally.ok += 1
                tally.samples += samples
                tally.latency += latency

    threads = [
        threading.Thread(target=worker, name=f"loadgen-{i}", daemon=True)
        for i in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with tally.lock:
        return {
            "requests": tally.ok + tally.errors,
            "ok": tally.ok,
            "errors": tally.errors,
            "samples": tally.samples,
            "mean_latency_s": tally.latency / tally.ok if tally.ok else 0.0,
            "seconds": time.monotonic() - started,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.loadgen", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight, at most")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="what every request says")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration < 0 or args.concurrency < 1:
        parser.error("--rate must be > 0, --duration >= 0 and --concurrency >= 1")
    # Ctrl-C or SIGTERM ends the run early, and the summary of what was sent still prints.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    counts = drive(
        args.url, args.rate, args.duration, stop, text=args.text, concurrency=args.concurrency
    )
    print(
        f"loadgen: {counts['requests']} requests, {counts['errors']} errors, "
        f"mean latency {counts['mean_latency_s'] * 1e3:.1f} ms, "
        f"{counts['requests'] / max(counts['seconds'], 1e-9):.1f} req/s "
        f"over {counts['seconds']:.1f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
