"""``diag report [PATH] [--html FILE | --markdown | --json]``: the post-mortem of a run."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import TYPE_CHECKING

import click

from diag.cli._output import require_stdout
from diag.errors import UsageError
from diag.history import default_root, find_runs, latest_run

if TYPE_CHECKING:
    from reports.postmortem import PostMortem


def resolve_run(path: str | None) -> str:
    """A run directory from what the user gave: a run, a history directory (its most recent
    run), or nothing (the default history's most recent run)."""
    root = path or default_root()
    if not os.path.isdir(root):
        where = f"{root} is not a directory" if path else f"no history yet in {root}"
        raise UsageError(f"{where}; give a run or history directory (diag run --history DIR)")
    runs = find_runs(root)
    if not runs:
        raise UsageError(f"{root} holds no diag history (no seg-*.dh files, no runs)")
    if runs == [root]:
        return root
    run = latest_run(root)
    assert run is not None
    return run


@click.command()
@click.argument("path", required=False, type=click.Path())
@click.option("--html", "html_file", type=click.Path(dir_okay=False), help="Write one HTML file.")
@click.option("--markdown", is_flag=True, help="Markdown, for pasting into an issue.")
@click.option("--json", "as_json", is_flag=True, help="The documented JSON document.")
def report(path: str | None, html_file: str | None, markdown: bool, as_json: bool) -> None:
    """Explain a run from its history: how it ended, when the detector first warned, what grew.

    PATH is a run directory or a history directory (its most recent run); without it, the
    default history ($DIAG_HISTORY or ~/.local/state/diag/history).
    """
    from reports import postmortem

    if not html_file:
        require_stdout()
    run_dir = resolve_run(path)
    data = postmortem.build(run_dir)
    if sys.stdout is not None:  # else --html alone: the page is the output
        _print(data, as_json, markdown)
    if html_file:
        from reports import html

        page = html.render(data)
        # Written beside it and renamed over it: a write that fails (a full disk) leaves the
        # page that was there, or none, never half of one.
        partial = f"{html_file}.partial"
        try:
            with open(partial, "w", encoding="utf-8") as f:
                f.write(page)
            os.replace(partial, html_file)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise UsageError(f"cannot write {html_file}: {exc.strerror or exc}") from None
        click.echo(f"wrote {html_file}", err=True)


def _print(data: PostMortem, as_json: bool, markdown: bool) -> None:
    if as_json:
        click.echo(json.dumps(data.to_json(), default=str))
    elif markdown:
        from reports import markdown as md

        click.echo(md.render(data), nl=False)
    else:
        from rich.console import Console

        from reports import terminal

        terminal.render(data, Console())
