"""``diag dump --pid PID``: who holds the memory of a process with the agent, and why it grows.

The agent does the work (it is inside the process); this command asks it over the control
socket, then renders the document: a tree by default, the documented JSON with ``--json``, the
chain from a root to each holder as a graph with ``--graph``.
"""

from __future__ import annotations

import json

import click
from rich.console import Console

from diag.cli._output import require_stdout
from diag.cli._params import FiniteRange
from diag.control import ask_dump
from diag.procfs import check_target
from reports.dump import render
from reports.graph import graph_format, write_graph


@click.command()
@click.option("--pid", type=int, required=True, help="A process running the diag agent.")
@click.option("--top", type=click.IntRange(1, 100), default=10, show_default=True)
@click.option(
    "--window",
    type=FiniteRange(0, 600),
    default=0.0,
    help="Trace this many seconds first: growth per holder and allocation stacks.",
)
@click.option(
    "--budget",
    type=FiniteRange(0.1, 60),
    default=10.0,
    show_default=True,
    help="Seconds each heap walk may pause the process; past it the dump says it is incomplete.",
)
@click.option("--json", "as_json", is_flag=True, help="The documented JSON document.")
@click.option(
    "--graph", "graph", metavar="FILE", help="Draw root-to-holder chains (.dot/.svg/.png)."
)
@click.option("--show-keys", is_flag=True, help="Show dict keys in paths (may be user data).")
@click.option("--all-frames", is_flag=True, help="Keep frames of torch, diag and the stdlib.")
@click.option("--trim", is_flag=True, help="Run malloc_trim(0) to test allocator retention.")
@click.option("--attach", "attach_first", is_flag=True, help="Start the agent in it first.")
def dump(
    pid: int,
    top: int,
    window: float,
    budget: float,
    as_json: bool,
    graph: str | None,
    show_keys: bool,
    all_frames: bool,
    trim: bool,
    attach_first: bool,
) -> None:
    """Name what holds the memory of a process running the agent, biggest holder first.

    Without --window it reports the holders now, with the growth and stacks of the agent's last
    traced window (it runs one by itself when a leak starts). Exit 1 when no agent answers.
    """
    require_stdout()
    check_target(pid, "dump")
    if graph:
        graph_format(graph)  # a wrong name said now, not after the window
    if attach_first:
        from diag.attach import attach

        attach(pid, {})
        click.echo(f"agent started in pid {pid}", err=True)
    if window and not as_json:
        click.echo(f"tracing pid {pid} for {window:.0f} s...", err=True)
    document = ask_dump(
        pid,
        timeout=120.0 + window + 2 * budget,  # a window walks the heap twice
        top=top,
        window=window,
        time_budget=budget,
        reveal=show_keys,
        all_frames=all_frames,
        trim=trim,
    )
    # The document first: a graph that cannot be written must not lose a window's dump.
    if as_json:
        click.echo(json.dumps(document))
    else:
        Console().print(render(document))
    if graph:
        click.echo(write_graph(document, graph), err=True)
