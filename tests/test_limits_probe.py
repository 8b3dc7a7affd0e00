"""The limits probe on fixture cgroup trees (v2 cannot exist on this cgroup-v1 machine) and on
the real machine."""

import os
import subprocess
import sys

import pytest

from probes.base import ProbeUnavailable, read_text
from probes.limits import (
    LimitsProbe,
    locate_memory_cgroup,
    parse_limit,
    parse_mountinfo,
    parse_oom_kills,
    parse_proc_cgroup,
)

GiB = 1024**3
MEMINFO = "MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:    8192000 kB\n"

V2_MOUNTINFO = (
    "24 30 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
    "rw,nsdelegate,memory_recursiveprot\n"
    "30 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
)
V1_MOUNTINFO = (
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _proc(tmp_path, cgroup, mountinfo, pid="self"):
    proc = tmp_path / "proc"
    _write(proc / pid / "cgroup", cgroup)
    _write(proc / pid / "mountinfo", mountinfo)
    _write(proc / "meminfo", MEMINFO)
    return proc


def _v2_tree(tmp_path, leaf_max="max", parent_max=str(2 * GiB), oom_kills=3):
    base = tmp_path / "fs" / "sys/fs/cgroup"
    parent = base / "kubepods.slice"
    leaf = parent / "pod-a.scope"
    _write(parent / "memory.max", parent_max + "\n")
    _write(parent / "memory.current", str(GiB + 5) + "\n")
    _write(leaf / "memory.max", leaf_max + "\n")
    _write(leaf / "memory.current", str(GiB) + "\n")
    _write(
        leaf / "memory.events",
        f"low 0\nhigh 0\nmax 12\noom 4\noom_kill {oom_kills}\noom_group_kill 0\n",
    )
    return leaf


def _values(probe):
    return {(s.name, s.labels): s.value for s in probe.sample()}


def test_parsers():
    assert parse_proc_cgroup("0::/kubepods.slice/pod-a.scope\n") == {
        2: "/kubepods.slice/pod-a.scope"
    }
    assert parse_proc_cgroup("4:memory:/docker/abc\n0::/\n") == {1: "/docker/abc", 2: "/"}
    mounts = parse_mountinfo(V1_MOUNTINFO)
    assert mounts[1].mount_point == "/sys/fs/cgroup/memory"
    assert mounts[2].mount_point == "/sys/fs/cgroup/unified"
    assert parse_limit(b"max\n") is None
    assert parse_limit(b"9223372036854771712\n") is None  # cgroup v1's "unlimited"
    assert parse_limit(b"1073741824\n") == GiB
    assert parse_oom_kills(b"oom_kill_disable 0\nunder_oom 0\noom_kill 7\n") == 7
    with pytest.raises(ValueError):
        parse_oom_kills(b"low 0\n")


def test_v2_tightest_ancestor_limit_wins(tmp_path):
    _v2_tree(tmp_path)
    proc = _proc(tmp_path, "0::/kubepods.slice/pod-a.scope\n", V2_MOUNTINFO)
    probe = LimitsProbe(proc_root=str(proc), fs_root=str(tmp_path / "fs"))
    v = _values(probe)
    assert v[("memory_limit_bytes", ())] == 2 * GiB
    assert v[("cgroup_memory_limit_bytes", ())] == 2 * GiB
    # the usage the OOM killer compares is the limiting (parent) cgroup's
    assert v[("memory_limit_usage_bytes", ())] == GiB + 5
    assert v[("cgroup_oom_kills_total", ())] == 3
    assert v[("memory_limit_info", (("source", "cgroup-v2"),))] == 1
    assert v[("system_memory_total_bytes", ())] == 16384000 * 1024
    assert v[("system_memory_available_bytes", ())] == 8192000 * 1024


def test_v2_leaf_limit_and_live_changes(tmp_path):
    leaf = _v2_tree(tmp_path, leaf_max=str(GiB + 100))
    proc = _proc(tmp_path, "0::/kubepods.slice/pod-a.scope\n", V2_MOUNTINFO)
    probe = LimitsProbe(proc_root=str(proc), fs_root=str(tmp_path / "fs"))
    assert _values(probe)[("memory_limit_bytes", ())] == GiB + 100
    (leaf / "memory.max").write_text(str(GiB // 2) + "\n")  # a live resize
    (leaf / "memory.events").write_text("oom_kill 4\n")
    v = _values(probe)
    assert v[("memory_limit_bytes", ())] == GiB // 2
    assert v[("cgroup_oom_kills_total", ())] == 4


def test_v2_unlimited_falls_back_to_ram(tmp_path):
    _v2_tree(tmp_path, parent_max="max")
    proc = _proc(tmp_path, "0::/kubepods.slice/pod-a.scope\n", V2_MOUNTINFO)
    v = _values(LimitsProbe(proc_root=str(proc), fs_root=str(tmp_path / "fs")))
    assert v[("memory_limit_bytes", ())] == 16384000 * 1024
    assert v[("memory_limit_usage_bytes", ())] == (16384000 - 8192000) * 1024
    assert v[("memory_limit_info", (("source", "system"),))] == 1
    assert ("cgroup_memory_limit_bytes", ()) not in v
    assert v[("cgroup_memory_usage_bytes", ())] == GiB


def test_v1_memory_controller_on_a_hybrid_host(tmp_path):
    leaf = tmp_path / "fs" / "sys/fs/cgroup/memory/docker/abc"
    _write(leaf / "memory.limit_in_bytes", str(GiB) + "\n")
    _write(leaf / "memory.usage_in_bytes", str(GiB // 4) + "\n")
    _write(leaf / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    _write(leaf.parent / "memory.limit_in_bytes", "9223372036854771712\n")
    _write(leaf.parent / "memory.usage_in_bytes", str(GiB) + "\n")
    proc = _proc(tmp_path, "4:memory:/docker/abc\n0::/docker/abc\n", V1_MOUNTINFO, pid="42")
    probe = LimitsProbe(42, proc_root=str(proc), fs_root=str(tmp_path / "fs"))
    v = _values(probe)
    assert v[("memory_limit_bytes", ())] == GiB
    assert v[("memory_limit_usage_bytes", ())] == GiB // 4
    assert v[("cgroup_oom_kills_total", ())] == 2
    assert v[("memory_limit_info", (("source", "cgroup-v1"),))] == 1


def test_container_sees_its_own_cgroup_mounted_at_the_top(tmp_path):
    # Docker without a cgroup namespace: /proc/self/cgroup names the host path, and mountinfo
    # shows that same path as the mount's root, mounted at /sys/fs/cgroup/memory.
    top = tmp_path / "fs" / "sys/fs/cgroup/memory"
    _write(top / "memory.limit_in_bytes", str(GiB) + "\n")
    _write(top / "memory.usage_in_bytes", "1000\n")
    _write(top / "memory.oom_control", "oom_kill 0\n")
    mountinfo = V1_MOUNTINFO.replace(" 0:32 / ", " 0:32 /docker/abc ")
    found = locate_memory_cgroup("4:memory:/docker/abc\n", mountinfo, str(tmp_path / "fs"))
    assert found is not None
    assert found.directories == (str(top),)


def test_no_cgroup_says_so(tmp_path):
    proc = _proc(tmp_path, "", "30 1 8:1 / / rw - ext4 /dev/sda1 rw\n")
    probe = LimitsProbe(proc_root=str(proc), fs_root=str(tmp_path / "fs"))
    v = _values(probe)
    assert v[("memory_limit_bytes", ())] == 16384000 * 1024
    assert probe.notes == ("cgroup: no memory cgroup found; RAM is the limit",)


@pytest.mark.e2e
def test_real_machine_own_process_and_another_pid():
    own = _values(LimitsProbe())
    total = own[("system_memory_total_bytes", ())]
    assert 0 < own[("memory_limit_bytes", ())] <= total
    assert 0 < own[("memory_limit_usage_bytes", ())] <= own[("memory_limit_bytes", ())]
    assert ("cgroup_oom_kills_total", ()) in own  # this machine has a memory cgroup (v1)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)  # fmt: skip
    try:
        other = _values(LimitsProbe(proc.pid))
        assert other[("memory_limit_bytes", ())] == own[("memory_limit_bytes", ())]
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
    with pytest.raises(ProbeUnavailable) as gone:
        LimitsProbe(proc.pid).sample()
    assert gone.value.permanent


def test_the_real_cgroup_matches_the_kernel_files():
    found = locate_memory_cgroup(read_text("/proc/self/cgroup"), read_text("/proc/self/mountinfo"))
    assert found is not None
    assert os.path.exists(os.path.join(found.directories[0], "memory.usage_in_bytes")) or (
        os.path.exists(os.path.join(found.directories[0], "memory.current"))
    )
