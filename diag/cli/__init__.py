"""The ``diag`` command line: one module per command, each thin over the library."""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import click

from diag import __version__, logs
from diag.errors import DiagError

logs.install()  # a log line on a closed stderr is lost, not a traceback (diag/logs.py)

#: Errors of an output that failed (a full disk, a closed pipe, a lost terminal): the
#: command's work is done or cannot be shown; said in one line, never as a traceback.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EPIPE, errno.EBADF})


class _Group(click.Group):
    """Prints a DiagError as one ``diag: ...`` line with its exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DiagError as exc:
            click.echo(f"diag: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:
            # The reader went away (``| head``): it has what it wanted. Nothing to say, and
            # the interpreter's own flush of stdout at exit must not complain either.
            _discard_stdout()
            ctx.exit(1)
        except OSError as exc:
            if exc.errno not in OUTPUT_ERRNOS:
                raise
            _discard_stdout()
            where = exc.filename or "the output"
            click.echo(f"diag: cannot write {where}: {exc.strerror or exc}", err=True)
            ctx.exit(1)


def _discard_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # no stdout to speak of


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
