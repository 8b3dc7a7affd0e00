"""diag: memory-leak and resource diagnostics for long-running Python services.

The core (model, series, settings, metrics catalog) imports no torch, no click and no
prometheus_client, so the agent stays light inside the host process.
"""

__version__ = "0.1.0"
