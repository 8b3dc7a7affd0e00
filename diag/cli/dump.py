"""``diag dump --pid PID``: who holds the memory of a process with the agent, and why it grows.

The agent does the work (it is inside the process); this command asks it over the control
socket, then renders the document: a tree by default, the documented JSON with ``--json``, the
chain from a root to each holder as a graph with ``--graph``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import click
from rich.console import Console

from diag.control import request
from diag.errors import DiagError
from diag.units import format_bytes
from reports.dump import render

GRAPH_FORMATS = ("dot", "svg", "png", "pdf")


def graph_dot(document: dict[str, Any]) -> str:
    """The chains from roots to the holders, as graphviz DOT (one node per step)."""
    lines = [
        "digraph holders {",
        "  rankdir=LR;",
        '  node [shape=box, fontname="monospace", fontsize=10];',
    ]
    names: dict[str, str] = {}

    def node(key: str, label: str, extra: str = "") -> str:
        if key not in names:
            names[key] = f"n{len(names)}"
            lines.append(f"  {names[key]} [label={json.dumps(label)}{extra}];")
        return names[key]

    for owner in document["owners"]:
        chain = owner.get("chain") or []
        previous = None
        prefix = ""
        for index, link in enumerate(chain):
            prefix += link["step"]
            last = index == len(chain) - 1
            label = f"{link['type']}\n{prefix if index == 0 else link['step'].strip()}"
            if last:
                label += f"\n{format_bytes(owner['retained_bytes'])} retained"
            current = node(prefix, label, ', style=filled, fillcolor="#f4c7c3"' if last else "")
            if previous is not None:
                lines.append(f"  {previous} -> {current};")
            previous = current
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_graph(document: dict[str, Any], path: str) -> str:
    """Write the graph to ``path``; its extension picks the format. Returns a line to show."""
    extension = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if extension not in GRAPH_FORMATS:
        raise click.UsageError(
            f"--graph {path}: name a .dot, .svg, .png or .pdf file (the extension picks the format)"
        )
    dot_text = graph_dot(document)
    if extension == "dot":
        with open(path, "w", encoding="utf-8") as f:
            f.write(dot_text)
        return f"graph written to {path} (render it with graphviz: dot -Tsvg {path} -o graph.svg)"
    dot = shutil.which("dot")
    if dot is None:
        raise DiagError(
            f"--graph {path}: graphviz's `dot` is not installed (apt install graphviz, or "
            f"pip's graphviz has no binary); or write the DOT text with --graph holders.dot"
        )
    done = subprocess.run(
        [dot, f"-T{extension}", "-o", path], input=dot_text, text=True, capture_output=True
    )
    if done.returncode != 0:
        raise DiagError(f"--graph {path}: dot failed: {done.stderr.strip()}")
    return f"graph written to {path}"


@click.command()
@click.option("--pid", type=int, required=True, help="A process running the diag agent.")
@click.option("--top", type=click.IntRange(1, 100), default=10, show_default=True)
@click.option(
    "--window",
    type=click.FloatRange(0, 600),
    default=0.0,
    help="Trace this many seconds first: growth per holder and allocation stacks.",
)
@click.option(
    "--budget",
    type=click.FloatRange(0.1, 60),
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
    from diag.cli.watch import check_target

    check_target(pid)
    if attach_first:
        from diag.attach import attach

        attach(pid, {})
        click.echo(f"agent started in pid {pid}", err=True)
    if window and not as_json:
        click.echo(f"tracing pid {pid} for {window:.0f} s...", err=True)
    document = request(
        pid,
        "dump",
        timeout=120.0 + window + 2 * budget,  # a window walks the heap twice
        top=top,
        window=window,
        time_budget=budget,
        reveal=show_keys,
        all_frames=all_frames,
        trim=trim,
        keep_errors=True,
    )
    if document is None:
        raise DiagError(
            f"pid {pid} runs no diag agent we can reach: start it with `diag run -- ...`, "
            f"or inject it with `diag attach --pid {pid}` (or add --attach)"
        )
    if "error" in document:
        raise DiagError(f"the agent in pid {pid} did not dump: {document['error']}")
    if graph:
        click.echo(write_graph(document, graph), err=True)
    if as_json:
        click.echo(json.dumps(document))
    else:
        Console().print(render(document))
