"""diag's log lines where the host configured no logging: as Python's last resort prints them
(warnings and worse, the message alone, on stderr), but never raising.

Python's last-resort handler reports a failed write by writing a traceback to ``sys.stderr``;
where stderr is closed (a daemon that closed it, a host that swapped in a stream that raises),
that raises too, out of the logging call and into whatever code logged: the host's own, through
``probes.start()``, or the sampler's thread, which died of it. This handler stands in for it on
the ``diag`` logger; where any handler of the host's would see the record (on ``diag`` or an
ancestor it propagates to), it does nothing and the host's logging decides, as before.
"""

from __future__ import annotations

import logging
import sys

LOGGER = "diag"


class GuestHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if _hosts_handler_sees(logging.getLogger(LOGGER), self):
            return
        try:
            stream = sys.stderr
            if stream is not None:
                stream.write(self.format(record) + "\n")
                stream.flush()
        except Exception:
            pass  # stderr closed or failing: the line is lost, the host is not disturbed

    def handleError(self, record: logging.LogRecord) -> None:
        pass  # never a traceback of our own logging into someone else's stderr


def _hosts_handler_sees(logger: logging.Logger | None, ours: logging.Handler) -> bool:
    """Whether a handler other than ours gets records of ``logger`` (logging's own walk)."""
    while logger is not None:
        if any(handler is not ours for handler in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


def install() -> None:
    """Once per process (imports of diag may repeat in tests' reloads): idempotent."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(handler, GuestHandler) for handler in logger.handlers):
        logger.addHandler(GuestHandler())
