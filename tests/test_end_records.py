"""The end records in the fast tier: the agent's signal handlers and hooks chain to what was
there and come off again, and the report reads each end from its records. The real ends, with
real processes, are in tests/test_endings.py."""

import faulthandler
import io
import os
import signal
import sys
import time

import pytest

from diag.history import WATCH_ENDED, HistoryWriter, read_run
from diag.model import Sample
from probes.endings import ENDING_SIGNALS, EndRecorder, describe
from reports.ending import NO_STOP_RECORD, how_it_ended, join_watcher, read_fault


class Calls:
    def __init__(self):
        self.events = []

    def record(self, kind, **fields):
        self.events.append((kind, fields))

    def end(self, reason, **fields):
        self.events.append(("stop", {"reason": reason, **fields}))


@pytest.fixture
def recorder():
    calls = Calls()
    before = {s: signal.getsignal(s) for s in ENDING_SIGNALS}
    endings = EndRecorder(calls.record, calls.end)
    yield endings, calls
    endings.uninstall()
    assert {s: signal.getsignal(s) for s in ENDING_SIGNALS} == before


def test_handlers_and_hooks_come_off_as_they_were(recorder, monkeypatch):
    endings, _ = recorder
    hook, exit_ = sys.excepthook, os._exit
    endings.install(None)
    assert endings._tap.real_getsignal(signal.SIGTERM) == endings._on_signal  # for now
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # as the host sees it
    assert sys.excepthook != hook and os._exit != exit_
    endings.uninstall()
    assert sys.excepthook == hook and os._exit == exit_


def test_a_host_handler_installed_before_is_wrapped_and_still_called(recorder):
    endings, calls = recorder
    seen = []

    def drain(signum, frame):
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, drain)
    try:
        endings.install(None)
        assert signal.getsignal(signal.SIGTERM) is drain  # the host sees its own handler
        signal.raise_signal(signal.SIGTERM)  # a real signal, taken by the host's handler
        assert seen == [signal.SIGTERM]
        kind, fields = calls.events[-1]
        assert kind == "signal" and fields["signal"] == "SIGTERM"
        assert fields["handled_by"].endswith("drain")
        assert "in test_a_host_handler_installed_before" in fields["where"]
        endings.uninstall()
        assert signal.getsignal(signal.SIGTERM) is drain
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_host_handler_installed_after_the_agent_is_tapped_and_handed_back(recorder):
    """As uvicorn does: save the agent's handler, install its own, restore, re-raise."""
    endings, calls = recorder
    endings.install(None)
    seen = []

    def handle_exit(signum, frame):
        seen.append(signum)

    original = signal.signal(signal.SIGTERM, handle_exit)
    assert signal.getsignal(signal.SIGTERM) is handle_exit
    signal.raise_signal(signal.SIGTERM)
    assert seen == [signal.SIGTERM]
    assert calls.events[-1][0] == "signal"
    assert calls.events[-1][1]["handled_by"].endswith("handle_exit")
    assert original == signal.SIG_DFL  # the default the agent's handler stands in for
    assert signal.signal(signal.SIGTERM, original) is handle_exit  # restored as it was saved
    assert endings._tap.real_getsignal(signal.SIGTERM) == endings._on_signal  # ours again


def test_asyncio_run_takes_ctrl_c_as_without_the_agent(recorder):
    """asyncio.run installs its own SIGINT handling (the main task cancelled, so the
    coroutine sees CancelledError at its await) only where it finds default_int_handler. The
    agent's handler stands in for that default: the host must see the default there."""
    import asyncio

    endings, calls = recorder
    endings.install(None)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    seen = []

    async def main():
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # asyncio's
        asyncio.get_running_loop().call_later(0.05, signal.raise_signal, signal.SIGINT)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen.append("cancelled at the await")
            raise

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
    assert seen == ["cancelled at the await"]
    assert calls.events[-1][0] == "signal" and calls.events[-1][1]["signal"] == "SIGINT"
    # asyncio put the default back: the agent's handler is there again, seen as the default.
    assert endings._tap.real_getsignal(signal.SIGINT) == endings._on_signal
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_stopped_from_a_thread_ctrl_c_is_still_a_keyboard_interrupt(recorder):
    """Handlers can be set from the main thread only: stopped from another, the agent's
    handler stays in place, and must still act as the default it stood in for."""
    import threading

    endings, _ = recorder
    endings.install(None)
    stopper = threading.Thread(target=endings.uninstall)
    stopper.start()
    stopper.join()
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)  # not the default action (the process killed)
    endings.uninstall()  # from the main thread now: put back as they were (the fixture checks)


