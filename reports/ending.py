"""How a run ended, from the evidence its history holds, as data (``PostMortem.ended``).

The agent writes what the process said as it ended (``probes.endings``): a ``stop`` record at
exit, after a signal's default action or at ``os._exit``; the signals that reached a handler;
an unhandled exception; the Python stacks of a native crash in ``fault.txt``. A watcher outside
(``diag watch``) writes an ``exit`` record with the status the kernel kept. Where a run ends
with none of that, the kernel's log, the memory limit, the machine's boot id and the signals
seen before are what is left, and the document says which it used. Nothing is guessed: a run
that simply stops is "ended without a stop record", not a SIGKILL.

``how``: exit, exception, signal, os-exit, crash, oom-kill, killed, reboot, running or
unknown. Beside it, ``resource``: a resource the process ran out of (``resource-exhausted``
events: an unhandled ``EMFILE``, a thread that died of one, the agent's own operations failing
so), with the last ``resource_usage``/``resource_limit`` samples near that moment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from diag import procfs
from diag.history import FAULT_FILE, WATCH_ENDED, History

FAULT_TEXT_LIMIT = 64 * 1024
#: faulthandler's words for the signals it reports.
CRASH_SIGNALS = {
    "Segmentation fault": "SIGSEGV",
    "Bus error": "SIGBUS",
    "Aborted": "SIGABRT",
    "Floating-point exception": "SIGFPE",
    "Illegal instruction": "SIGILL",
}
NO_STOP_RECORD = "ended without a stop record (a signal's default action, SIGKILL or power loss)"
#: The judged resource series (``resource_usage{resource}`` against ``resource_limit``).
RESOURCE_USAGE, RESOURCE_LIMIT = "resource_usage", "resource_limit"
#: Each resource in words: what the process runs out of, and the series' title.
RESOURCES: dict[str, tuple[str, str]] = {
    "fds": ("file descriptors", "open file descriptors"),
    "threads": ("threads", "threads"),
    "memory_maps": ("memory maps", "memory maps"),
    "shm": ("shared memory", "shared memory segments"),
    "children": ("child processes", "child processes"),
    "asyncio_tasks": ("asyncio tasks", "asyncio tasks"),
}


def resource_words(resource: str) -> str:
    return RESOURCES.get(resource, (resource.replace("_", " "), ""))[0]


def resource_title(resource: str) -> str:
    return RESOURCES.get(resource, ("", resource.replace("_", " ")))[1]


def _nearest(history: History, name: str, resource: str, t: float | None) -> float | None:
    data = history.get(name, resource=resource)
    if data is None or not data.values:
        return None
    if t is None:
        return data.values[-1]
    i = min(range(len(data.times)), key=lambda j: abs(data.times[j] - t))
    return data.values[i]


def ran_out(history: History) -> dict[str, Any] | None:
    """The resource the process ran out of, from its ``resource-exhausted`` events: the one
    that ended it (unhandled), else the first (a thread died of it, the agent's own operation
    failed), with the usage and limit sampled nearest that moment when they were."""
    events = history.events_of("resource-exhausted")
    if not events:
        return None
    fatal = [e for e in events if e.get("how") == "unhandled"]
    event = fatal[-1] if fatal else events[0]
    out = _without_kind(event)
    resource = str(event.get("resource", "?"))
    t = event.get("t")
    usage = _nearest(history, RESOURCE_USAGE, resource, t)
    limit = _nearest(history, RESOURCE_LIMIT, resource, t)
    if usage is not None:
        out["usage"] = usage
    if limit is not None:
        out["limit"] = limit
    out["events"] = len(events)
    return out


def how_it_ended(
    history: History,
    pid: int | None,
    run_dir: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """How the run ended (``_how_it_ended``), with the resource it ran out of, if any."""
    ended = _how_it_ended(history, pid, run_dir, **kwargs)
    resource = ran_out(history)
    if resource is not None:
        ended["resource"] = resource
    return ended


def read_fault(run_dir: str) -> dict[str, Any] | None:
    """What faulthandler wrote for a native crash: the error, the crashing
    thread's Python stack (most recent call first) and every thread's, as text."""
    try:
        with open(os.path.join(run_dir, FAULT_FILE), encoding="utf-8", errors="replace") as f:
            text = f.read(FAULT_TEXT_LIMIT)
    except OSError:
        return None
    match = re.search(r"^Fatal Python error: (.+)$", text, re.M)
    if match is None:
        return None
    error = match.group(1).strip()
    current: list[str] = []
    section = re.search(r"^Current thread [^\n]*\n((?:  File .*\n?)+)", text, re.M)
    if section is not None:
        current = [line.strip() for line in section.group(1).splitlines() if line.strip()]
    return {
        "error": error,
        "signal": CRASH_SIGNALS.get(error),
        "crashing_thread": current,
        "threads": len(re.findall(r"^(?:Current thread|Thread) 0x", text, re.M)),
        "text": text[match.start() :],
    }


def _kernel_log_lines(read_kmsg: Callable[[], Iterable[str]]) -> tuple[list[str], str | None]:
    try:
        return list(read_kmsg()), None
    except PermissionError:
        return [], "the kernel log is not readable (root or CAP_SYSLOG needed)"
    except OSError as exc:
        return [], f"the kernel log is not readable ({exc.strerror or exc})"


def _from_stop(stop: dict[str, Any], history: History) -> dict[str, Any]:
    reason = stop.get("reason")
    ended: dict[str, Any] = {"how": "exit", "clean_stop": True, "at": stop.get("t"),
                             "reason": reason}  # fmt: skip
    if reason == "signal":
        ended.update(how="signal", signal=stop.get("signal"), where=stop.get("where"))
        if stop.get("after_host_handler"):
            # The host's handler ran first (a server's graceful shutdown), restored ours and
            # raised the signal again: the default action after a clean shutdown.
            ended["after_host_handler"] = stop["after_host_handler"]
    elif reason == "os._exit":
        ended.update(how="os-exit", status=stop.get("status"))
    exceptions = history.events_of("exception")
    if exceptions and reason == "exit":
        ended.update(how="exception", exception=_without_kind(exceptions[-1]))
    calls = history.events_of("exit-call")
    if calls and ended["how"] == "exit" and reason == "exit":
        call = _without_kind(calls[-1])
        ended.update(status=call.get("status") or 0, exit_call=call)
        # An exit begun in a signal handler is that signal's end, even where the host caught
        # the SystemExit and exited later (gunicorn's sync worker does, with status 0).
        for earlier in reversed(calls):
            handler = _signal_handler_at(earlier.get("where"), history)
            if handler is not None:
                ended["in_signal_handler"] = {**handler, "status": earlier.get("status")}
                break
    signals = [e for e in history.events_of("signal") if reason != "signal"]
    if signals:
        ended["signals"] = [_without_kind(e) for e in signals]
    return ended


def _signal_handler_at(where: str | None, history: History) -> dict[str, Any] | None:
    """The host's signal handler that ``where`` (``file:line in function``) is in, if the agent
    saw one of that name installed: a ``sys.exit`` there is that signal's end."""
    if not where:
        return None
    function = where.rsplit(" in ", 1)[-1]
    for event in reversed(history.events_of("signal-handler")):
        if str(event.get("handler", "")).rsplit(".", 1)[-1] == function:
            return {"signal": event.get("signal"), "handler": event.get("handler")}
    return None


