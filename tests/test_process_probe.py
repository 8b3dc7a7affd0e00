import os
import signal
import subprocess
import sys

import psutil
import pytest

from probes.base import Cadence, ProbeUnavailable
from probes.process import ProcessProbe, parse_smaps_rollup, parse_status
from tests.conftest import resident_block

MiB = 1024 * 1024

STATUS = b"""Name:\tpython3
State:\tS (sleeping)
VmPeak:\t  812344 kB
VmHWM:\t  402100 kB
VmRSS:\t  400000 kB
RssAnon:\t  350000 kB
RssFile:\t   50000 kB
VmSwap:\t    1024 kB
Threads:\t4
"""

SMAPS_ROLLUP = b"""562fa2482000-7ffe3dcab000 ---p 00000000 00:00 0                          [rollup]
Rss:              400000 kB
Pss:              380000 kB
Pss_Anon:         350000 kB
Shared_Clean:      30000 kB
Shared_Dirty:          0 kB
Private_Clean:     20000 kB
Private_Dirty:    350000 kB
Swap:               1024 kB
"""


def test_parse_status_in_bytes():
    assert parse_status(STATUS) == {
        "process_resident_memory_bytes": 400000 * 1024,
        "process_resident_memory_peak_bytes": 402100 * 1024,
        "process_resident_anonymous_bytes": 350000 * 1024,
        "process_swap_bytes": 1024 * 1024,
    }


def test_parse_smaps_rollup_uss_is_private_pages():
    assert parse_smaps_rollup(SMAPS_ROLLUP) == {
        "process_unique_memory_bytes": (20000 + 350000) * 1024,
        "process_proportional_memory_bytes": 380000 * 1024,
    }
    with pytest.raises(ValueError):
        parse_smaps_rollup(b"Rss: 1 kB\n")


def _values(probe):
    return {s.name: s.value for s in probe.sample()}


def test_own_process_sees_rss_grow_and_reports_uss_pss():
    probe = ProcessProbe(cadence=Cadence(0.0, budget=1.0))
    before = _values(probe)
    ballast = resident_block(64 * MiB)
    after = _values(probe)
    assert after["process_resident_memory_bytes"] - before["process_resident_memory_bytes"] > (
        60 * MiB
    )
    assert 0 < after["process_unique_memory_bytes"] <= after["process_resident_memory_bytes"]
    assert after["process_proportional_memory_bytes"] >= after["process_unique_memory_bytes"]
    ballast.close()
    probe.close()


def test_detail_readings_are_repeated_between_refreshes():
    clock = [0.0]
    probe = ProcessProbe(cadence=Cadence(30.0, monotonic=lambda: clock[0]))
    first = _values(probe)
    clock[0] = 10.0
    second = _values(probe)
    assert second["process_unique_memory_bytes"] == first["process_unique_memory_bytes"]
    probe.close()


@pytest.fixture
def child():
    """A real process holding 100 MiB that says when it is ready, then waits on stdin."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; b = b'x' * (100 << 20); print('ready', flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stdin.close()
    proc.stdout.close()


@pytest.mark.e2e
def test_another_pid(child):
    probe = ProcessProbe(child.pid, cadence=Cadence(0.0, budget=1.0))
    values = _values(probe)
    assert values["process_resident_memory_bytes"] > 100 * MiB
    assert values["process_unique_memory_bytes"] > 100 * MiB
    probe.close()


@pytest.mark.e2e
def test_zombie_then_reaped(child):
    probe = ProcessProbe(child.pid)
    _values(probe)
    child.send_signal(signal.SIGKILL)
    _wait_for_zombie(child.pid)
    with pytest.raises(ProbeUnavailable) as zombie:
        probe.sample()
    assert not zombie.value.permanent
    child.wait()
    with pytest.raises(ProbeUnavailable) as gone:
        probe.sample()
    assert gone.value.permanent
    assert "exited" in gone.value.reason or "no such process" in gone.value.reason
    probe.close()


def _wait_for_zombie(pid):
    # The kernel turns a SIGKILLed child into a zombie asynchronously; waitid with WNOWAIT
    # blocks until it has, without reaping it.
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def test_pid_that_does_not_exist():
    probe = ProcessProbe(2**22 + 12345)
    with pytest.raises(ProbeUnavailable) as info:
        probe.sample()
    assert info.value.permanent
    assert "no such process" in info.value.reason


def test_falls_back_to_psutil_then_explains_permission_denied(tmp_path, monkeypatch):
    # A fixture /proc where smaps_rollup cannot be read (a directory), as on old kernels.
    pid_dir = tmp_path / str(os.getpid())
    pid_dir.mkdir()
    (pid_dir / "status").write_bytes(STATUS)
    (pid_dir / "smaps_rollup").mkdir()
    probe = ProcessProbe(os.getpid(), proc_root=str(tmp_path), cadence=Cadence(0.0, budget=1.0))
    values = _values(probe)
    assert values["process_resident_memory_bytes"] == 400000 * 1024
    assert values["process_unique_memory_bytes"] > 0  # from psutil, the real process
    assert probe.notes == ()

    def denied(self):
        raise psutil.AccessDenied(os.getpid())

    monkeypatch.setattr(psutil.Process, "memory_full_info", denied)
    values = _values(probe)
    assert "process_unique_memory_bytes" not in values
    assert values["process_resident_memory_bytes"] == 400000 * 1024
    assert probe.notes == ("USS/PSS: permission denied for smaps_rollup and psutil",)
    probe.close()
