"""The live views of a watch: a rich panel redrawn each tick, or one line per tick.

Rows are the ``Watcher.tick`` documents (``diag watch --json`` prints them as they are); these
functions only draw them.
"""

from __future__ import annotations

import io
import time
from typing import Any

from diag.control import DUMP_STATE
from diag.units import format_bytes, format_forecast

SPARKS = "▁▂▃▄▅▆▇█"
#: At most this many of the agent's own series in the panel, each labelled in this many columns.
MAX_AGENT_ROWS = 12
AGENT_LABEL = 44
#: How many rows the panel's sparkline shows: the last minute at the default interval.
ROWS_SHOWN = 60


def sparkline(values: list[float], width: int = ROWS_SHOWN) -> str:
    values = values[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(
        SPARKS[min(len(SPARKS) - 1, int((v - low) / span * len(SPARKS)))] for v in values
    )


def forecast_of(row: dict[str, Any]) -> str | None:
    if row["seconds_to_oom"] is None:
        return None
    return format_forecast(
        row["seconds_to_oom"], row["seconds_to_oom_low"], row["seconds_to_oom_high"]
    )


def live_panel(
    pid: int,
    command: list[str],
    rows: list[dict[str, Any]],
    height: int | None = None,
    width: int | None = None,
) -> Any:
    """The live view: memory against its limit, its recent shape, growth, verdict, forecast,
    resources, then what the agent inside reports, as many rows of it as ``height`` (the
    terminal's lines) leaves room for: a view taller than the terminal loses its bottom line,
    and with it the keys."""
    from rich.console import Group
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
    forecast = forecast_of(row)
    if forecast is not None:
        table.add_row("time to OOM", forecast)
    for label, text in resource_rows(row):
        table.add_row(label, text)
    agent = {
        k: v
        for k, v in row.get("agent", {}).items()
        # The resources have their own rows above.
        if k not in DUMP_STATE and "resource_usage" not in k
    }
    title = f"diag watch: pid {pid} {' '.join(command)[:60]}"
    room = MAX_AGENT_ROWS
    if height is not None:  # the lines the rest takes, with the panel's borders and a spare
        room = max(0, height - _lines_of(Panel(table, expand=False), width) - 2)
    inside = Table.grid(padding=(0, 2))  # its own columns: long names wrap no other row
    inside.add_column(style="bold")
    inside.add_column()
    for key, value in sorted(agent.items())[: min(room, MAX_AGENT_ROWS)]:
        is_bytes = key.endswith("bytes") or "bytes{" in key
        label = key if len(key) <= AGENT_LABEL else key[: AGENT_LABEL - 1] + "…"
        inside.add_row(label, format_bytes(value) if is_bytes else f"{value:,.0f}")
    body = Group(table, inside) if inside.row_count else table
    return Panel(body, title=title, subtitle="d: dump · Ctrl-C: stop", expand=False)


def _lines_of(renderable: Any, width: int | None) -> int:
    from rich.console import Console

    console = Console(width=width or 80, file=io.StringIO())
    return len(console.render_lines(renderable, pad=False))


#: The resources a live view shows, in order, with their short names.
SHOWN_RESOURCES = (
    ("fds", "fds"),
    ("threads", "threads"),
    ("children", "children"),
    ("memory_maps", "maps"),
    ("shm", "shm"),
    ("asyncio_tasks", "tasks"),
)


def _amount(resource: str, value: float) -> str:
    return format_bytes(value) if resource == "shm" else f"{value:,.0f}"


def resource_rows(row: dict[str, Any]) -> list[tuple[str, str]]:
    """The panel's resource rows: one line of usage against limits, the fds and sockets
    breakdown, and a line per resource whose verdict is not steady."""
    resources = row.get("resources") or {}
    if not resources:
        return []
    parts = []
    for key, short in SHOWN_RESOURCES:
        entry = resources.get(key)
        if entry is None:
            continue
        text = f"{short} {_amount(key, entry['usage'])}"
        if entry.get("limit"):
            text += f"/{_amount(key, entry['limit'])} ({entry['usage'] / entry['limit']:.0%})"
        parts.append(text)
    out = [("resources", " · ".join(parts))]
    breakdown = row.get("breakdown") or {}
    fds = {k: v for k, v in (breakdown.get("open_fds") or {}).items() if v}
    if fds:
        out.append(("fds by kind", ", ".join(f"{k} {v:,.0f}" for k, v in fds.items())))
    sockets = breakdown.get("sockets") or {}
    if sockets:
        top = sorted(sockets.items(), key=lambda kv: -kv[1])[:4]
        out.append(("sockets", ", ".join(f"{k} {v:,.0f}" for k, v in top)))
    for key, short in SHOWN_RESOURCES:
        entry = resources.get(key)
        if entry is None or entry["verdict"] not in ("leak", "growing"):
            continue
        text = f"{entry['verdict']}"
        rate = entry.get("growth_per_second")
        if rate:
            text += f", +{_amount(key, rate * 3600)}/h"
        forecast = exhaustion_of(entry)
        if forecast is not None:
            text += f", exhausted in {forecast}"
        out.append((f"{short}", text))
    return out


def tick_line(row: dict[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(row["t"]))
    rate = row["growth_bytes_per_second"]
    growth = f"{format_bytes(rate * 3600)}/h" if rate else "-"
    text = f"{when} pid {row['pid']} RSS {format_bytes(row['rss_bytes'])} growth {growth} "
    text += f"{row['verdict']} ({row['reason']})"
    forecast = forecast_of(row)
    if forecast is not None:
        text += f", OOM in {forecast}"
    resources = row.get("resources") or {}
    if "fds" in resources:
        text += f"; fds {resources['fds']['usage']:,.0f}"
    if "threads" in resources:
        text += f", threads {resources['threads']['usage']:,.0f}"
    for key, short in SHOWN_RESOURCES:
        entry = resources.get(key)
        if entry is not None and entry["verdict"] == "leak":
            text += f"; {short} leak"
            forecast = exhaustion_of(entry)
            if forecast is not None:
                text += f", exhausted in {forecast}"
    return text


def exhaustion_of(entry: dict[str, Any]) -> str | None:
    if entry.get("seconds_to_exhaustion") is None:
        return None
    return format_forecast(
        entry["seconds_to_exhaustion"],
        entry.get("seconds_to_exhaustion_low"),
        entry.get("seconds_to_exhaustion_high"),
    )


def ended_text(ended: dict[str, Any]) -> str:
    how = ended["how"]
    detail = ended.get("signal_name") or (
        f"status {ended['status']}" if ended.get("status") is not None else ""
    )
    return f"pid {ended['pid']} ended: {how}" + (f" ({detail})" if detail else "")


class LivePanel:
    """The panel on a terminal, redrawn with each row; a dump, when there is one, above it (a
    live view is cropped at the terminal's bottom, and the holders are what the user asked for).
    """

    def __init__(self, pid: int, command: list[str]) -> None:
        from rich.live import Live

        self.pid, self.command = pid, command
        self.rows: list[dict[str, Any]] = []
        self._live = Live(auto_refresh=False)
        self._live.start()

    def show(self, row: dict[str, Any], dump: Any = None) -> None:
        from rich.console import Group

        self.rows = [*self.rows[-(ROWS_SHOWN - 1) :], row]
        console = self._live.console
        panel = live_panel(self.pid, self.command, self.rows, console.height, console.width)
        self._live.update(panel if dump is None else Group(dump, panel), refresh=True)

    def stop(self) -> None:
        self._live.stop()
