"""The limit that will kill the process, and the usage the kernel measures against it.

The process's memory cgroup is found from ``/proc/PID/cgroup`` and the cgroup mounts in
``mountinfo`` (v2 unified, or v1's memory controller). Limits are hierarchical, so every
ancestor up to the mount is read and the tightest one wins; its usage is what the OOM killer
compares. The oom_kill counter is the process's own cgroup's. With no cgroup limit, the machine's
RAM is the limit and RAM in use the usage. Paths are parameters so tests feed fixture trees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from diag.model import Sample, labels_of
from probes.base import ProbeUnavailable, ProcFile, read_text

#: cgroup v1 reports "no limit" as a page-aligned LONG_MAX; anything this large means unlimited.
UNLIMITED = 1 << 60


@dataclass(frozen=True)
class CgroupMount:
    version: int  # 1 or 2
    root: str  # the cgroup path mounted at ``mount_point``
    mount_point: str


@dataclass(frozen=True)
class MemoryCgroup:
    version: int
    directories: tuple[str, ...]  # leaf first, then each ancestor up to the mount point


def parse_proc_cgroup(text: str, controller: str = "memory") -> dict[int, str]:
    """{1: the v1 ``controller``'s path, 2: unified path} from /proc/PID/cgroup."""
    found: dict[int, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            found[2] = path
        elif controller in controllers.split(","):
            found[1] = path
    return found


def parse_mountinfo(text: str, controller: str = "memory") -> dict[int, CgroupMount]:
    """The cgroup2 mount and the v1 ``controller``'s mount, if present."""
    found: dict[int, CgroupMount] = {}
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point, fstype, options = fields[3], fields[4], tail[0], tail[2]
        if fstype == "cgroup2" and 2 not in found:
            found[2] = CgroupMount(2, _unescape(root), _unescape(mount_point))
        elif fstype == "cgroup" and controller in options.split(",") and 1 not in found:
            found[1] = CgroupMount(1, _unescape(root), _unescape(mount_point))
    return found


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def locate_memory_cgroup(
    proc_cgroup: str, mountinfo: str, fs_root: str = ""
) -> MemoryCgroup | None:
    """The directories of the process's memory cgroup, preferring v1's memory controller
    (a hybrid host accounts memory there) and falling back to the unified hierarchy."""
    return locate_cgroup(
        proc_cgroup, mountinfo, fs_root, "memory", ("memory.limit_in_bytes", "memory.current")
    )


def locate_cgroup(
    proc_cgroup: str,
    mountinfo: str,
    fs_root: str,
    controller: str,
    markers: tuple[str, str],
) -> MemoryCgroup | None:
    """The directories of the process's cgroup of ``controller`` (v1 first, then the unified
    hierarchy), leaf first; a version counts only where its leaf holds ``markers[version-1]``
    (a hybrid host's unified mount may carry no such controller)."""
    paths = parse_proc_cgroup(proc_cgroup, controller)
    mounts = parse_mountinfo(mountinfo, controller)
    for version in (1, 2):
        if version not in paths or version not in mounts:
            continue
        mount = mounts[version]
        relative = paths[version]
        if mount.root != "/" and relative.startswith(mount.root):
            relative = relative[len(mount.root) :]
        leaf = os.path.normpath(fs_root + mount.mount_point + "/" + relative.lstrip("/"))
        top = os.path.normpath(fs_root + mount.mount_point)
        if not os.path.exists(os.path.join(leaf, markers[version - 1])):
            continue
        directories = [leaf]
        while directories[-1] != top and directories[-1].startswith(top):
            directories.append(os.path.dirname(directories[-1]))
        return MemoryCgroup(version, tuple(directories))
    return None


def parse_limit(text: bytes) -> int | None:
    """A limit file's value in bytes, or None for no limit ("max", or v1's huge number)."""
    raw = text.strip()
    if raw == b"max":
        return None
    value = int(raw)
    return None if value >= UNLIMITED else value


def parse_oom_kills(text: bytes) -> int:
    """The ``oom_kill N`` line of memory.events (v2) or memory.oom_control (v1)."""
    for line in text.splitlines():
        key, _, value = line.partition(b" ")
        if key == b"oom_kill":
            return int(value)
    raise ValueError("no oom_kill line")


def parse_meminfo(text: bytes) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes."""
    total = available = None
    for line in text.splitlines():
        if line.startswith(b"MemTotal:"):
            total = int(line.split()[1]) * 1024
        elif line.startswith(b"MemAvailable:"):
            available = int(line.split()[1]) * 1024
            break
    if total is None or available is None:
        raise ValueError("meminfo lacks MemTotal or MemAvailable")
    return total, available


class _CgroupFiles:
    def __init__(self, cgroup: MemoryCgroup) -> None:
        self.version = cgroup.version
        v1 = cgroup.version == 1
        limit_name = "memory.limit_in_bytes" if v1 else "memory.max"
        usage_name = "memory.usage_in_bytes" if v1 else "memory.current"
        oom_name = "memory.oom_control" if v1 else "memory.events"
        readable = [d for d in cgroup.directories if os.path.exists(os.path.join(d, limit_name))]
        self.limits = [ProcFile(os.path.join(d, limit_name), 64) for d in readable]
        self.usages = [ProcFile(os.path.join(d, usage_name), 64) for d in readable]
        self.usages_fallback = ProcFile(os.path.join(cgroup.directories[0], usage_name), 64)
        self.oom = ProcFile(os.path.join(cgroup.directories[0], oom_name), 512)

    def close(self) -> None:
        for f in (*self.limits, *self.usages, self.usages_fallback, self.oom):
            f.close()


class LimitsProbe:
    name = "limits"

    def __init__(
        self,
        pid: int | None = None,
        *,
        proc_root: str = "/proc",
        fs_root: str = "",
    ) -> None:
        self.pid = pid
        self._proc_dir = f"{proc_root}/{'self' if pid is None else pid}"
        self._fs_root = fs_root
        self._meminfo = ProcFile(f"{proc_root}/meminfo", 8192)
        self._cgroup: _CgroupFiles | None = None
        self._located = False
        self.notes: tuple[str, ...] = ()

    def _locate(self) -> None:
        self._located = True
        try:
            cgroup = locate_memory_cgroup(
                read_text(f"{self._proc_dir}/cgroup"),
                read_text(f"{self._proc_dir}/mountinfo"),
                self._fs_root,
            )
        except FileNotFoundError as exc:
            if self.pid is not None:
                raise ProbeUnavailable(f"no such process: {self.pid}", permanent=True) from exc
            cgroup = None
        except (OSError, ValueError) as exc:
            self.notes = (f"cgroup: cannot read the process's cgroup ({exc})",)
            cgroup = None
        if cgroup is None:
            self.notes = self.notes or ("cgroup: no memory cgroup found; RAM is the limit",)
            self._cgroup = None
        else:
            self._cgroup = _CgroupFiles(cgroup)

    def sample(self) -> list[Sample]:
        if not self._located:
            self._locate()
        total, available = parse_meminfo(self._meminfo.read())
        out = [
            Sample("system_memory_total_bytes", float(total)),
            Sample("system_memory_available_bytes", float(available)),
        ]
        limit, usage, source = total, total - available, "system"
        if self._cgroup is not None:
            cg = self._cgroup
            tightest: tuple[int, ProcFile] | None = None
            for limit_file, usage_file in zip(cg.limits, cg.usages, strict=True):
                value = parse_limit(limit_file.read())
                if value is not None and (tightest is None or value < tightest[0]):
                    tightest = (value, usage_file)
            usage_file = tightest[1] if tightest else cg.usages_fallback
            cg_usage = int(usage_file.read())
            out.append(Sample("cgroup_memory_usage_bytes", float(cg_usage)))
            out.append(Sample("cgroup_oom_kills_total", float(parse_oom_kills(cg.oom.read()))))
            if tightest is not None:
                out.append(Sample("cgroup_memory_limit_bytes", float(tightest[0])))
                if tightest[0] < total:
                    limit, usage, source = tightest[0], cg_usage, f"cgroup-v{cg.version}"
        out.append(Sample("memory_limit_bytes", float(limit)))
        out.append(Sample("memory_limit_usage_bytes", float(usage)))
        out.append(Sample("memory_limit_info", 1.0, labels_of(source=source)))
        return out

    def oom_kills(self) -> int | None:
        """The cgroup's OOM-kill counter now; None without a memory cgroup or when unreadable
        (a watcher reads it once more after its target is gone)."""
        if self._cgroup is None:
            return None
        try:
            return parse_oom_kills(self._cgroup.oom.read())
        except (OSError, ValueError):
            return None

    def reset_after_fork(self) -> None:
        self.close()  # our copies of the parent's descriptors: _locate() opens our own

    def close(self) -> None:
        self._meminfo.close()
        if self._cgroup is not None:
            self._cgroup.close()
        self._located = False