def test_a_host_handler_installed_over_ours_is_noted_once(recorder):
    endings, calls = recorder
    endings.install(None)

    def handle_exit(signum, frame):
        pass

    signal.signal(signal.SIGTERM, handle_exit)
    endings.observe()
    endings.observe()
    notes = [f for kind, f in calls.events if kind == "signal-handler"]
    assert notes == [{"signal": "SIGTERM", "handler": describe(handle_exit)}]
    assert describe(handle_exit).endswith("handle_exit")
    endings.uninstall()  # the host's handler stays the host's
    assert signal.getsignal(signal.SIGTERM) is handle_exit
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_an_unhandled_exception_is_recorded_then_handed_on(recorder, monkeypatch):
    endings, calls = recorder
    handed = []
    monkeypatch.setattr(sys, "excepthook", lambda *args: handed.append(args[0]))
    endings.install(None)

    def synthesize():
        raise MemoryError("x" * 1000)

    try:
        synthesize()
    except MemoryError:
        sys.excepthook(*sys.exc_info())
    assert handed == [MemoryError]
    kind, fields = calls.events[-1]
    assert kind == "exception" and fields["type"] == "builtins.MemoryError"
    assert len(fields["message"]) == 300  # bounded: messages may carry data
    assert fields["stack"][-1].endswith("in synthesize")


def _functions(tb):
    names = []
    while tb is not None:
        names.append(f"{tb.tb_frame.f_globals['__name__']}.{tb.tb_frame.f_code.co_name}")
        tb = tb.tb_next
    return names


def test_ctrl_c_traceback_shows_the_hosts_frames_only(recorder, monkeypatch):
    """The agent's handler stands in for default_int_handler and calls it, so the
    KeyboardInterrupt is raised in the agent's frame; a host handler's exception passes
    through the tap's. Printed unhandled, neither may show: the host never called them."""
    endings, _ = recorder
    handed = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: handed.append((value, tb)))
    endings.install(None)

    def host_code():
        signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt) as raised:
        host_code()
    assert any(name.startswith("probes.") for name in _functions(raised.value.__traceback__))
    sys.excepthook(raised.type, raised.value, raised.value.__traceback__)
    value, tb = handed[-1]
    assert _functions(tb)[-1] == f"{__name__}.host_code"
    assert not any(name.startswith("probes.") for name in _functions(tb))
    assert value.__traceback__ is tb  # the exception says the same

    def host_handler(signum, frame):
        raise RuntimeError("the host's own")

    signal.signal(signal.SIGTERM, host_handler)
    try:
        with pytest.raises(RuntimeError) as raised:
            signal.raise_signal(signal.SIGTERM)
        assert "probes.signals.__call__" in _functions(raised.value.__traceback__)
        sys.excepthook(raised.type, raised.value, raised.value.__traceback__)
        names = _functions(handed[-1][1])
        assert names[-1] == f"{__name__}.host_handler"
        assert not any(name.startswith("probes.") for name in names)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_os_exit_writes_the_stop_record_first(recorder, monkeypatch):
    endings, calls = recorder
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    endings.install(None)
    os._exit(3)
    assert calls.events[-1] == ("stop", {"reason": "os._exit", "status": 3})
    assert exits == [3]


def test_a_failing_record_never_stops_the_end(monkeypatch):
    def broken(*args, **fields):
        raise OSError("disk full")

    endings = EndRecorder(broken, broken)
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    endings.install(None)
    try:
        os._exit(4)
    finally:
        endings.uninstall()
    assert exits == [4]


