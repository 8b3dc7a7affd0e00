"""A dump (``diag dump``'s document, or a finding from the history) as a tree of holders."""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from diag.units import format_bytes, format_duration

_CONTAINERS = ("dict", "list", "set", "tuple", "deque", "OrderedDict", "defaultdict", "frozenset")


def _rate(owner: dict[str, Any]) -> str:
    per_request = owner.get("growth_bytes_per_request")
    per_second = owner.get("growth_bytes_per_second")
    parts = []
    if per_request is not None and per_request != 0:
        parts.append(
            f"{'+' if per_request > 0 else '-'}{format_bytes(abs(per_request))} per request"
        )
    if per_second is not None:
        sign = "+" if per_second >= 0 else "-"
        parts.append(f"{sign}{format_bytes(abs(per_second))}/s")
    return ", ".join(parts)


def _stack_text(stack: dict[str, Any]) -> str:
    return "  ← ".join(
        f"{f['file'].rsplit('/', 1)[-1]}:{f['line']} {f['function']}()" for f in stack["frames"][:4]
    )


def _count_rate(item: dict[str, Any]) -> str:
    parts = []
    per_request = item.get("growth_per_request")
    per_second = item.get("growth_per_second")
    if per_request:
        parts.append(f"{per_request:+.2f} per request")
    if per_second is not None:
        parts.append(f"{per_second:+.2f}/s")
    return ", ".join(parts)


def _frames_text(frames: list[dict[str, Any]]) -> str:
    return "  ← ".join(
        f"{f['file'].rsplit('/', 1)[-1]}:{f['line']} {f['function']}()" for f in frames[:4]
    )


def _resources(tree: Tree, resources: list[dict[str, Any]]) -> None:
    """Each resource, growing first; the groups of those that grow (or, without a window, of
    all): who holds them and where they were made."""
    if not resources:
        return
    branch = tree.add("resources")
    for resource in resources:
        label = f"{resource['resource']}  {resource['count']:,}"
        if resource.get("limit") is not None:
            label += f" of {resource['limit']:,.0f}"
        rate = _count_rate(resource)
        if rate:
            label += f", {rate}"
        if resource.get("seconds_to_exhaustion") is not None:
            label += f", exhausted in {format_duration(resource['seconds_to_exhaustion'])}"
        node = branch.add(escape(label))
        growth = resource.get("growth_per_second")
        if growth is not None and growth <= 0:
            continue
        for group in resource["groups"][:3]:
            where = group.get("holder_path") or (
                f"({group['detail']})" if group.get("detail") else "(no holder found)"
            )
            text = f"{where}  {group['count']:,} × {group['kind']}"
            rate = _count_rate(group)
            leaf = node.add(escape(f"{text}, {rate}" if rate else text))
            if group.get("created_at"):
                leaf.add(escape(f"created at {_frames_text(group['created_at'])}"))


def _signed(rate: float | None) -> str:
    if rate is None:
        return "?"
    return f"{'+' if rate >= 0 else '-'}{format_bytes(abs(rate))}/s"


def _share(share: float | None) -> str:
    """A holder's share of the total growth. A holder can grow faster than RSS (it fills
    memory that was already resident, freed by others): "509 %" would read as an error."""
    if share is None or share < 0:
        return ""
    return f" ({share:.0%})" if share <= 1.0 else " (more than RSS grew)"


