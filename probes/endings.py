"""How the process ends, written into its history from inside, without changing how it ends.

A SIGKILL leaves nothing to run, but most ends leave a moment to say what they are:

- **Signals whose default action ends the process** (SIGTERM, SIGINT, SIGHUP). Where the host
  has not handled one itself when the agent starts, the agent's handler takes its place and
  chains to what was there: the default action (after a ``stop`` record naming the signal, it
  restores the default and raises the signal again, so the process dies of it with the same
  status) or Python's ``default_int_handler`` (KeyboardInterrupt, as before). A handler of
  the host's own, set before the agent or after it, is tapped (``probes.signals``: its
  arrival is written, then it runs). Servers that install their own handler later (uvicorn)
  capture the agent's as the original, restore it after their graceful shutdown and re-raise
  the signal; the agent then
  records the stop, and ``observe`` (each tick) has noted the host's handler meanwhile, so the
  report can say "stopped by SIGTERM after the host's own shutdown".
- **Native crashes** (SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL): ``faulthandler`` writes
  every thread's Python stack into ``fault.txt`` in the run's directory (unless the host
  enabled faulthandler itself: then its file keeps them), then the crash goes on as it would
  have. A fatal Python error disables faulthandler before it aborts: it is not seen here.
- **An unhandled exception**: ``sys.excepthook`` records its type, message and stack, then
  calls the hook that was there (which prints the traceback as before).
- **A resource running out** (``probes.exhaustion``): an unhandled exception that says so
  (``EMFILE``, ``can't start new thread``, ``EAGAIN`` from a fork...) also writes a
  ``resource-exhausted`` event, from ``sys.excepthook`` and from ``threading.excepthook``
  (chained the same way: a server's thread dying of ``EMFILE`` while the process goes on is
  the common case), bounded to a few a minute.
- **os._exit(status)**: skips atexit, so the agent wraps it to write a ``stop`` record first.
- **sys.exit(status)** runs atexit but its status is lost by then: the agent wraps it to note
  the status and where it was called (a gunicorn worker's SIGABRT handler calls
  ``sys.exit(1)`` when its master's timeout fires), at most ``MAX_EXIT_CALLS`` times.

``observe`` (each tick) also notes every Python handler the host installs for any signal, so a
``sys.exit`` from inside one reads as that signal's end.

``uninstall`` puts back what is still the agent's (a handler the host replaced since stays the
host's). Nothing here raises into the host: a failure to record is swallowed, never the end.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import posix
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import IO, Any

from diag.history import FAULT_FILE
from probes import exhaustion
from probes.signals import SignalTap

log = logging.getLogger("diag")

#: Signals whose default action ends the process and that services are sent to stop.
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
MAX_EXIT_CALLS = 8
#: The signals whose host handlers are tapped and noted: those that end processes, and those
#: servers handle to end one (gunicorn's workers: SIGABRT; SIGQUIT: a quick stop).
TAPPED_SIGNALS = (*ENDING_SIGNALS, signal.SIGABRT, signal.SIGQUIT)

#: ``record(kind, **fields)`` writes an event; ``end(reason, **fields)`` writes the stop record.
Record = Callable[..., None]

#: A signal's disposition as ``signal.getsignal`` gives it: a callable, SIG_DFL, SIG_IGN, None.
Handler = Any


def describe(handler: object) -> str:
    """A handler or hook as a reader would name it: ``uvicorn.server.Server.handle_exit``."""
    if handler == signal.SIG_DFL:
        return "default"
    if handler == signal.SIG_IGN:
        return "ignored"
    if handler is None:
        return "set outside Python"
    function = getattr(handler, "__func__", handler)
    module = getattr(function, "__module__", None) or "?"
    return f"{module}.{getattr(function, '__qualname__', type(handler).__name__)}"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # a real-time signal past SIGRTMIN
        return f"signal {signum}"


def _without_agent_frames(tb: TracebackType | None) -> TracebackType | None:
    """The traceback without the agent's signal handlers in it. Ctrl-C raises KeyboardInterrupt
    from the handler the agent stands in with (it calls ``default_int_handler``), and a host
    handler's exception passes through the tap: the host's traceback would show a frame of
    ``probes`` it never called. A host that catches the exception and prints it itself still
    sees that frame; the common end (unhandled, printed by ``sys.excepthook``) does not."""
    while tb is not None and _is_agents(tb):
        tb = tb.tb_next
    entry = tb
    while entry is not None:
        following = entry.tb_next
        while following is not None and _is_agents(following):
            following = following.tb_next
        entry.tb_next = following
        entry = following
    return tb


#: The modules whose frames stand between a signal and the host's code.
_HANDLER_MODULES = frozenset({__name__, "probes.signals"})


def _is_agents(tb: TracebackType) -> bool:
    return tb.tb_frame.f_globals.get("__name__") in _HANDLER_MODULES


def where(frame: FrameType | None) -> str | None:
    """``file:line in function`` of the frame a signal interrupted (or raised it)."""
    if frame is None:
        return None
    code = frame.f_code
    return f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"


class EndRecorder:
    def __init__(self, record: Record, end: Record) -> None:
        self._record = record
        self._end = end
        self._installed: dict[int, Handler] = {}  # signal -> what was there before ours
        self._host_handlers: dict[int, str] = {}  # signal -> the host's handler seen over ours
        self._fault_file: IO[str] | None = None
        self._previous_excepthook: Callable[..., Any] | None = None
        self._previous_threading_excepthook: Callable[..., Any] | None = None
        self.exhaustion = exhaustion.ExhaustionRecorder(record)
        self._original_exit: Callable[[int], Any] | None = None
        self._original_sys_exit: Callable[..., Any] | None = None
        self._exit_calls = 0
        self.notes: list[str] = []
        self._tap = SignalTap(
            record,
            TAPPED_SIGNALS,
            describe,
            where,
            signal_name,
            is_ours=lambda handler: handler == self._on_signal,
            stand_ins=self._installed,
            own=self._on_signal,
        )

    # -- install and remove ------------------------------------------------------------------

    def install(self, run_dir: str | None) -> None:
        self._install_signals()
        if threading.current_thread() is threading.main_thread():
            self._tap.install()
        if run_dir is not None:
            self.open_fault_file(run_dir)
        self._previous_excepthook = sys.excepthook
        sys.excepthook = self._excepthook
        self._previous_threading_excepthook = threading.excepthook
        threading.excepthook = self._threading_excepthook
        exhaustion.activate(self.exhaustion)
        self._original_exit = os._exit
        os._exit = self._exit
        self._original_sys_exit = sys.exit
        sys.exit = self._sys_exit

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            self.notes.append("signals are not recorded: the agent started off the main thread")
            return
        for signum in ENDING_SIGNALS:
            try:
                previous = signal.getsignal(signum)
                if previous is not signal.default_int_handler and previous != signal.SIG_DFL:
                    continue  # ignored, set from C, or the host's own: the tap wraps that
                signal.signal(signum, self._on_signal)
                self._installed[signum] = previous
            except (OSError, ValueError) as exc:
                self.notes.append(f"{signal_name(signum)} is not recorded: {exc}")

    def open_fault_file(self, run_dir: str) -> None:
        """Native crashes' stacks go to ``run_dir/fault.txt`` (again in a forked child, whose
        run is its own)."""
        self._close_fault_file()
        if faulthandler.is_enabled():
            self.notes.append("faulthandler was enabled by the host: crash stacks go to its file")
            return
        try:
            # Open for the run's life: faulthandler writes to it from a signal handler.
            self._fault_file = open(  # noqa: SIM115
                os.path.join(run_dir, FAULT_FILE), "a", encoding="utf-8"
            )
            faulthandler.enable(file=self._fault_file, all_threads=True)
        except (OSError, RuntimeError, ValueError) as exc:
            self._close_fault_file()
            self.notes.append(f"crash stacks are not recorded: {exc}")

    def _close_fault_file(self) -> None:
        if self._fault_file is not None:
            if faulthandler.is_enabled():
                faulthandler.disable()
            self._fault_file.close()
            self._fault_file = None

    def uninstall(self) -> None:
        self._tap.uninstall()
        for signum, previous in list(self._installed.items()):
            try:
                if signal.getsignal(signum) == self._on_signal:
                    signal.signal(signum, previous)
            except (OSError, ValueError):
                # Off the main thread (stop() from a thread, or at exit): handlers cannot be
                # set there. Ours stays, and must keep acting as what it stood in for (Ctrl-C
                # a KeyboardInterrupt), so what it stood in for is kept too.
                continue
            del self._installed[signum]
        self._close_fault_file()
        if sys.excepthook == self._excepthook and self._previous_excepthook is not None:
            sys.excepthook = self._previous_excepthook
        if (
            threading.excepthook == self._threading_excepthook
            and self._previous_threading_excepthook is not None
        ):
            threading.excepthook = self._previous_threading_excepthook
        if exhaustion.active() is self.exhaustion:
            exhaustion.activate(None)
        if os._exit == self._exit and self._original_exit is not None:
            os._exit = self._original_exit  # type: ignore[assignment]
        if sys.exit == self._sys_exit and self._original_sys_exit is not None:
            sys.exit = self._original_sys_exit

    # -- each tick: whose handlers are in place ----------------------------------------------

    def observe(self) -> None:
        """Note each Python handler the host has installed for a signal that ends processes:
        over the agent's (it will restore and re-raise to it after its shutdown, or keep the
        signal for itself) or for SIGABRT/SIGQUIT (gunicorn's workers handle SIGABRT). Each
        tick: a few ``getsignal`` calls, not one per signal the system has."""
        for signum in TAPPED_SIGNALS:
            try:
                current = self._tap.real_getsignal(signum)  # the host's view hides ours
            except (OSError, ValueError):
                continue
            if current == self._on_signal or current is signal.default_int_handler:
                continue
            if signum not in self._installed and not callable(current):
                continue  # the default, ignored, or set from C: nothing of the host's
            name = describe(current)
            if self._host_handlers.get(signum) != name:
                self._host_handlers[signum] = name
                self._safely(
                    self._record, "signal-handler", signal=signal_name(signum), handler=name
                )

    # -- the ends ----------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> Any:
        previous = self._installed.get(signum, signal.SIG_DFL)
        fields: dict[str, Any] = {"signal": signal_name(signum), "where": where(frame)}
        host = self._host_handlers.get(signum)
        if host is not None:
            fields["after_host_handler"] = host
        if callable(previous):
            self._safely(self._record, "signal", handled_by=describe(previous), **fields)
            return previous(signum, frame)
        # The default action ends the process: say so, then let it happen as it would have.
        self._safely(self._end, "signal", **fields)
        self._tap.real_signal(signum, signal.SIG_DFL)  # not the host's view: that keeps ours
        signal.raise_signal(signum)
        return None

    def _excepthook(
        self, kind: type[BaseException], value: BaseException, tb: TracebackType | None
    ) -> None:
        self._safely(
            self._record,
            "exception",
            type=describe(kind),
            message=str(value)[: exhaustion.MESSAGE_CHARS],
            stack=exhaustion.stack_of(tb),
        )
        self.exhaustion.seen(value, how="unhandled", force=True)
        tb = _without_agent_frames(tb)
        if value is not None and value.__traceback__ is not tb:
            value.__traceback__ = tb
        previous = self._previous_excepthook or sys.__excepthook__
        previous(kind, value, tb)

    def _threading_excepthook(self, args: threading.ExceptHookArgs) -> None:
        """A thread died of an exception: written down when it says a resource ran out (the
        process goes on, so it is not the end), then the hook that was there prints it."""
        if args.exc_value is not None:
            thread = args.thread.name if args.thread is not None else None
            self.exhaustion.seen(args.exc_value, how="thread", thread=thread)
        previous = self._previous_threading_excepthook or threading.__excepthook__
        previous(args)

    def _sys_exit(self, status: object = None) -> Any:
        if self._exit_calls < MAX_EXIT_CALLS:
            self._exit_calls += 1
            code = status if status is None or isinstance(status, int) else 1  # a message: 1
            self._safely(self._record, "exit-call", status=code, where=where(sys._getframe(1)))
        if self._original_sys_exit is None:
            raise SystemExit(status)
        return self._original_sys_exit(status)

    def _exit(self, status: int) -> Any:
        self._safely(self._end, "os._exit", status=status)
        original = self._original_exit or posix._exit
        return original(status)

    @staticmethod
    def _safely(write: Record, *args: Any, **fields: Any) -> None:
        try:
            write(*args, **fields)
        except Exception:  # the end goes on whether or not it was written down
            log.debug("diag: an end record was not written", exc_info=True)