def test_faulthandler_output_is_read_with_the_crashing_threads_stack(tmp_path):
    buffer = io.StringIO()
    with open(tmp_path / "dump.txt", "w+") as f:  # faulthandler writes to a real descriptor
        faulthandler.dump_traceback(file=f, all_threads=True)
        f.seek(0)
        buffer.write("Fatal Python error: Segmentation fault\n\n" + f.read())
    (tmp_path / "fault.txt").write_text(buffer.getvalue())
    fault = read_fault(str(tmp_path))
    assert fault is not None
    assert fault["error"] == "Segmentation fault" and fault["signal"] == "SIGSEGV"
    assert any("test_faulthandler_output_is_read" in line for line in fault["crashing_thread"])
    assert fault["threads"] >= 1
    (tmp_path / "fault.txt").write_text("")
    assert read_fault(str(tmp_path)) is None  # no crash: the file is there, empty


def _run(tmp_path, *events, boot="boot-a"):
    run_dir = tmp_path / "20261202T000000Z-4242"
    writer = HistoryWriter(str(run_dir))
    writer.write_event("start", 1000.0, pid=4242, command=["python", "app.py"], boot_id=boot)
    for t in range(3):
        writer.write_samples(1000.0 + t, [Sample("process_resident_memory_bytes", 1e8)])
    for kind, t, fields in events:
        writer.write_event(kind, t, **fields)
    writer.close()
    return str(run_dir), read_run(str(run_dir))


def _ended(run_dir, history, boot="boot-a"):
    return how_it_ended(
        history, 4242, run_dir, read_kernel_log=lambda: [], current_boot=lambda: boot,
        proc_root="/nonexistent",
    )  # fmt: skip


def test_no_stop_record_says_so_and_a_new_boot_says_the_machine_restarted(tmp_path):
    run_dir, history = _run(tmp_path)
    same = _ended(run_dir, history)
    assert same["how"] == "killed" and same["why"].startswith(NO_STOP_RECORD)
    assert "not a power loss" in same["why"]
    assert _ended(run_dir, history, boot="boot-b")["how"] == "reboot"


def test_a_signal_taken_by_the_host_then_silence_is_a_kill_after_a_grace_period(tmp_path):
    signal_event = ("signal", 1001.0, {"signal": "SIGTERM", "handled_by": "app.drain"})
    run_dir, history = _run(tmp_path, signal_event)
    ended = _ended(run_dir, history)
    assert ended["how"] == "killed"
    assert ended["after_signal"]["signal"] == "SIGTERM"
    assert ended["after_signal"]["seconds_to_last_sample"] == pytest.approx(1.0)


def test_a_watch_that_ended_while_its_target_ran_is_no_clean_exit(tmp_path):
    """diag watch stopped (--duration, Ctrl-C) with the target alive writes a stop record of
    its own: the watch's end. Read as the process's, the report said "exited cleanly"."""
    # Still running: said so (this test's own process, alive since before the history).
    now = time.time()
    watched = HistoryWriter(str(tmp_path / "watched"))
    watched.write_samples(now, [Sample("process_resident_memory_bytes", 1e8)])
    watched.write_event("stop", now + 1, reason=WATCH_ENDED)
    watched.close()
    alive = how_it_ended(read_run(str(tmp_path / "watched")), os.getpid(), str(tmp_path))
    assert alive == {"how": "running", "pid": os.getpid()}
    # No longer running: how it ended was not seen.
    run_dir, history = _run(tmp_path, ("stop", 1003.0, {"reason": WATCH_ENDED}))
    gone = _ended(run_dir, history)
    assert gone["how"] == "unknown" and "the watch ended while the process still ran" in gone["why"]
    assert "clean_stop" not in gone


def test_a_watchers_exit_record_is_joined_to_the_agents_account(tmp_path):
    run_dir, history = _run(tmp_path)
    watcher = {"kind": "exit", "how": "oom-kill", "signal": 9, "signal_name": "SIGKILL"}
    joined = join_watcher(_ended(run_dir, history), watcher)
    assert joined["how"] == "oom-kill"
    assert joined["watcher"]["signal_name"] == "SIGKILL"