def _without_kind(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "kind"}


def _without_a_stop(
    history: History,
    pid: int,
    run_dir: str | None,
    read_kernel_log: Callable[[], Iterable[str]],
    current_boot: str | None,
) -> dict[str, Any]:
    """No stop record: the evidence, strongest first. Each step adds what it knows to ``ended``
    and says whether it settled the question."""
    ended: dict[str, Any] = {
        "how": "killed",
        "clean_stop": False,
        "last_sample": history.last_sample,  # None when it died within its first second
        "why": NO_STOP_RECORD,
    }
    fault = read_fault(run_dir) if run_dir is not None else None
    if fault is not None:
        ended.update(how="crash", fault=fault)
        ended["why"] = (
            f"a native crash ({fault['error']}): faulthandler wrote the Python stacks of "
            f"{fault['threads']} threads as it happened"
        )
        return ended
    if _oom_evidence(ended, history, pid, read_kernel_log) or _after_a_signal(ended, history):
        return ended
    _unknown_signal(ended, history, current_boot)
    return ended


def _oom_evidence(
    ended: dict[str, Any], history: History, pid: int, read_kernel_log: Callable[[], Iterable[str]]
) -> bool:
    """The kernel's line for the pid, memory at the limit, the cgroup's kill counter."""
    lines, problem = _kernel_log_lines(read_kernel_log)
    kernel = procfs.oom_lines_for(pid, lines)
    if kernel:
        ended.update(how="oom-kill", kernel_log=kernel[-2:])
    elif problem:
        ended["kernel_log"] = problem
    usage = history.get("memory_limit_usage_bytes")
    limit = history.get("memory_limit_bytes")
    if usage is not None and limit is not None and usage.values and limit.values:
        share = usage.values[-1] / limit.values[-1] if limit.values[-1] else 0.0
        ended["usage_of_limit_at_last_sample"] = round(share, 4)
        if share >= 0.9 and ended["how"] == "killed":
            ended["how"] = "oom-kill"
            ended["why"] = (
                f"no stop record, and memory was at {share:.0%} of its limit at the last sample"
            )
    kills = history.get("cgroup_oom_kills_total")
    if kills is not None and len(kills.values) >= 2 and kills.values[-1] > kills.values[0]:
        ended["cgroup_oom_kills_during_run"] = kills.values[-1] - kills.values[0]
    return bool(ended["how"] != "killed")


