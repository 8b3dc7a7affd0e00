"""diag: memory-leak and resource diagnostics for long-running Python services.

The core (model, series, settings, metrics catalog) imports no torch, no click and no
prometheus_client, so the agent stays light inside the host process.
"""

import os

__version__ = "0.1.0"

#: The directories of diag's own agent packages (diag and probes): their frames, allocations
#: and objects are the tool's, never the host's leak.
OWN_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name)
    for name in ("diag", "probes")
)
