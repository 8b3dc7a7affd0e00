"""The post-mortem in a terminal (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel

from reports import dump, text
from reports.postmortem import PostMortem


def render(report: PostMortem, console: Console) -> None:
    body = [f"[bold]{text.headline(report)}[/]", text.span_line(report), ""]
    body.append(text.verdict_line(report))
    body.extend(f"  {line}" for line in text.evidence_lines(report))
    body.append("")
    body.extend(text.memory_lines(report))
    for problem in report.problems:
        body.append(f"[yellow]history: {problem}[/]")
    console.print(Panel("\n".join(body), title=f"diag report: {report.run_dir}", expand=False))
    if report.last_finding:
        console.print("[bold]the last culprit finding (a traced window, from the history)[/]")
        console.print(dump.render(report.last_finding))
