"""``diag demo``: a leaking TTS-like service under ``diag run``, its live gauges on screen."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import click
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

from diag.errors import DiagError

MiB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str, timeout: float = 2.0) -> dict[str, float]:
    """``{"name{labels}": value}`` for every sample at a /metrics URL."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            inner = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{inner}}}" if inner else s.name] = s.value
    return out


def _table(rows: list[tuple[float, dict[str, float]]]) -> Table:
    table = Table(title="diag demo: live gauges of a leaking TTS-like service")
    for column in ("t", "RSS", "growth", "malloc in use", "gc objects", "limit", "tick"):
        table.add_column(column, justify="right")
    t0, _ = rows[0]
    for i, (t, m) in enumerate(rows[-12:], start=max(len(rows) - 12, 0)):
        rss = m.get("diag_process_resident_memory_bytes", 0.0)
        # The rate over the last few scrapes: the first ones include torch's import.
        tb, before = rows[max(i - 3, 0)]
        rate = (rss - before.get("diag_process_resident_memory_bytes", rss)) / max(t - tb, 1e-9)
        gc_objects = sum(v for k, v in m.items() if k.startswith("diag_gc_tracked_objects"))
        table.add_row(
            f"{t - t0:5.1f}s",
            f"{rss / MiB:8.1f} MiB",
            f"{rate / MiB:+6.2f} MiB/s",
            f"{m.get('diag_malloc_in_use_bytes', 0) / MiB:8.1f} MiB",
            f"{gc_objects:,.0f}",
            f"{m.get('diag_memory_limit_bytes', 0) / MiB / 1024:6.1f} GiB",
            f"{m.get('diag_tick_duration_seconds', 0) * 1e6:6.0f} µs",
        )
    return table


@click.command()
@click.option("--duration", type=click.FloatRange(min=3), default=15.0, show_default=True)
def demo(duration: float) -> None:
    """Start a small leaking service under `diag run` and show its live gauges."""
    console = Console(stderr=False)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    command = [
        sys.executable, "-m", "diag", "run", "--port", str(port), "--interval", "1", "--",
        sys.executable, "-m", "diag.demo_service",
    ]  # fmt: skip
    console.print(f"[bold]$ {' '.join(command[2:])}[/]  (metrics at {url})")
    service = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    rows: list[tuple[float, dict[str, float]]] = []
    try:
        deadline = time.monotonic() + duration
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while time.monotonic() < deadline:
                if service.poll() is not None:
                    raise DiagError(f"the demo service exited early (status {service.returncode})")
                with contextlib.suppress(OSError):  # not serving yet
                    rows.append((time.monotonic(), scrape(url)))
                if rows:
                    live.update(_table(rows), refresh=True)
                time.sleep(1.0)
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(10)
        except subprocess.TimeoutExpired:
            service.kill()
    if len(rows) < 2:
        raise DiagError(f"no metrics were scraped from {url}")
    # Judge the second half: the first scrapes still include torch's import and warm-up.
    (t0, first), (t1, last) = rows[len(rows) // 2], rows[-1]
    grew = last["diag_process_resident_memory_bytes"] - first["diag_process_resident_memory_bytes"]
    console.print(
        f"RSS grew {grew / MiB:.1f} MiB in the last {t1 - t0:.0f} s "
        f"({grew / MiB / max(t1 - t0, 1e-9):+.2f} MiB/s): every request's audio tensor stays in "
        "diag.demo_service._AUDIO_CACHE. The growth detector needs minutes of it to call a leak;"
        " `diag watch --pid` and `diag report` take it from there."
    )
    if grew <= 0:
        raise DiagError("the demo service's memory did not grow; the demo saw no leak")