def account_lines(growth: dict[str, Any]) -> tuple[str, list[str]]:
    """The growth account as a head line and one line per part (zero parts left out)."""
    over = (
        f"traced window of {growth['span_seconds']:.0f} s"
        if growth.get("source") == "window"
        else f"last {growth['span_seconds']:.0f} s, start-up left out"
    )
    head = f"growth account ({over}): RSS {_signed(growth['rss_bytes_per_second'])}"
    cuda = growth.get("cuda_reserve_bytes_per_second") or 0.0
    total = growth.get("total_bytes_per_second")
    if total is not None and abs(total - growth["rss_bytes_per_second"]) > 1.0:
        head += f", with CUDA reserved {_signed(total)}"
    owners = f"live objects {_signed(growth['owners_bytes_per_second'])}"
    named = [
        f"{o['path']} {_signed(o['bytes_per_second'])}{_share(o.get('share'))}"
        for o in growth.get("by_owner", [])[:3]
    ]
    lines = [f"{owners}: {', '.join(named)}" if named else f"{owners} (no holder grew)"]
    kept = f"kept free by malloc {_signed(growth['allocator_retention_bytes_per_second'])}"
    if growth.get("trim_returned_bytes"):
        kept += f" (malloc_trim gave back {format_bytes(growth['trim_returned_bytes'])})"
    lines.append(kept)
    if cuda:
        lines.append(f"CUDA cache reserve {_signed(cuda)}")
    native = f"native {_signed(growth['native_bytes_per_second'])}"
    if growth.get("tracing_bytes_per_second"):
        native += f" (tracemalloc's own {_signed(growth['tracing_bytes_per_second'])})"
    lines.append(native)
    unexplained = growth["unexplained_bytes_per_second"]
    text = f"unexplained {_signed(unexplained)}"
    if unexplained < 0:
        text += " (the parts exceed the growth: memory reused that was already resident)"
    lines.append(text)
    return head, lines


def _account(branch: Tree, growth: dict[str, Any]) -> None:
    head, lines = account_lines(growth)
    node = branch.add(escape(head))
    for line in lines:
        node.add(escape(line))


def render(document: dict[str, Any]) -> Tree:
    """The holders as a tree, biggest first, under the cause."""
    head = f"pid {document['pid']}: heap walked in {document['pause_seconds']:.2f} s"
    if not document["complete"]:
        head += " (time budget hit: some objects not placed or their paths not found)"
    if document.get("window_seconds"):
        head += f"; traced {document['window_seconds']:.0f} s"
        if document.get("requests") is not None:
            head += f", {document['requests']:,} requests"
    tree = Tree(escape(head))
    cause = document.get("cause") or {}
    if cause:
        branch = tree.add(escape(f"cause: {cause['kind']}: {cause['summary']}"))
        for line in cause.get("evidence", []):
            branch.add(escape(line))
        growth = cause.get("growth_accounting")
        if growth:
            _account(branch, growth)
    for note in document.get("notes", []):
        tree.add(escape(f"({note})"))
    for owner in document["owners"]:
        count = owner["objects"]
        entries = f"{count:,} entries, " if count != 1 or owner["kind"] in _CONTAINERS else ""
        label = (
            f"{owner['path']}  {owner['kind']}, {entries}retains "
            f"{format_bytes(owner['retained_bytes'])}"
        )
        rate = _rate(owner)
        branch = tree.add(escape(f"{label}, {rate}" if rate else label))
        for content in owner["contents"]:
            each = content["bytes"] / max(content["count"], 1)
            beneath = content.get("beneath") or ""  # documents from before the field
            branch.add(
                escape(
                    f"{beneath + '  ' if beneath else ''}{content['count']:,} × "
                    f"{content['type']} {content['device']} ({format_bytes(each)} each)"
                )
            )
        for stack in owner["allocation_stacks"][:2]:
            branch.add(escape(f"allocated at {_stack_text(stack)}"))
    _resources(tree, document.get("resources") or [])
    sites = document.get("allocation_sites") or []
    if sites:
        branch = tree.add("grew most in the window (tracemalloc: Python's allocator only)")
        for site in sites[:5]:
            branch.add(
                escape(f"{site['site']}  +{format_bytes(site['bytes'])} in {site['count']:,}")
            )
    return tree


def render_text(document: dict[str, Any], width: int = 140) -> str:
    with open(os.devnull, "w") as sink:
        console = Console(width=width, record=True, file=sink)
        console.print(render(document))
    return console.export_text()
