"""The chains from roots to a dump's holders as a graph: graphviz DOT, or drawn by graphviz."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

from diag.errors import DiagError, UsageError
from diag.units import format_bytes

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


def graph_format(path: str) -> str:
    """The format ``path``'s extension picks; a clear ``UsageError`` before any work (a dump
    with a window takes minutes) for one that picks none."""
    extension = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if extension not in GRAPH_FORMATS:
        raise UsageError(
            f"--graph {path}: name a .dot, .svg, .png or .pdf file (the extension picks the format)"
        )
    return extension


def write_graph(document: dict[str, Any], path: str) -> str:
    """Write the graph to ``path``; its extension picks the format. Returns a line to show;
    a file that cannot be written is a ``DiagError`` naming why."""
    extension = graph_format(path)
    dot_text = graph_dot(document)
    if extension == "dot":
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(dot_text)
        except OSError as exc:
            raise DiagError(f"--graph {path}: cannot write it: {exc.strerror or exc}") from None
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
    try:
        written = os.path.getsize(path)
    except OSError:
        written = 0
    if written == 0:  # dot says nothing of a write that failed (a full disk): an empty file
        raise DiagError(f"--graph {path}: dot wrote nothing there (a full disk?)")
    return f"graph written to {path}"
