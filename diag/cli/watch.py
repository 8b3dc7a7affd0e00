"""``diag watch --pid PID``: sample a process from outside, judge its growth, record its end.

This is the watcher's recording side: RSS (and USS/PSS, swap), the cgroup limit and oom_kill
counter and NVML GPU memory of any process, the same detector as the agent, a history that
``diag report`` reads, and, when the target exits, how it ended. The live terminal view,
connecting to an embedded agent and ``--attach`` come with the rest of ``diag watch``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import click

from diag.control import request
from diag.detect import (
    SETTLE_SECONDS,
    Detector,
    DetectorConfig,
    DisturbanceDiscount,
    RecentRate,
    Verdict,
)
from diag.errors import UsageError
from diag.history import HistoryWriter, default_root, run_name
from diag.model import Sample, series_key
from diag.units import format_bytes, format_duration
from probes.base import ProbeUnavailable
from probes.cuda import NvmlProbe
from probes.limits import LimitsProbe, parse_oom_kills
from probes.process import ProcessProbe


def check_target(pid: int, proc_root: str = "/proc") -> None:
    """One clear line for a pid that cannot be watched."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        raise UsageError(f"no process with pid {pid}; check the pid (ps -ef)") from None
    except PermissionError:
        raise UsageError(f"pid {pid}: permission denied; run as its user or root") from None
    if state == b"Z":
        raise UsageError(f"pid {pid} has exited (a zombie, not yet reaped); nothing to watch")


