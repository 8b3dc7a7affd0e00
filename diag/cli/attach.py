"""``diag attach --pid PID``: start the agent inside a running Python process."""

from __future__ import annotations

from typing import Any

import click

from diag.attach import attach as attach_to
from diag.cli._params import FiniteRange


def settings_of(port: int | None, address: str | None, interval: float | None,
                history: str | None) -> dict[str, Any]:  # fmt: skip
    given = {"port": port, "address": address, "interval": interval, "history": history}
    return {k: v for k, v in given.items() if v is not None}


@click.command()
@click.option("--pid", type=int, required=True, help="A running Python process.")
@click.option("--port", type=click.IntRange(0, 65535), help="Serve /metrics on this port.")
@click.option("--address", help="Address for /metrics (default 127.0.0.1).")
@click.option("--interval", type=FiniteRange(min=0, min_open=True), help="Tick seconds.")
@click.option("--history", help="History directory in the target (default: its user's).")
def attach(
    pid: int, port: int | None, address: str | None, interval: float | None, history: str | None
) -> None:
    """Start the diag agent inside a running Python process, without a restart.

    Python 3.14+: sys.remote_exec. Older: ptrace at a safe point (x86-64 Linux; gdb
    elsewhere); needs ptrace rights.
    Exit code 1 when it could not be done (the line says why and what to do), 2 for a bad pid.
    """
    result = attach_to(pid, settings_of(port, address, interval, history))
    where = f", /metrics on port {result['port']}" if result.get("port") else ""
    click.echo(
        f"agent started in pid {pid} (python {result.get('python')}, role {result.get('role')}"
        f"{where})"
    )
