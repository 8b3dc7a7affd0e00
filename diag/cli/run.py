"""``diag run [options] -- COMMAND...``"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Mapping

import click

from diag.cli._params import FiniteRange
from diag.errors import UsageError
from diag.settings import Settings


def bootstrap_dir() -> str:
    import probes

    return os.path.join(os.path.dirname(os.path.abspath(probes.__file__)), "_bootstrap")


def child_environment(base: Mapping[str, str], settings: Settings) -> dict[str, str]:
    """The environment that starts the agent inside a Python program with these settings."""
    env = dict(base)
    env.update(settings.to_env())
    if settings.port is not None:
        env["DIAG_PORT"] = str(settings.port)  # explicit, even when it equals a default
    paths = [bootstrap_dir(), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--port", type=click.IntRange(0, 65535), help="Serve /metrics on this port.")
@click.option("--address", help="Address for /metrics (default 127.0.0.1).")
@click.option("--interval", type=FiniteRange(min=0, min_open=True), help="Seconds between ticks.")
@click.option(
    "--history",
    type=click.Path(file_okay=False),
    help="Directory for the crash-safe history (recorded once the history lands).",
)
@click.option("--trace/--no-trace", default=None, help="Start tracemalloc (slows the host).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    port: int | None,
    address: str | None,
    interval: float | None,
    history: str | None,
    trace: bool | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND with the diag agent already started in it: no code change.

    \b
      diag run --port 9109 -- python app.py
      diag run --port 9109 -- gunicorn -w 4 app:app

    Options not given here come from DIAG_* environment variables. The program replaces
    diag (same pid, same signals); its exit status is diag's.
    """
    settings = Settings.from_env(
        os.environ, port=port, address=address, interval=interval, history=history, trace=trace
    )
    for problem in settings.problems:
        # The agent alone would log the value and go on without it; here it is refused.
        raise UsageError(f"{problem.replace(' ignored: ', ': ', 1)}; correct it or unset it")
    executable = shutil.which(command[0])
    if executable is None and os.sep in command[0] and os.path.isfile(command[0]):
        executable = command[0]  # a path to a file: the kernel says why it will not run it
    if executable is None:
        raise UsageError(f"command not found: {command[0]!r}; give a program on PATH or a path")
    env = child_environment(os.environ, settings)
    try:
        os.execve(executable, list(command), env)
    except OSError as exc:
        hint = _EXEC_HINTS.get(exc.errno or 0, "")
        raise UsageError(f"cannot run {command[0]!r}: {exc.strerror}{hint}") from None


#: What to do when the kernel will not run a program it was given.
_EXEC_HINTS = {
    errno.ENOEXEC: " (no program, and a script needs a #! line; or give its interpreter: "
    "diag run -- python script.py)",
    errno.ENOENT: " (its #! interpreter is missing)",
    errno.EACCES: " (not executable by this user, or on a noexec mount)",
}