def zombie_exit(pid: int, proc_root: str = "/proc") -> dict[str, Any] | None:
    """Exit status or signal while the process is a zombie (/proc/PID/stat's exit_code): the
    one moment someone other than its parent can read it."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    if not fields or fields[0] != b"Z" or len(fields) < 50:
        return None
    code = int(fields[49])  # field 52 of stat; fields here start at field 3
    if code & 0x7F:
        return {"signal": code & 0x7F, "signal_name": signal.Signals(code & 0x7F).name}
    return {"status": code >> 8}


class Watcher:
    def __init__(
        self,
        pid: int,
        history: str | None,
        limit: float | None = None,
        sensitivity: float = 1.0,
        time_scale: float = 1.0,
    ) -> None:
        self.pid = pid
        self.process = ProcessProbe(pid)
        self.limits = LimitsProbe(pid)
        self.nvml = NvmlProbe(pid)
        self.fixed_limit = limit
        self.detector = Detector(
            limit, DetectorConfig(sensitivity=sensitivity, time_scale=time_scale)
        )
        self.recent = RecentRate()
        # The agent's dumps disturb RSS (see DisturbanceDiscount): held back while one runs
        # and until it settles, known from the agent's dump gauges.
        self.discount = DisturbanceDiscount()
        self._dumps_seen: float | None = None
        self._disturbed_until = -math.inf
        self.verdict: Verdict | None = None
        self.oom_kills_first: float | None = None
        self.oom_kills_last: float | None = None
        self.saw_leak = False
        self.writer: HistoryWriter | None = None
        if history != "off":
            root = history or default_root()
            started = time.time()
            run_dir = os.path.join(root, run_name(started, pid) + "-watch")
            self.writer = HistoryWriter(run_dir)
            self.writer.write_event(
                "start", started, pid=pid, command=_command_of(pid), watcher=os.getpid()
            )

    def tick(self, t: float) -> dict[str, Any] | None:
        """One pass; None once the target is gone."""
        try:
            samples = self.process.sample()
        except ProbeUnavailable:
            return None
        samples = list(samples) + self._optional(self.limits) + self._optional(self.nvml)
        values = {(s.name, s.labels): s.value for s in samples}
        rss = values[("process_resident_memory_bytes", ())]
        limit = self.fixed_limit
        if limit is None:
            cap = values.get(("memory_limit_bytes", ()))
            usage = values.get(("memory_limit_usage_bytes", ()))
            if cap is not None and usage is not None:
                limit = rss + max(cap - usage, 0.0)
        kills = values.get(("cgroup_oom_kills_total", ()))
        if kills is not None:
            self.oom_kills_first = kills if self.oom_kills_first is None else self.oom_kills_first
            self.oom_kills_last = kills
        agent = agent_series(self.pid)
        previous = self.verdict
        verdict = previous
        adjusted = self.discount.adjust(rss, self._disturbed(t, agent))
        if adjusted is not None:
            if limit is not None:
                limit -= self.discount.offset  # the headroom is the same
            verdict = self.detector.update(t, adjusted, limit)
        if verdict is None:
            verdict = self.detector.verdict
        recent = self.recent.update(t, rss)
        self.verdict = verdict
        self.saw_leak = self.saw_leak or verdict.state == "leak"
        if self.writer is not None:
            self.writer.write_samples(t, samples)
            if previous is None or previous.state != verdict.state:
                self.writer.write_event(
                    "verdict", t, series="process_resident_memory_bytes", **verdict.fields()
                )
        row: dict[str, Any] = {
            "t": t,
            "pid": self.pid,
            "rss_bytes": rss,
            "limit_bytes": limit,
            # The detector's rate once it has one; until then, the last two minutes'.
            "growth_bytes_per_second": verdict.rate if verdict.rate is not None else recent,
            "verdict": verdict.state,
            "reason": verdict.reason,
            "seconds_to_oom": verdict.seconds_to_oom,
            "seconds_to_oom_low": verdict.seconds_to_oom_low,
            "seconds_to_oom_high": verdict.seconds_to_oom_high,
        }
        if agent is not None:
            row["agent"] = agent
        return row

    def _disturbed(self, t: float, agent: dict[str, float] | None) -> bool:
        """Whether the agent is dumping, or did within the last ``SETTLE_SECONDS``. A dump that
        began and ended between two ticks shows as a change of ``dumps_total``."""
        if agent is not None:
            dumps = agent.get("dumps_total")
            changed = dumps is not None and dumps != self._dumps_seen
            if changed and self._dumps_seen is None:
                changed = False  # the first reading: dumps before the watch began
            self._dumps_seen = dumps
            if changed or agent.get("dump_active"):
                self._disturbed_until = t + SETTLE_SECONDS
        return t < self._disturbed_until

    def _optional(self, probe: LimitsProbe | NvmlProbe) -> list[Sample]:
        try:
            return list(probe.sample())
        except ProbeUnavailable:
            return []

    def ended(self, t: float, read_kernel_log: Any = None) -> dict[str, Any]:
        """How the target ended, from what the watcher can see; recorded in the history."""
        from reports.postmortem import oom_lines_for, read_kmsg

        record: dict[str, Any] = {"event": "exit", "t": t, "pid": self.pid}
        record.update(zombie_exit(self.pid) or {"status": None})
        if record.get("status") is None and "signal" not in record:
            record["status_note"] = "not our child: its exit status went to its parent"
        after = self._oom_kills_now()
        record["oom_kills_before"] = self.oom_kills_last
        record["oom_kills_after"] = after
        try:
            lines = oom_lines_for(self.pid, (read_kernel_log or read_kmsg)())
            record["kernel_log"] = lines[-2:]
        except OSError as exc:
            lines = []
            record["kernel_log"] = f"the kernel log is not readable ({exc.strerror or exc})"
        oom_counted = (
            after is not None and self.oom_kills_last is not None and (after > self.oom_kills_last)
        )
        if lines or oom_counted:
            record["how"] = "oom-kill"
        elif "signal" in record:
            record["how"] = "killed"
        elif record.get("status") is not None:
            record["how"] = "exit"
        else:
            record["how"] = "unknown"
        if self.writer is not None:
            fields = {k: v for k, v in record.items() if k not in ("event", "t")}
            self.writer.write_event("exit", t, **fields)
            self.writer.close()
        return record

    def _oom_kills_now(self) -> float | None:
        cgroup = self.limits._cgroup
        if cgroup is None:
            return None
        try:
            return float(parse_oom_kills(cgroup.oom.read()))
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.write_event("stop", time.time(), reason="watch ended")
            self.writer.close()
        self.process.close()
        self.limits.close()


#: What watch shows of an agent running in the target: heap, malloc, CUDA, sites, requests.
AGENT_SERIES = (
    "python_allocated_blocks", "malloc_in_use_bytes", "malloc_free_retained_bytes",
    "gc_tracked_objects", "cuda_allocated_bytes", "cuda_reserved_bytes",
    "tracemalloc_top_bytes", "requests_total", "leak_suspected",
)  # fmt: skip
#: The agent's live dump state from its `latest` answer: read to keep its dumps out of the
#: verdict, not worth a row of the live view.
BOOKKEEPING = frozenset({"dumps_total", "dump_active"})


def agent_series(pid: int) -> dict[str, float] | None:
    """The richer series of an agent in ``pid`` (embedded, diag run or attached), read over its
    control socket from its latest tick; None when it runs no agent we may talk to."""
    reply = request(pid, "latest", timeout=0.5)
    if reply is None:
        return None
    out: dict[str, float] = {}
    for name, value, labels in reply.get("samples", []):
        if name in AGENT_SERIES:
            out[series_key(name, tuple(sorted(labels.items())))] = float(value)
    for name in BOOKKEEPING:  # live: fresher than the last tick's gauges
        if name in reply:
            out[name] = float(reply[name])
    return out


def _command_of(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 60) -> str:
    values = values[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(
        SPARKS[min(len(SPARKS) - 1, int((v - low) / span * len(SPARKS)))] for v in values
    )


def live_panel(pid: int, command: list[str], rows: list[dict[str, Any]]) -> Any:
    """The live view: memory against its limit, its recent shape, growth, verdict, forecast."""
    from rich.panel import Panel
    from rich.table import Table

    row = rows[-1]
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    rss, limit = row["rss_bytes"], row["limit_bytes"]
    memory = format_bytes(rss)
    if limit:
        share = rss / limit
        filled = int(min(share, 1.0) * 30)
        memory += f" of {format_bytes(limit)} ({share:.0%})  [{'█' * filled}{'·' * (30 - filled)}]"
    table.add_row("memory", memory)
    table.add_row("last minute", sparkline([r["rss_bytes"] for r in rows]))
    rate = row["growth_bytes_per_second"]
    table.add_row(
        "growth",
        "-" if rate is None else f"{format_bytes(rate)}/s, {format_bytes(rate * 3600)}/h",
    )
    style = {"leak": "bold red", "growing": "yellow", "bounded_growth": "cyan"}.get(
        row["verdict"], "green"
    )
    table.add_row("verdict", f"[{style}]{row['verdict']}[/] ({row['reason']})")
    if row["seconds_to_oom"] is not None:
        table.add_row(
            "time to OOM",
            f"{format_duration(row['seconds_to_oom'])} "
            f"({format_duration(row['seconds_to_oom_low'])} to "
            f"{format_duration(row['seconds_to_oom_high'])})",
        )
    agent = {k: v for k, v in row.get("agent", {}).items() if k not in BOOKKEEPING}
    for key, value in sorted(agent.items())[:12]:
        shown = (
            f"{value:,.0f}"
            if not key.endswith("bytes") and "bytes{" not in key
            else (format_bytes(value))
        )
        table.add_row(f"agent {key}"[:48], shown)
    title = f"diag watch: pid {pid} {' '.join(command)[:60]}"
    return Panel(table, title=title, subtitle="d: dump · Ctrl-C: stop", expand=False)


def tick_line(row: dict[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(row["t"]))
    rate = row["growth_bytes_per_second"]
    growth = f"{format_bytes(rate * 3600)}/h" if rate else "-"
    text = f"{when} pid {row['pid']} RSS {format_bytes(row['rss_bytes'])} growth {growth} "
    text += f"{row['verdict']} ({row['reason']})"
    if row["seconds_to_oom"] is not None:
        text += (
            f", OOM in {format_duration(row['seconds_to_oom'])}"
            f" ({format_duration(row['seconds_to_oom_low'])}"
            f"-{format_duration(row['seconds_to_oom_high'])})"
        )
    return text


@click.command()
@click.option("--pid", type=int, required=True, help="The process to watch.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True)
@click.option("--duration", type=click.FloatRange(min=0), help="Stop after this many seconds.")
@click.option("--history", help="History directory (default: $DIAG_HISTORY or per user; off).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per tick, per line.")
@click.option("--attach", "attach_first", is_flag=True, help="Start the agent in it first.")
@click.option(
    "--sensitivity",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    envvar="DIAG_SENSITIVITY",
    help="The detector's eagerness: its durations are divided by it.",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0, min_open=True),
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
    watcher = Watcher(pid, history, sensitivity=sensitivity, time_scale=time_scale)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    ended: dict[str, Any] | None = None
    live = None
    keys = None
    if not as_json and sys.stdout.isatty():
        from rich.live import Live

        live = Live(auto_refresh=False)
        live.start()
        keys = KeyReader.start()
    rows: list[dict[str, Any]] = []
    command = _command_of(pid)
    shown_dump: Any = None
    dumped_on_leak = False
    try:
        while True:
            row = watcher.tick(time.time())
            if row is None:
                ended = watcher.ended(time.time())
                break
            rows = [*rows[-59:], row]
            if live is None:
                click.echo(json.dumps(row) if as_json else tick_line(row))
            wants_dump = keys is not None and keys.pressed("d")
            if dump_on_leak and row["verdict"] == "leak" and not dumped_on_leak:
                dumped_on_leak = wants_dump = True
            if wants_dump:
                shown_dump = _take_dump(pid, as_json, live is not None)
            if live is not None:
                live.update(_with_dump(live_panel(pid, command, rows), shown_dump), refresh=True)
            if duration is not None and time.monotonic() - started >= duration:
                break
            if stop.wait(interval):
                break
    except KeyboardInterrupt:
        pass
    finally:
        if keys is not None:
            keys.stop()
        if live is not None:
            live.stop()
    if ended is None:
        watcher.close()
    else:
        click.echo(json.dumps(ended) if as_json else ended_text(ended), err=not as_json)
        if watcher.writer is not None:
            click.echo(f"diag report {watcher.writer.run_dir}", err=True)
    if ended is not None or watcher.saw_leak:
        raise click.exceptions.Exit(1)


class KeyReader:
    """Single key presses from the terminal while the live view runs (cbreak mode, restored on
    stop). Only where stdin is a terminal."""

    def __init__(self, fd: int, saved: Any) -> None:
        self._fd, self._saved = fd, saved
        self._keys: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._read, name="diag-keys", daemon=True).start()

    @classmethod
    def start(cls) -> KeyReader | None:
        import termios
        import tty

        if not sys.stdin.isatty():
            return None
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        return cls(fd, saved)

    def _read(self) -> None:
        import select

        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.2)
            if ready:
                key = os.read(self._fd, 1).decode(errors="replace").lower()
                with self._lock:
                    self._keys.add(key)

    def pressed(self, key: str) -> bool:
        with self._lock:
            found = key in self._keys
            self._keys.discard(key)
        return found

    def stop(self) -> None:
        import termios

        self._stop.set()
        termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)


def _take_dump(pid: int, as_json: bool, live: bool) -> Any:
    """A dump of the agent in ``pid``: printed (plain, JSON) or returned for the live view."""
    from reports.dump import render, render_text

    document = request(pid, "dump", timeout=120.0, keep_errors=True)
    if document is None or "error" in document:
        line = (
            f"no diag agent answers in pid {pid}: start one with `diag attach --pid {pid}`"
            if document is None
            else f"the agent in pid {pid} did not dump: {document['error']}"  # busy
        )
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


def _with_dump(panel: Any, dump: Any) -> Any:
    """The dump above the panel: a live view is cropped at the terminal's bottom, and the
    holders are what the user pressed the key for."""
    from rich.console import Group

    return panel if dump is None else Group(dump, panel)


def ended_text(ended: dict[str, Any]) -> str:
    how = ended["how"]
    detail = ended.get("signal_name") or (
        f"status {ended['status']}" if ended.get("status") is not None else ""
    )
    return f"pid {ended['pid']} ended: {how}" + (f" ({detail})" if detail else "")
