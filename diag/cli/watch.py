"""``diag watch --pid PID``: sample a process from outside, judge its growth, record its end.

The engine is ``probes.watcher`` (the same probes and detector as the agent, the agent's richer
series when it runs one, a history for ``diag report``, the exit evidence); the views are
``reports.live``. This module parses the options, runs the loop and maps the outcome to an
exit code.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any

import click

from diag.cli._params import FiniteRange
from diag.control import ask_dump
from diag.errors import DiagError, UsageError
from diag.history import default_root
from diag.procfs import check_target
from diag.terminal import KeyReader
from probes.watcher import Watcher, follow
from reports.live import LivePanel, ended_text, tick_line


@click.command()
@click.option("--pid", type=int, required=True, help="The process to watch.")
@click.option("--interval", type=FiniteRange(min=0.05), default=1.0, show_default=True)
@click.option("--duration", type=FiniteRange(min=0), help="Stop after this many seconds.")
@click.option("--history", help="History directory (default: $DIAG_HISTORY or per user; off).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per tick, per line.")
@click.option("--attach", "attach_first", is_flag=True, help="Start the agent in it first.")
@click.option(
    "--sensitivity",
    type=FiniteRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    envvar="DIAG_SENSITIVITY",
    help="The detector's eagerness: its durations are divided by it.",
)
@click.option(
    "--time-scale",
    type=FiniteRange(min=0, min_open=True),
    default=1.0,
    envvar="DIAG_TIME_SCALE",
    help="Demos only: run the detector's clock this many times faster.",
)
@click.option(
    "--dump-on-leak", is_flag=True, help="Take a dump (diag dump) when the verdict turns leak."
)
def watch(
    pid: int,
    interval: float,
    duration: float | None,
    history: str | None,
    as_json: bool,
    attach_first: bool,
    sensitivity: float,
    time_scale: float,
    dump_on_leak: bool,
) -> None:
    """Watch a process from outside: memory, its limit, the growth verdict; record its end.

    Exit code 0 when the watch ends with the target alive and no leak seen; 1 when a leak was
    seen or the target died; 2 for a pid that cannot be watched.
    """
    check_target(pid)
    if attach_first:
        from diag.attach import attach

        result = attach(pid, {})
        click.echo(f"agent started in pid {pid} (python {result.get('python')})", err=True)
    try:
        watcher = Watcher(
            pid, history, sensitivity=sensitivity, time_scale=time_scale, interval=interval
        )
    except OSError as exc:  # the history's directory cannot be made or written
        where = exc.filename or history or default_root()
        raise UsageError(
            f"cannot keep the history in {where}: {exc.strerror or exc}; give --history a "
            "writable directory, or --history off"
        ) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    live = keys = None
    if not as_json and sys.stdout is not None and sys.stdout.isatty():
        live = LivePanel(pid, watcher.command)
        keys = KeyReader.start()
    shown_dump: Any = None
    dumped_on_leak = False
    try:
        for row in follow(watcher, interval, stop, duration=duration):
            if live is None:
                click.echo(json.dumps(row) if as_json else tick_line(row))
            wants_dump = keys is not None and keys.pressed("d")
            if dump_on_leak and row["verdict"] == "leak" and not dumped_on_leak:
                dumped_on_leak = wants_dump = True
            if wants_dump:
                shown_dump = _take_dump(pid, as_json, live is not None)
            if live is not None:
                live.show(row, shown_dump)
    except KeyboardInterrupt:
        pass
    finally:
        if keys is not None:
            keys.stop()
        if live is not None:
            live.stop()
        if watcher.exit is None:
            # Whatever ended the watch (its end, Ctrl-C, an output that failed): the history
            # gets its buffered ticks and the watch's own stop record.
            watcher.close()
    ended = watcher.exit
    if ended is not None:
        click.echo(json.dumps(ended) if as_json else ended_text(ended), err=not as_json)
        if watcher.writer is not None:
            click.echo(f"diag report {watcher.writer.run_dir}", err=True)
    if ended is not None or watcher.saw_leak:
        raise click.exceptions.Exit(1)


def _take_dump(pid: int, as_json: bool, live: bool) -> Any:
    """A dump of the agent in ``pid``: printed (plain, JSON) or returned for the live view."""
    from reports.dump import render, render_text

    try:
        document = ask_dump(pid, timeout=120.0)
    except DiagError as exc:
        line = str(exc)  # no agent, or it is busy with another dump
        if as_json:
            click.echo(json.dumps({"event": "dump", "pid": pid, "error": line}))
        elif not live:
            click.echo(line, err=True)
        return line
    if as_json:
        click.echo(json.dumps({"event": "dump", **document}))
    elif not live:
        click.echo(render_text(document))
    return render(document)
