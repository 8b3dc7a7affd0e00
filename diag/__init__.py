"""diag: memory-leak and resource diagnostics for long-running Python services.

The core (model, series, settings, metrics catalog) imports no torch, no click and no
prometheus_client, so the agent stays light inside the host process.
"""

import os

from diag.errors import DiagError, ProcessError, UsageError

# The public API, pinned by tests/test_public_api.py; the diag command line, the probes package
# and the documented JSON documents are the rest of it (README, "Public API").
__all__ = ["DiagError", "ProcessError", "UsageError", "__version__"]

__version__ = "0.1.0"

#: The directories of diag's own agent packages (diag and probes): their frames, allocations
#: and objects are the tool's, never the host's leak. Internal (diag's and probes' own use).
OWN_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name)
    for name in ("diag", "probes")
)
