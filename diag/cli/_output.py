"""Where the commands print."""

from __future__ import annotations

import sys

from diag.errors import UsageError


def require_stdout() -> None:
    """With standard output closed (``>&-``), Python has no ``sys.stdout`` and click prints
    nothing: a report that went nowhere must not exit 0 as if it had been read."""
    if sys.stdout is None:
        raise UsageError(
            "standard output is closed: there is nowhere to print to; redirect it (> out.txt)"
        )
