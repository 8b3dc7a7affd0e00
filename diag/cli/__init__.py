"""The ``diag`` command line: one module per command, each thin over the library."""

from __future__ import annotations

from typing import Any

import click

from diag import __version__
from diag.errors import DiagError


class _Group(click.Group):
    """Prints a DiagError as one ``diag: ...`` line with its exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DiagError as exc:
            click.echo(f"diag: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="diag")
def main() -> None:
    """Memory-leak and resource diagnostics for long-running Python services.

    Exit codes: 0 done, 1 a finding or failure to act on, 2 bad usage or input.
    """


def _register() -> None:
    from diag.cli.analyze import analyze
    from diag.cli.attach import attach
    from diag.cli.demo import demo
    from diag.cli.dump import dump
    from diag.cli.report import report
    from diag.cli.run import run
    from diag.cli.watch import watch

    main.add_command(run)
    main.add_command(analyze)
    main.add_command(attach)
    main.add_command(report)
    main.add_command(watch)
    main.add_command(demo)
    main.add_command(dump)


_register()
