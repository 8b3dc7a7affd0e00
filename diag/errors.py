"""The errors diag reports to users, each with the exit code the CLI documents.

    DiagError            exit 1: a failure or finding the user must act on
    ├── ProcessError     the target process: gone, a zombie, not ours, not Python
    └── UsageError       exit 2: bad usage or input (also raised by click itself)

The message is one line saying what happened and what to do; the CLI prints it as
``diag: <message>`` without a traceback.
"""

from __future__ import annotations


class DiagError(Exception):
    exit_code = 1


class ProcessError(DiagError):
    pass


class UsageError(DiagError):
    exit_code = 2