def _after_a_signal(ended: dict[str, Any], history: History) -> bool:
    """A signal reached a handler the agent wrapped, and the process went on until it was
    killed: what an orchestrator does after its grace period (Kubernetes: SIGKILL 30 s later)."""
    signals = history.events_of("signal")
    end = history.last_sample
    if not signals or end is None:
        return False
    last = signals[-1]
    waited = max(end - float(last["t"]), 0.0)
    ended["after_signal"] = {**_without_kind(last), "seconds_to_last_sample": waited}
    ended["why"] = (
        f"{last.get('signal')} reached its handler ({last.get('handled_by')}), and the process "
        f"was still running {waited:.0f} s later, then ended without a stop record: killed "
        "(SIGKILL) after a grace period"
    )
    return True


def _unknown_signal(ended: dict[str, Any], history: History, current_boot: str | None) -> None:
    """Nothing says which signal: what is known around it (the host's own SIGTERM handler, to
    which a SIGTERM went unseen; whether the machine restarted since)."""
    handlers = {e.get("signal"): e.get("handler") for e in history.events_of("signal-handler")}
    host_handler = handlers.get("SIGTERM")
    if host_handler not in (None, "default", "ignored"):
        ended["sigterm_handler"] = host_handler
    started_on = next(iter(history.events_of("start")), {}).get("boot_id")
    if not started_on or not current_boot:
        return
    if started_on != current_boot:
        why = "the machine has restarted since (its boot id changed): a power loss or a reboot"
        ended.update(how="reboot", why=why + " ended the run")
    else:
        ended["why"] = NO_STOP_RECORD + "; the machine has not restarted since, so not a power loss"


def _how_it_ended(
    history: History,
    pid: int | None,
    run_dir: str | None = None,
    *,
    proc_root: str = "/proc",
    read_kernel_log: Callable[[], Iterable[str]] = procfs.read_kmsg,
    current_boot: Callable[[], str | None] = procfs.boot_id,
) -> dict[str, Any]:
    exits = history.events_of("exit")
    if exits:  # a watcher saw it end: its record is the best evidence
        record = _without_kind(exits[-1])
        record.setdefault("how", "exit")
        return record
    # A watch that ended while its target ran says so in a stop record of its own: the
    # watch's end, not the process's.
    watch_ends = [s for s in history.events_of("stop") if s.get("reason") == WATCH_ENDED]
    stops = [s for s in history.events_of("stop") if s.get("reason") != WATCH_ENDED]
    if stops:
        return _from_stop(stops[-1], history)
    if pid is not None and procfs.is_alive(pid, history.first_sample, proc_root):
        return {"how": "running", "pid": pid}
    if watch_ends:
        return {
            "how": "unknown",
            "at": watch_ends[-1].get("t"),
            "why": "the watch ended while the process still ran; its end came later, unseen",
        }
    if pid is None:
        return {"how": "unknown", "why": "the history has no start record"}
    return _without_a_stop(history, pid, run_dir, read_kernel_log, current_boot())


def join_watcher(ended: dict[str, Any], watcher_exit: dict[str, Any] | None) -> dict[str, Any]:
    """The agent's account joined with a watcher's (``diag watch`` outside saw the exit status
    or signal the kernel kept): the watcher's record under ``watcher``, and its OOM-kill
    evidence where the agent had none."""
    if watcher_exit is None:
        return ended
    joined = {**ended, "watcher": _without_kind(watcher_exit)}
    if watcher_exit.get("how") == "oom-kill" and ended.get("how") in ("killed", "unknown"):
        joined["how"] = "oom-kill"
    return joined
