"""diag: memory-leak and resource diagnostics for long-running Python services.

The core (model, series, settings, metrics catalog) imports no torch, no click and no
prometheus_client, so the agent stays light inside the host process.
"""

import os
from typing import Any

from diag.errors import DiagError, LeakError, ProcessError, UsageError

# The public API, pinned by tests/test_public_api.py; the diag command line, the probes package
# and the documented JSON documents are the rest of it (README, "Public API").
__all__ = [
    "DiagError",
    "LeakError",
    "ProcessError",
    "UsageError",
    "__version__",
    "allow_growth",
    "check",
]

__version__ = "0.1.0"

#: The directories of diag's own agent packages (diag and probes): their frames, allocations
#: and objects are the tool's, never the host's leak. Internal (diag's and probes' own use).
OWN_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name)
    for name in ("diag", "probes")
)


def __getattr__(name: str) -> Any:
    """``diag.check`` and ``diag.allow_growth`` (the leak checks for tests) load on first use:
    ``import diag`` stays light inside the host."""
    if name in ("check", "allow_growth"):
        import importlib

        module = importlib.import_module("diag.check")
        return module if name == "check" else module.allow_growth
    raise AttributeError(f"module 'diag' has no attribute {name!r}")
