"""``diag dump --pid PID [--json] [--top N]``: who holds the memory of a process with the agent."""

from __future__ import annotations

import json
from typing import Any

import click

from diag.control import request
from diag.errors import DiagError
from diag.units import format_bytes


def render(document: dict[str, Any]) -> str:
    """The holders as a tree, biggest first."""
    lines = [
        f"pid {document['pid']}: {len(document['owners'])} holder(s), heap walked in "
        f"{document['pause_seconds']:.2f} s{'' if document['complete'] else ' (time budget hit)'}"
    ]
    for owner in document["owners"]:
        lines.append(
            f"{owner['path']}  {owner['kind']}, {owner['objects']:,} objects, retains "
            f"{format_bytes(owner['retained_bytes'])}"
        )
        for content in owner["contents"]:
            each = content["bytes"] / max(content["count"], 1)
            lines.append(
                f"  {content['count']:,} × {content['type']} {content['device']} "
                f"({format_bytes(each)} each)"
            )
        for stack in owner["allocation_stacks"][:1]:
            trail = "  ← ".join(
                f"{f['file'].rsplit('/', 1)[-1]}:{f['line']} {f['function']}()"
                for f in stack["frames"][:3]
            )
            lines.append(f"  allocated at {trail}")
    return "\n".join(lines)


@click.command()
@click.option("--pid", type=int, required=True, help="A process running the diag agent.")
@click.option("--top", type=click.IntRange(1, 100), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="The documented JSON document.")
def dump(pid: int, top: int, as_json: bool) -> None:
    """Name what holds the memory of a process running the agent, biggest holder first."""
    from diag.cli.watch import check_target

    check_target(pid)
    document = request(pid, "dump", timeout=120.0, top=top)
    if document is None:
        raise DiagError(
            f"pid {pid} runs no diag agent we can reach: start it with `diag run -- ...`, "
            f"or inject it with `diag attach --pid {pid}`"
        )
    click.echo(json.dumps(document) if as_json else render(document))
