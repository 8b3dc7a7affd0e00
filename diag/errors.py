"""The errors diag reports to users, each with the exit code the CLI documents.

    DiagError            exit 1: a failure or finding the user must act on
    ├── ProcessError     the target process: gone, a zombie, not ours, not Python
    ├── UsageError       exit 2: bad usage or input (also raised by click itself)
    └── LeakError        a leak check (diag.check, the pytest plugin) saw growth

The message is one line saying what happened and what to do; the CLI prints it as
``diag: <message>`` without a traceback.
"""

from __future__ import annotations

from typing import Any


class DiagError(Exception):
    exit_code = 1


class ProcessError(DiagError):
    pass


class UsageError(DiagError):
    exit_code = 2


class LeakError(DiagError):
    """A leak check failed: something grew with every run (``diag.check``). ``report`` is the
    ``diag.check.LeakReport``; the message is its text."""

    def __init__(self, report: Any) -> None:
        super().__init__(report.format())
        self.report = report
